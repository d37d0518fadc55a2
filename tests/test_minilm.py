"""A few checks on the real packaged MiniLM-L6 and the embedded data (marked slow; CI runs them)."""
from __future__ import annotations

import pytest
import torch
from naive import naive_first_order, naive_scores
from test_scoring import assert_scores_close

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.data import load_dataset, make_batches

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    """The packaged encoder with a seeded 2-class head, marked trained: the oracle tests compare the scoring kernels
    with a plain PyTorch reference through the labels loss, for which what the head learned does not matter."""
    model = dc.load_model("minilm", num_labels=2, seed=0)
    model.config.architectures = ["BertForSequenceClassification"]
    return model


@pytest.fixture(scope="module")
def rt_batches():
    tok = dc.load_tokenizer("minilm")
    return make_batches(load_dataset("rotten_tomatoes", "train"), tok, batch_size=4, max_length=32, shuffle=True,
                        limit=8)


def test_layout_of_the_packaged_model(minilm):
    layers = dc.arch.encoder_layers(minilm)
    assert len(layers) == 6
    assert all(layer.num_heads == 12 and layer.head_dim == 32 and layer.ffn_width == 1536 for layer in layers)
    assert sum(p.numel() for p in minilm.parameters()) == 22_713_986  # 22.7M + the 2-class head


@pytest.mark.parametrize("criterion", ["cam-cut-shift", "smooth-cam-cut"])
def test_scores_match_the_naive_oracle_on_minilm(minilm, rt_batches, criterion):
    kw = dict(noise_samples=2, noise_std=1e-3, noise_scale="absolute", seed=0)
    got = dc.score(minilm, rt_batches, criterion, progress=False, **kw)
    assert_scores_close(got, naive_scores(minilm, rt_batches, criterion, **kw), rtol=1e-3)


def test_first_order_units_match_mask_gradients_on_minilm(minilm, rt_batches):
    u = dc.score(minilm, rt_batches, "gradient", "unit", unit_method="first-order", progress=False)
    heads, neurons = naive_first_order(minilm, rt_batches)
    for i in range(6):
        torch.testing.assert_close(u.heads(i), heads[i], rtol=1e-3, atol=1e-8)
        torch.testing.assert_close(u.neurons(i), neurons[i], rtol=1e-3, atol=1e-8)


def test_paper_ratios_need_the_encoder_count_on_minilm(minilm):
    s = dc.score(minilm, None, "magnitude")
    with pytest.raises(dc.DeepCutsError, match="below 1.881"):
        s.masks(2.0)
    masks = s.masks(4.0, params="encoder")
    enc = s.meta["encoder_params"]
    removed = sum(int((~m).sum()) for m in masks.values())
    assert enc / (enc - removed) == pytest.approx(4.0, rel=1e-4)


def test_cli_scores_the_packaged_model(tmp_path, capsys):
    """The packaged encoder has no task head: the labels objective is refused, data scores distill its pooled
    embeddings (said in one line), data-free ones read no head."""
    out = tmp_path / "minilm.safetensors"
    argv = ["score", "--model", "minilm", "--data", "rotten_tomatoes", "--granularity", "unit", "--batches", "1",
            "--batch-size", "4", "--out", str(out), "--quiet"]
    smooth = ["--criterion", "smooth-cut", "--noise-samples", "2"]
    assert main(argv + smooth + ["--objective", "labels"]) == 2
    assert "no trained task head" in capsys.readouterr().err and not out.exists()
    assert main(argv + smooth) == 0
    assert "distill (mean-pooled, normalized embeddings)" in capsys.readouterr().err
    s = dc.Scores.load(out)
    assert s.meta["objective"].startswith("distill") and all((s.heads(i) > 0).any() for i in range(6))
    out.unlink()
    assert main(argv + ["--criterion", "magnitude"]) == 0
    s = dc.Scores.load(out)
    assert s.granularity == "unit" and s.heads(5).shape == (12,) and s.neurons(0).shape == (1536,) and s.fisher is None
    assert all(torch.isfinite(s.heads(i)).all() and (s.heads(i) > 0).any() for i in range(6))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_minilm_equals_masked_dense(rt_batches, attn, tmp_path):
    from test_pruning import logits, zero_dropped_units

    model = dc.load_model("minilm", num_labels=2, seed=0, attn_implementation=attn)
    scores = dc.score(model, rt_batches, "cam-cut", "unit", progress=False)
    plan = dc.plan(model, scores, keep_flops=0.5, seq_len=128)
    slim = dc.prune(model, plan)
    reference = zero_dropped_units(model, plan)
    for batch in rt_batches:
        torch.testing.assert_close(logits(slim, batch), logits(reference, batch), rtol=1e-5, atol=1e-5)
    back = dc.from_pretrained(dc.save_pretrained(slim, tmp_path / "slim", plan=plan), attn_implementation=attn)
    assert torch.equal(logits(back, rt_batches[0]), logits(slim, rt_batches[0]))
