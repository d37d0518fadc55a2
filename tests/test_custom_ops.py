"""The fused kernels as torch operators (deepcuts::*): one opaque call under torch.compile, checked by
torch.library.opcheck, and the real scoring probes of a tiny BERT compiled without graph breaks.

Every op runs on every backend available here, on fresh random inputs whose outputs start from random values
(the ops accumulate) at the head of NaN-filled buffers (a write past the end shows).
"""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_batches, tiny_model
from test_kernels import BACKENDS, _device, assert_guard_intact, guarded, seeded

from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.kernels import activation_stats, add_noise, backends, registry, weight_score, weight_score_epilogue

ALL_BACKENDS = ["torch", *BACKENDS]
NAMES = ["weight_score", "weight_score_epilogue", "activation_stats", "add_noise"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _case(name: str, backend: str, dtype: torch.dtype = torch.float32):
    """(inputs, outputs, call) of one random case of op `name`: `call(inputs, outputs)` runs the public function,
    each output (or None) the head of a NaN-filled buffer, as (head, buffer)."""
    dev = _device(backend)
    gen = seeded(name, backend, str(dtype))

    def randn(*shape, dt=dtype):
        return torch.randn(shape, generator=gen).to(dev, dt)

    if name == "weight_score":  # s and col_sums, no row sums; 3-D X and dY (flattened by the public function)
        inputs = (randn(2, 19, 20), randn(2, 19, 9), randn(9, 20), randn(9, dt=torch.float32))
        outputs = [guarded((9, 20), dev, gen), None, guarded((20,), dev, gen)]
        return inputs, outputs, lambda i, o: weight_score(*i, 0.25, *o, backend=backend)
    if name == "weight_score_epilogue":  # row and column sums only, no row weight
        inputs = (randn(9, 20), randn(9, 20, dt=torch.float32))
        outputs = [None, guarded((9,), dev, gen), guarded((20,), dev, gen)]
        return inputs, outputs, lambda i, o: weight_score_epilogue(i[0], i[1], None, 0.5, *o, backend=backend)
    if name == "activation_stats":
        inputs = (randn(2, 19, 6), randn(2, 19, 6), (torch.rand(38, generator=gen) > 0.3).float().to(dev))
        return inputs, [guarded((4, 6), dev, gen)], lambda i, o: activation_stats(*i, o[0], backend=backend)
    y, buf = guarded((3, 35), dev, gen)
    buf = buf.to(dtype)  # noise goes into a tensor of the activations' dtype
    stds = torch.rand(3, generator=gen).to(dev) + 0.1  # each stacked sample's own scale (the relative noise)
    return (stds,), [(buf[:y.numel()].view(y.shape), buf)], lambda i, o: add_noise(o[0], i[0], 2**40 + 17, 4, 11,
                                                                                   range(1, 4), backend=backend)


def _heads(outputs):
    return [None if o is None else o[0] for o in outputs]


def _copies(outputs):
    """The outputs in copies of their buffers."""
    copies = []
    for out in outputs:
        buf = None if out is None else out[1].clone()
        copies.append(None if out is None else (buf[:out[0].numel()].view(out[0].shape), buf))
    return copies


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_each_op_compiles_to_one_opaque_call_that_matches_eager(name, backend, dtype):
    """The public function under torch.compile(fullgraph=True): dynamo's graph holds one call of the op (no Python
    branch over backends), AOT functionalizes its mutation, and the outputs equal eager's (bit for bit on the CPU)."""
    inputs, outputs, call = _case(name, backend, dtype)
    start = [None if o is None else o[0].clone() for o in outputs]
    eager = _copies(outputs)
    call(inputs, _heads(eager))
    graphs = []

    def record_then_aot_eager(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch.compile(call, backend=record_then_aot_eager, fullgraph=True)(inputs, _heads(outputs))
    assert len(graphs) == 1 and graphs[0].count(f"deepcuts.{name}.default") == 1, graphs
    assert not any(t.startswith("deepcuts.") and t != f"deepcuts.{name}.default" for t in graphs[0])
    for got, want, before in zip(outputs, eager, start):
        if got is not None:
            if _device(backend) == "cuda":  # GPU kernels add partial sums with atomics, in no fixed order
                torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(got[0], want[0]), f"{name} on {backend}: compiled differs from eager"
            assert not torch.equal(got[0], before), f"{name} on {backend} added nothing"
            assert_guard_intact(got[1], got[0].numel())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_opcheck(name, backend):
    """Schema (only the declared outputs change), autograd registration, the fake, and AOT dispatch with dynamic
    shapes, each op called directly with the backend's name."""
    inputs, outputs, _ = _case(name, backend)
    heads = _heads(outputs)
    op = getattr(torch.ops.deepcuts, name).default
    if name == "weight_score":
        x, dy, w, roww = inputs
        args = (x.flatten(0, -2), dy.flatten(0, -2), w, roww, 0.25, *heads)
    elif name == "weight_score_epilogue":
        args = (*inputs, None, 0.5, *heads)
    elif name == "activation_stats":
        a, da, mask = inputs
        args = (a.flatten(0, -2), da.flatten(0, -2), mask, heads[0])
    else:
        args = (heads[0], 0.3, inputs[0], 2**40 + 17, 4, 11, 1, 3)
    torch.library.opcheck(op, (*args, backend))


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("name", NAMES)
def test_each_op_exports_as_one_call(name, strict):
    """torch.export keeps the op as one call, and the exported program adds what eager adds."""
    inputs, outputs, call = _case(name, "torch")

    class Step(torch.nn.Module):
        def forward(self, inputs, outputs):
            call(inputs, outputs)
            return [o * 1 for o in outputs if o is not None]

    heads = _heads(outputs)
    exported = torch.export.export(Step(), (inputs, heads), strict=strict)
    nodes = [str(n.target) for m in exported.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
             for n in m.graph.nodes]
    assert nodes.count(f"deepcuts.{name}.default") == 1, nodes
    eager = _copies(outputs)
    call(inputs, _heads(eager))
    exported.module()(inputs, heads)
    for got, want in zip(outputs, eager):
        if got is not None:
            assert torch.equal(got[0], want[0]) and not torch.isnan(got[0]).any()
            assert_guard_intact(got[1], got[0].numel())


def test_every_op_registers_the_reference_and_only_built_extensions():
    assert {op._schema.name for op in registry.IMPLEMENTATIONS} == {f"deepcuts::{n}" for n in NAMES}
    for op in registry.IMPLEMENTATIONS:
        have = registry.implemented(op)
        assert {"torch", "triton"} <= set(have)
        for name in ("cpp", "cuda"):
            assert (name in have) == (backends.loaded(name) is not None)
    with pytest.raises(DeepCutsError, match="no 'tpu' implementation"):
        torch.ops.deepcuts.activation_stats(torch.ones(2, 3), torch.ones(2, 3), None, torch.zeros(4, 3), "tpu")


@pytest.mark.parametrize("backend", ["torch", *(b for b in BACKENDS if b.values[0] != "triton")])  # not interpreted
def test_scoring_probes_of_a_tiny_bert_compile_without_graph_breaks(backend):
    """The real scoring path on a tiny BERT (the probes' forward hooks adding relative Philox noise, their tensor
    hooks, and with a kernel backend the fused route scoring each Linear from X and dY in the backward hook): the
    forward compiled with fullgraph=True, the backward (with the hooks) by compiled autograd with fullgraph=True,
    so any graph break is an error; the graphs hold the deepcuts ops and the scores match eager scoring's.

    Two things of the eager engine stay outside, as they break a graph: its embedding hook that starts the graph
    with `output.detach().requires_grad_(True)` (here the word embeddings are looked up eagerly and the graph
    starts at them, the same gradients for every Linear) and its host check of the loss before `backward()`."""
    from deepcuts_fast.scoring.criteria import get_criterion
    from deepcuts_fast.scoring.engine import ScoringPass
    from deepcuts_fast.scoring.layout import model_layout
    from deepcuts_fast.scoring.options import ScoreOptions
    from deepcuts_fast.scoring.probes import Chunk, attached
    from deepcuts_fast.scoring.routes import RouteSetup, route_for

    samples = 2
    crit = get_criterion("smooth-cut")
    graphs: list[set[str]] = []

    def recording(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm

    def score(compiled: bool) -> dict[str, torch.Tensor]:
        model = tiny_model("bert")
        model.requires_grad_(False)
        options = ScoreOptions(noise_samples=samples, backend=backend, progress=False)  # relative noise
        scoring = ScoringPass(model, model_layout(model), [crit], True, options, None, backend)
        setup = RouteSetup(scoring.layout, samples, options.shift, options.unit, backend, torch.device("cpu"))
        route = route_for(crit, setup, scoring.probes, first_order=False, fused=True)
        assert type(route).__name__ == ("TorchScores" if backend == "torch" else "FusedScores")
        probes = [p for layer in scoring.probes for p in layer.values()]

        def loss_of(embeds, mask, labels):
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits
            return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

        forward = torch.compile(loss_of, backend=recording, fullgraph=True, dynamic=False) if compiled else loss_of
        for b, batch in enumerate(tiny_batches(2)):
            ids, mask, labels = (batch[k].repeat(samples, *[1] * (batch[k].dim() - 1))
                                 for k in ("input_ids", "attention_mask", "labels"))
            chunk = Chunk(batch_index=b, samples=range(samples), token_mask=mask.reshape(-1).float(), loss_scale=4.0)
            embeds = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
            with attached(probes, chunk):
                if compiled:
                    backward = torch.compile(backend=recording, fullgraph=True, dynamic=False)
                    with torch._dynamo.compiled_autograd._enable(backward, dynamic=False):
                        forward(embeds, mask, labels).backward()
                else:
                    forward(embeds, mask, labels).backward()
            for layer, layer_probes in enumerate(scoring.probes):
                route.add(b, layer, layer_probes)
                for p in layer_probes.values():
                    p.reset()
        return route.weights

    eager = score(compiled=False)
    compiled = score(compiled=True)
    assert any("deepcuts.add_noise.default" in g for g in graphs), "no noise op in the forward graphs"
    if backend != "torch":  # the torch route keeps the weight gradients, scored after the batch (outside)
        assert any("deepcuts.weight_score.default" in g for g in graphs), "no weight score op in the backward graph"
    assert eager.keys() == compiled.keys() and len(eager) == 2 * 6 * 2  # layers x Linears x (weight, bias)
    for key in eager:
        scale = float(eager[key].abs().max())  # compiled matmuls may round differently from eager ones
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6 * scale,
                                   msg=lambda m, k=key: f"{k}: {m}")
