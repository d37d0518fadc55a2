"""dc.reconstruct: least-squares refit of the slim model's output projections."""
from __future__ import annotations

import sys

import pytest
import torch
from conftest import FAMILIES, assert_same_weights, pad_id, replay_results, tiny_batches, tiny_model
from test_pruning import logits, random_plan

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.pruning.iterative import select_and_refit
from deepcuts_fast.pruning.reconstruct import _advance, _first_layer_calls
from deepcuts_fast.pruning.slicing import LINEAGE

reconstruct_module = sys.modules["deepcuts_fast.pruning.reconstruct"]  # the package exports the function


def hidden_error(model, dense, batches):
    """Sum over batches of the squared error of every layer's hidden states against the dense model."""
    total = torch.zeros(len(dc.arch.encoder_layers(dense)) + 1)
    with torch.no_grad():
        for b in batches:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            hs = model(**inputs, output_hidden_states=True).hidden_states
            hd = dense(**inputs, output_hidden_states=True).hidden_states
            mask = b["attention_mask"].bool()
            total += torch.stack([(s - d)[mask].pow(2).sum() for s, d in zip(hs, hd)])
    return total


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_reconstruction_reduces_the_layer_output_error(arch):
    dense = tiny_model(arch)
    calibration = tiny_batches(n_batches=4, seed=1)
    slim = dc.prune(dense, random_plan(dense, 0, empty_heads_layer=0, empty_ffn_layer=1))
    before = {k: v.clone() for k, v in slim.state_dict().items()}
    refit = dc.reconstruct(slim, dense, calibration)
    err_slim, err_refit = hidden_error(slim, dense, calibration), hidden_error(refit, dense, calibration)
    assert err_refit[-1] < 0.8 * err_slim[-1]  # the last layer's output, on the calibration data
    assert err_refit[1:].sum() < err_slim[1:].sum()
    held_out = tiny_batches(n_batches=2, seed=7)  # the last layer's output on texts it was not fit on
    assert hidden_error(refit, dense, held_out)[-1] < hidden_error(slim, dense, held_out)[-1]
    assert all(torch.equal(before[k], v) for k, v in slim.state_dict().items())  # input untouched


def test_reconstruction_of_an_unpruned_model_changes_nothing():
    dense = tiny_model("bert")
    calibration = tiny_batches(n_batches=6, batch_size=8, seq_len=12)
    layers = dc.arch.encoder_layers(dense)
    plan = dc.Plan([list(range(layer.num_heads)) for layer in layers], [list(range(layer.ffn_width)) for layer in layers],
                   [layer.num_heads for layer in layers], [layer.ffn_width for layer in layers])
    refit = dc.reconstruct(dc.prune(dense, plan), dense, calibration, ridge=0.0)
    for b in calibration:
        torch.testing.assert_close(logits(refit, b), logits(dense, b), rtol=1e-4, atol=1e-5)


def test_reconstruction_needs_data():
    dense = tiny_model("bert")
    with pytest.raises(DeepCutsError, match="calibration"):
        dc.reconstruct(dense, dense, [])


def test_reconstruction_in_bf16_keeps_the_fits_in_float32():
    """bf16 layer forwards under autocast still reduce the error; the Gram matrices are not bf16."""
    dense = tiny_model("bert")
    calibration = tiny_batches(n_batches=4, seed=1)
    slim = dc.prune(dense, random_plan(dense, 0))
    refit = dc.reconstruct(slim, dense, calibration, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in refit.parameters())
    assert hidden_error(refit, dense, calibration)[-1] < hidden_error(slim, dense, calibration)[-1]


def test_reconstruction_refuses_models_on_two_devices():
    dense = tiny_model("bert")
    slim = dc.prune(dense, random_plan(dense, 0)).to("meta")
    with pytest.raises(DeepCutsError, match="one device"):
        dc.reconstruct(slim, dense, tiny_batches(n_batches=1))


def test_reconstruction_refuses_a_dense_model_the_slim_one_was_not_pruned_from():
    dense, other = tiny_model("bert", seed=0), tiny_model("bert", seed=1)  # same shapes, other weights
    calibration = tiny_batches(n_batches=2, seed=1)
    slim = dc.prune(dense, random_plan(dense, 0))
    wrong = r"slim model was not pruned from this dense model \(weights \w+\) but from one with weights \w+; pass " \
            r"the dense model dc\.prune cut it from, unchanged"
    with pytest.raises(DeepCutsError, match=wrong):
        dc.reconstruct(slim, other, calibration)
    dc.reconstruct(slim, dense, calibration)  # its own dense model is fine
    layers = dc.arch.encoder_layers(slim)
    halves = dc.Plan([list(range(la.num_heads)) for la in layers], [list(range(la.ffn_width // 2)) for la in layers],
                     [la.num_heads for la in layers], [la.ffn_width for la in layers])
    twice = dc.prune(slim, halves)
    dc.reconstruct(twice, dense, calibration)  # as is any model it descends from
    dc.reconstruct(twice, slim, calibration)
    saved = type(slim.config).from_dict(slim.config.to_dict())  # the record travels in config.json
    assert getattr(saved, LINEAGE) == getattr(slim.config, LINEAGE) != []
    with torch.no_grad():
        dense.classifier.weight.add_(1.0)  # changed after pruning: no longer the reference it was
    with pytest.raises(DeepCutsError, match=wrong):
        dc.reconstruct(slim, dense, calibration)
    slim.config.deepcuts_pruned_from = "not a list"
    with pytest.raises(DeepCutsError, match="deepcuts_pruned_from = 'not a list', not a list of weights hashes"):
        dc.reconstruct(slim, dense, calibration)


def test_the_iterative_method_and_the_pipeline_refuse_counts_and_scores_of_another_model():
    dense, other = tiny_model("bert", seed=0), tiny_model("bert", seed=1)
    calibration = tiny_batches(n_batches=2, seed=1)
    scores = dc.score(dense, calibration, "fisher", "unit", progress=False)
    counts = dc.plan(dense, scores, keep_heads=0.5, keep_neurons=0.5, scope="layer")
    masked, plan, _ = select_and_refit(dense, calibration, counts, selection="criterion", scores=scores)
    dc.reconstruct(dc.prune(masked, plan), dense, calibration)  # the masked copy records the dense model it came from
    with pytest.raises(DeepCutsError, match=r"the plan's unit counts were made on a model with weights \w+, not on "
                                            r"this dense model"):
        select_and_refit(other, calibration, counts)
    unrecorded = dc.Plan(counts.heads, counts.neurons, counts.num_heads, counts.ffn_widths)
    with pytest.raises(DeepCutsError, match="the fisher scores were made on a model with weights"):
        select_and_refit(other, calibration, unrecorded, selection="criterion", scores=scores)
    with pytest.raises(DeepCutsError, match="fisher scores were computed on .*, not on this model"):
        dc.prune_without_retraining(other, calibration, 0.5, criterion="fisher", seq_len=10,
                                    scores={"fisher": scores})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reconstruction_and_the_pipeline_run_on_cuda_like_on_cpu(monkeypatch):
    """CPU batches, CUDA models: batches move to the GPU, autocast follows the device, results match."""
    dense = tiny_model("bert")
    calibration = tiny_batches(n_batches=4, seed=1)
    plan = random_plan(dense, 0)
    want = dc.reconstruct(dc.prune(dense, plan), dense, calibration, dtype=torch.float32)
    gpu_dense = tiny_model("bert").cuda()
    got = dc.reconstruct(dc.prune(gpu_dense, plan), gpu_dense, calibration, dtype=torch.float32)
    for b in calibration:
        inputs = {k: v.cuda() for k, v in b.items() if k != "labels"}
        torch.testing.assert_close(logits(got, inputs).cpu(), logits(want, b), rtol=1e-3, atol=1e-4)
    monkeypatch.delenv("DEEPCUTS_PRECISION", raising=False)  # "auto" as a user gets it: bf16 where native
    bf16 = dc.reconstruct(dc.prune(gpu_dense, plan), gpu_dense, calibration, dtype="auto")
    assert next(bf16.parameters()).is_cuda
    slim, cpu_plan, _ = dc.prune_without_retraining(dense, calibration, 0.5, seq_len=10, dtype=torch.float32)
    gpu_slim, gpu_plan, _ = dc.prune_without_retraining(gpu_dense, calibration, 0.5, seq_len=10, dtype=torch.float32)
    assert next(gpu_slim.parameters()).is_cuda
    assert [len(h) for h in gpu_plan.heads] == [len(h) for h in cpu_plan.heads]
    dc.prune_without_retraining(gpu_dense, calibration, 0.5, seq_len=10)  # "auto": bf16 autocast on the GPU


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_layer_walk_computes_what_the_model_computes(arch):
    """Walking the layers one by one from the first layer's calls, each layer with the arguments the model gives it
    (local and global attention layers get different ones), gives every layer's output of the model's own forward."""
    model = tiny_model(arch)
    batches = tiny_batches(n_batches=2, batch_size=5, seq_len=12, seed=8, pad_id=pad_id(arch))
    modules = [model.get_submodule(layer.prefix) for layer in dc.arch.encoder_layers(model)]
    seen: list = []
    handles = [m.register_forward_hook(lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out))
               for m in modules]
    with torch.no_grad():
        for b in batches:
            model(**{k: v for k, v in b.items() if k != "labels"})
        for h in handles:
            h.remove()
        calls = _first_layer_calls(model, batches)
        for i, module in enumerate(modules):
            calls = [_advance(module, call) for call in calls]
            for j, (call, b) in enumerate(zip(calls, batches)):
                mask = b["attention_mask"].bool()
                torch.testing.assert_close(call.hidden[mask], seen[j * len(modules) + i][mask], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_layer_outputs_computed_from_the_kept_ffn_inputs_give_the_refit_of_running_the_layers(arch, monkeypatch):
    """After its FFN output is refit, a layer's output comes from that projection's kept inputs and residuals in every
    family (checked on the first batch against the layer's forward), with the refit running the layers gives."""
    model = tiny_model(arch)
    batches = tiny_batches(n_batches=3, batch_size=6, seq_len=12, seed=9, pad_id=pad_id(arch))
    slim = dc.prune(model, random_plan(model, 2))
    replays = replay_results(monkeypatch)
    replayed = dc.reconstruct(slim, model, batches, dtype="fp32")
    assert replays and all(r is not None for r in replays)  # every layer but the last, none run again
    for setting, value in (("REPLAY_MEMORY", 0), ("REPLAY_TOLERANCE", -1.0)):  # too large to keep; a mismatch
        with monkeypatch.context() as m:
            m.setattr(reconstruct_module, setting, value)
            run = dc.reconstruct(slim, model, batches, dtype="fp32")
        assert_same_weights(replayed, run)
