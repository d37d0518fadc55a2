"""Paper-style masks, apply_masks and the Scores safetensors round trip."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError


@pytest.fixture
def scores(bert, batches):
    return dc.score(bert, batches, "cam-cut", progress=False)


def achieved(scores, masks, params):
    total = scores.meta["total_params"] if params == "model" else scores.meta["encoder_params"]
    removed = sum(int((~m).sum()) for m in masks.values())
    return total / (total - removed)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("params,compression", [("model", 1.05), ("model", 1.2), ("encoder", 2.0), ("encoder", 4.0)])
def test_masks_reach_the_asked_compression(scores, scope, params, compression):
    masks = scores.masks(compression, scope=scope, params=params)
    assert set(masks) == set(scores)
    assert all(m.dtype == torch.bool and m.shape == scores[k].shape for k, m in masks.items())
    # rounding to whole weights per tensor moves the ratio by at most a few weights
    assert achieved(scores, masks, params) == pytest.approx(compression, rel=2e-3)


def test_layer_scope_keeps_the_top_scores_of_each_tensor(scores):
    masks = scores.masks(2.0, scope="layer", params="encoder")
    for name, m in masks.items():
        s = scores[name].flatten()
        kept, dropped = s[m.flatten()], s[~m.flatten()]
        if len(kept) and len(dropped):
            assert kept.min() >= dropped.max()


def test_global_scope_uses_one_threshold(scores):
    masks = scores.masks(3.0, scope="global", params="encoder")
    kept = torch.cat([scores[k][m] for k, m in masks.items()])
    dropped = torch.cat([scores[k][~m] for k, m in masks.items()])
    assert kept.min() >= dropped.max()
    fractions = [float(m.float().mean()) for m in masks.values()]
    assert max(fractions) - min(fractions) > 0.05  # unlike layer scope, tensors keep different fractions


def test_unreachable_or_invalid_compression_is_refused(scores):
    limit = scores.meta["total_params"] / (scores.meta["total_params"] - scores.meta["prunable_params"])
    with pytest.raises(DeepCutsError, match=f"below {limit:.3f}"):
        scores.masks(limit * 1.01)
    with pytest.raises(DeepCutsError, match="must be > 1"):
        scores.masks(1.0)
    with pytest.raises(DeepCutsError, match="scope"):
        scores.masks(1.1, scope="row")


def test_apply_masks_zeroes_exactly_the_masked_weights(bert, scores):
    masks = scores.masks(1.2, scope="global")
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    zeroed = dc.apply_masks(bert, masks)
    assert zeroed == sum(int((~m).sum()) for m in masks.values())
    for n, p in bert.named_parameters():
        if n in masks:
            assert torch.equal(p.detach(), before[n] * masks[n])
        else:
            assert torch.equal(p.detach(), before[n])


def test_apply_masks_rejects_foreign_masks(bert, scores):
    masks = scores.masks(1.2)
    distil = tiny_model("distilbert")
    with pytest.raises(DeepCutsError, match="does not have"):
        dc.apply_masks(distil, masks)
    name = next(iter(masks))
    with pytest.raises(DeepCutsError, match="shape"):
        dc.apply_masks(bert, {name: masks[name][:1]})


@pytest.mark.parametrize("granularity", ["weight", "unit"])
def test_scores_round_trip_exactly(bert, batches, tmp_path, granularity):
    s = dc.score(bert, batches, "smooth-cam-cut", granularity, noise_samples=2, progress=False)
    path = tmp_path / "s.safetensors"
    s.save(path)
    back = dc.Scores.load(path)
    assert back.meta == s.meta and back.granularity == granularity and back.layout == s.layout
    assert set(back) == set(s) and all(torch.equal(back[k], s[k]) for k in s)
    for i in range(len(s.layout)):
        assert torch.equal(back.heads(i), s.heads(i)) and torch.equal(back.neurons(i), s.neurons(i))
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left


def test_loading_a_bad_scores_file_is_a_clear_error(tmp_path):
    with pytest.raises(DeepCutsError, match="does not exist"):
        dc.Scores.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DeepCutsError, match="not a readable safetensors"):
        dc.Scores.load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(2)}, str(other))
    with pytest.raises(DeepCutsError, match="not a deepcuts scores file"):
        dc.Scores.load(other)


def test_unit_scores_cannot_make_weight_masks(bert, batches):
    u = dc.score(bert, batches, "gradient", "unit", progress=False)
    with pytest.raises(DeepCutsError, match="granularity='weight'"):
        u.masks(1.2)


def test_a_damaged_scores_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"format": "deepcuts-scores/1"})
    with pytest.raises(DeepCutsError, match="damaged"):
        dc.Scores.load(path)
