"""Fisher unit scores (squared per-example mask gradients) against a one-example-at-a-time autograd oracle."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, pad_id, tiny_batches, tiny_model
from naive import naive_fisher
from test_pruning import random_plan

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()) + 1e-12)


@pytest.mark.parametrize("arch", FAMILIES)
def test_fisher_matches_per_example_mask_gradients(arch):
    model = tiny_model(arch, seed=3)
    batches = tiny_batches(n_batches=2, batch_size=5, seed=11, pad_id=pad_id(arch))
    got = dc.score(model, batches, "fisher", "unit", progress=False)
    want = naive_fisher(model, batches)
    for i, (heads, neurons) in enumerate(want):
        assert_close(got.heads(i), heads.diagonal())
        assert_close(got.neurons(i), neurons.diagonal())
        assert_close(got.interactions[i][0], heads)
        assert_close(got.interactions[i][1], neurons)
        assert got.heads(i).min() >= 0 and got.neurons(i).max() > 0


def test_fisher_shares_a_pass_with_other_criteria_and_round_trips(tmp_path):
    model, batches = tiny_model("bert", seed=5), tiny_batches(seed=2)
    both = dc.score_many(model, batches, ["cam-cut", "fisher"], granularity="unit", progress=False)
    alone = dc.score(model, batches, "fisher", "unit", progress=False)
    cam = dc.score(model, batches, "cam-cut", "unit", progress=False)
    for i in range(2):
        assert_close(both["fisher"].neurons(i), alone.neurons(i))
        assert_close(both["cam-cut"].heads(i), cam.heads(i))
    assert cam.interactions is None
    alone.save(tmp_path / "f.safetensors")
    loaded = dc.Scores.load(tmp_path / "f.safetensors")
    assert torch.equal(loaded.interactions[1][1], alone.interactions[1][1])
    assert torch.equal(loaded.heads(0), alone.heads(0))


def test_fisher_on_a_slim_model_with_an_empty_layer():
    dense = tiny_model("bert", seed=1)
    slim = dc.prune(dense, random_plan(dense, 0, empty_heads_layer=0, empty_ffn_layer=1))
    batches = tiny_batches(seed=4)
    got = dc.score(slim, batches, "fisher", "unit", progress=False)
    want = naive_fisher(slim, batches)
    assert got.heads(0).numel() == 0 and got.neurons(1).numel() == 0
    assert_close(got.neurons(0), want[0][1].diagonal())
    assert_close(got.heads(1), want[1][0].diagonal())


def test_fisher_needs_unit_granularity(bert, batches):
    with pytest.raises(DeepCutsError, match="granularity='unit'"):
        dc.score(bert, batches, "fisher", progress=False)
