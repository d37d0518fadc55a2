"""dc.score against the naive oracles in tests/naive.py, on tiny random models with padded batches."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, pad_id, tiny_batches, tiny_model
from naive import naive_first_order, naive_scores

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.scoring import ScoreOptions

GRADIENT_CRITERIA = ["gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut", "smooth-cam-cut-shift"]
ARCHS = FAMILIES


def assert_scores_close(actual, expected, rtol=1e-4):
    assert set(actual) == set(expected)
    for name in expected:
        e = expected[name]
        torch.testing.assert_close(actual[name], e, rtol=rtol, atol=1e-6 * float(e.abs().max()) + 1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")


def batches_for(arch, **kw):
    return tiny_batches(pad_id=pad_id(arch), **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("criterion", GRADIENT_CRITERIA)
@pytest.mark.parametrize("noise_scale", ["relative", "absolute"])
def test_criterion_matches_naive(arch, criterion, noise_scale):
    if noise_scale == "absolute" and not criterion.startswith("smooth"):
        pytest.skip("no noise: the relative case covers it")
    model, batches = tiny_model(arch), batches_for(arch)
    kw = dict(noise_samples=3, noise_std=0.05, seed=7, noise_scale=noise_scale)
    got = dc.score(model, batches, criterion, progress=False, **kw)
    want = naive_scores(model, batches, criterion, **kw)
    assert_scores_close(got, want)


def test_magnitude_and_random_need_no_data(bert):
    mag = dc.score(bert, None, "magnitude", progress=False)
    w = bert.bert.encoder.layer[1].output.dense.weight
    torch.testing.assert_close(mag["bert.encoder.layer.1.output.dense.weight"], w.detach().abs())
    r1 = dc.score(bert, None, "random", seed=3, progress=False)
    r2 = dc.score(bert, None, "random", seed=3, progress=False)
    r3 = dc.score(bert, None, "random", seed=4, progress=False)
    for k in r1:
        assert torch.equal(r1[k], r2[k])
    assert any(not torch.equal(r1[k], r3[k]) for k in r1)


def test_regression_head_uses_mse():
    model, batches = tiny_model("bert", num_labels=1), tiny_batches(num_labels=1)
    assert_scores_close(dc.score(model, batches, "cam-cut", progress=False), naive_scores(model, batches, "cam-cut"))


def test_padding_included_in_reference_mode(bert, batches):
    got = dc.score(bert, batches, "cam-cut", include_padding=True, progress=False)
    assert_scores_close(got, naive_scores(bert, batches, "cam-cut", include_padding=True))
    excluded = dc.score(bert, batches, "cam-cut", progress=False)
    assert any(not torch.allclose(got[k], excluded[k]) for k in got)


def test_smooth_cut_without_noise_equals_gradient(bert, batches):
    smooth = dc.score(bert, batches, "smooth-cut", noise_samples=4, noise_scale="absolute", noise_std=0.0,
                      progress=False)
    grad = dc.score(bert, batches, "gradient", progress=False)
    assert_scores_close(smooth, grad)


def test_stacked_noise_equals_sequential_and_chunked(bert, batches):
    kw = dict(noise_samples=5, noise_std=0.05, seed=1, progress=False)
    stacked = dc.score(bert, batches, "smooth-cam-cut", **kw)
    sequential = dc.score(bert, batches, "smooth-cam-cut", sequential_noise=True, **kw)
    chunked = dc.score(bert, batches, "smooth-cam-cut", max_memory=1, **kw)
    assert stacked.meta["samples_per_chunk"] == 5 and chunked.meta["samples_per_chunk"] == 1
    assert_scores_close(sequential, stacked)
    assert_scores_close(chunked, stacked)


def test_noise_changes_scores_and_seed_reproduces(bert, batches):
    kw = dict(noise_samples=3, noise_std=0.5, progress=False)
    a = dc.score(bert, batches, "smooth-cut", seed=0, **kw)
    b = dc.score(bert, batches, "smooth-cut", seed=0, **kw)
    c = dc.score(bert, batches, "smooth-cut", seed=1, **kw)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert any(not torch.allclose(a[k], c[k]) for k in a)


def test_reference_mode_uses_dropout_and_is_seeded(batches):
    model = tiny_model("bert")
    model.config.hidden_dropout_prob = 0.3
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    kw = dict(noise_samples=2, noise_std=0.01, progress=False, reference=True)
    a = dc.score(model, batches, "smooth-cut", seed=5, **kw)
    b = dc.score(model, batches, "smooth-cut", seed=5, **kw)
    ev = dc.score(model, batches, "smooth-cut", seed=5, noise_samples=2, noise_std=0.01, progress=False)
    assert a.meta["train_mode"] and a.meta["sequential_noise"] and a.meta["include_padding"]
    for k in a:
        assert torch.equal(a[k], b[k])
    assert any(not torch.allclose(a[k], ev[k]) for k in a)
    assert not model.training


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "cam-cut-shift", "smooth-cam-cut"])
def test_unit_scores_are_sums_of_weight_scores(bert, batches, criterion):
    kw = dict(noise_samples=2, noise_std=0.05, progress=False)
    w = dc.score(bert, batches, criterion, "weight", **kw)
    u = dc.score(bert, batches, criterion, "unit", **kw)
    assert len(u) == 0 and u.granularity == "unit"
    for i, layer in enumerate(dc.arch.encoder_layers(bert)):
        n, d = layer.names, layer.head_dim
        for h in range(layer.num_heads):
            rows = slice(h * d, (h + 1) * d)
            expect = sum(w[f"{n[r]}.weight"][rows].sum() + w[f"{n[r]}.bias"][rows].sum()
                         for r in ("query", "key", "value")) + w[f"{n['attn_out']}.weight"][:, rows].sum()
            torch.testing.assert_close(w.heads(i)[h], expect, rtol=1e-5, atol=0)
        for j in range(layer.ffn_width):
            expect = (w[f"{n['ffn_in']}.weight"][j].sum() + w[f"{n['ffn_in']}.bias"][j]
                      + w[f"{n['ffn_out']}.weight"][:, j].sum())
            torch.testing.assert_close(w.neurons(i)[j], expect, rtol=1e-5, atol=0)
        torch.testing.assert_close(u.heads(i), w.heads(i), rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(u.neurons(i), w.neurons(i), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("criterion", ["gradient", "smooth-cut"])
def test_first_order_unit_scores_match_mask_gradients(arch, criterion):
    model, batches = tiny_model(arch), batches_for(arch)
    kw = dict(noise_samples=3, noise_std=0.05, seed=2)
    u = dc.score(model, batches, criterion, "unit", unit_method="first-order", progress=False, **kw)
    heads, neurons = naive_first_order(model, batches, smooth=criterion == "smooth-cut", **kw)
    for i in range(len(heads)):
        torch.testing.assert_close(u.heads(i), heads[i], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(u.neurons(i), neurons[i], rtol=1e-4, atol=1e-9)


def test_score_many_shares_passes_and_matches_single(bert, batches):
    many = dc.score_many(bert, batches, ["cam-cut", "gradient", "smooth-cut", "magnitude"],
                         noise_samples=2, noise_std=0.05, progress=False)
    assert list(many) == ["cam-cut", "gradient", "smooth-cut", "magnitude"]
    for name, s in many.items():
        assert_scores_close(s, dc.score(bert, batches, name, noise_samples=2, noise_std=0.05, progress=False))


def test_an_options_object_scores_like_the_keywords(bert, batches):
    kw = dict(granularity="unit", noise_samples=2, noise_std=0.05, seed=3, shift=2.0, progress=False)
    names = ["cam-cut-shift", "smooth-cam-cut", "magnitude"]
    by_keywords = dc.score_many(bert, batches, names, **kw)
    options = ScoreOptions(**kw)
    by_options = dc.score_many(bert, batches, names, options=options)
    single = dc.score(bert, batches, "smooth-cam-cut", options=options)
    for name in names:
        assert by_options[name].meta == by_keywords[name].meta
        for got in (by_options[name], single) if name == "smooth-cam-cut" else (by_options[name],):
            for i in range(len(got.layout)):
                assert torch.equal(got.heads(i), by_keywords[name].heads(i))
                assert torch.equal(got.neurons(i), by_keywords[name].neurons(i))


def test_options_are_checked_once_and_given_once(bert):
    with pytest.raises(DeepCutsError, match="noise_samples must be a whole number >= 1"):
        ScoreOptions(noise_samples=0)
    with pytest.raises(DeepCutsError, match="unsupported dtype"):
        ScoreOptions(dtype="fp8")
    reference = ScoreOptions(reference=True, dtype=torch.float32)
    assert reference.train_mode and reference.sequential_noise and reference.include_padding
    assert reference.dtype == "fp32" and reference.recorded()["dtype"] == "fp32"
    with pytest.raises(DeepCutsError, match="seed given both in options= and as keywords"):
        dc.score_many(bert, None, ["magnitude"], seed=1, options=ScoreOptions(seed=2))
    same = dc.score(bert, None, "random", "unit", seed=2, options=ScoreOptions(granularity="unit", seed=2))
    assert same.granularity == "unit" and same.meta["seed"] == 2
    with pytest.raises(DeepCutsError, match="fisher scores heads and FFN neurons only"):
        dc.score(bert, None, "fisher", options=ScoreOptions())
    with pytest.raises(DeepCutsError, match="options must be a ScoreOptions"):
        dc.score(bert, None, "magnitude", options={"seed": 1})


def test_model_state_is_restored(bert, batches):
    flags = {n: p.requires_grad for n, p in bert.named_parameters()}
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    dc.score(bert, batches, "smooth-cam-cut", noise_samples=2, progress=False)
    assert {n: p.requires_grad for n, p in bert.named_parameters()} == flags
    assert all(p.grad is None for p in bert.parameters())
    assert all(torch.equal(before[n], p) for n, p in bert.named_parameters())
    assert not bert.training
    assert all(not m._forward_hooks for m in bert.modules())


def test_bf16_scoring_restores_the_attention_implementation(batches):
    model = tiny_model("bert", attn="sdpa")
    dc.score(model, batches, "smooth-cut", noise_samples=2, dtype=torch.bfloat16, progress=False)
    assert model.config._attn_implementation == "sdpa"


def test_bf16_autocast_agrees_with_fp32(bert, batches):
    fp32 = dc.score(bert, batches, "gradient", progress=False)
    bf16 = dc.score(bert, batches, "gradient", dtype=torch.bfloat16, progress=False)
    assert bf16.meta["dtype"] == "bf16" and bf16.meta["dtype_reason"] == "requested"
    assert fp32.meta["dtype"] == "fp32" and "DEEPCUTS_PRECISION" in fp32.meta["dtype_reason"]
    m32, m16 = fp32.masks(1.5, "global"), bf16.masks(1.5, "global")
    agree = sum(int((m32[k] == m16[k]).sum()) for k in m32) / sum(m.numel() for m in m32.values())
    assert agree > 0.9


def test_bad_inputs_give_clear_errors(bert, batches):
    with pytest.raises(DeepCutsError, match="Did you mean 'cam-cut'"):
        dc.score(bert, batches, "cam-cutt")
    with pytest.raises(DeepCutsError, match="empty"):
        dc.score(bert, [], "gradient")
    with pytest.raises(DeepCutsError, match="has no 'labels'; pass objective='distill'"):
        dc.score(bert, [{k: v for k, v in batches[0].items() if k != "labels"}], "gradient", objective="labels")
    with pytest.raises(DeepCutsError, match="granularity"):
        dc.score(bert, batches, "gradient", granularity="neuron")
    with pytest.raises(DeepCutsError, match="not built"):
        dc.score(bert, batches, "gradient", backend="cuda")
    too_big = [{**batches[0], "input_ids": batches[0]["input_ids"] + bert.config.vocab_size}]
    with pytest.raises(DeepCutsError, match="outside the model's vocabulary"):
        dc.score(bert, too_big, "gradient", progress=False)
    empty = [{k: v[:, :0] if k != "labels" else v for k, v in batches[0].items()}]
    with pytest.raises(DeepCutsError, match="length 0"):
        dc.score(bert, empty, "gradient", progress=False)
    with torch.no_grad():
        bert.bert.encoder.layer[1].intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(DeepCutsError, match=r"intermediate\.dense\.weight .*NaN or inf"):
        dc.score(bert, batches, "gradient", progress=False)


@pytest.mark.parametrize("unit_method", ["sum", "first-order"])
def test_non_finite_gradient_names_the_layer(bert, batches, unit_method):
    def poison(module, inputs, output):
        output.register_hook(lambda g: torch.full_like(g, float("nan")))

    bert.bert.encoder.layer[1].output.dense.register_forward_hook(poison)
    with pytest.raises(DeepCutsError, match=r"non-finite gradients in bert\.encoder\.layer\.1\.output\.dense"):
        dc.score(bert, batches, "gradient", "unit", unit_method=unit_method, progress=False)


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(DeepCutsError, match="supported: bert, camembert, deberta-v2, distilbert, electra, modernbert, "
                                            "mpnet, roberta, xlm-roberta"):
        dc.score(model, None, "magnitude")
