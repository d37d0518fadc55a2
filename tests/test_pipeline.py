"""dc.prune_without_retraining end to end on a tiny model."""
from __future__ import annotations

import pytest
import torch
from conftest import assert_same_weights, tiny_batches, tiny_model
from test_pruning import logits

import deepcuts_fast as dc
from deepcuts_fast.flops import encoder_flops
from deepcuts_fast.planning.rearrange import pruned_loss


@pytest.mark.parametrize("criterion", ["fisher", "cam-cut", "magnitude"])
def test_pipeline_meets_the_budget_and_reconstruction_helps(criterion):
    dense = tiny_model("bert", seed=4)
    calibration = tiny_batches(n_batches=4, batch_size=8, seed=9)
    slim, plan, info = dc.prune_without_retraining(dense, calibration, keep_flops=0.5, criterion=criterion,
                                                   seq_len=10)
    assert encoder_flops(slim, 10) <= 0.5 * encoder_flops(dense, 10)
    assert info["flops_kept"] == pytest.approx(encoder_flops(slim, 10) / encoder_flops(dense, 10))
    assert set(info["timings"]) == {"score", "search", "rearrange", "prune", "reconstruct", "total"}
    search = info["search_plan"]
    assert [len(h) for h in search.heads] == info["heads"] == [len(h) for h in plan.heads]
    fisher = dc.score(dense, calibration, "fisher", "unit", progress=False)
    for i, (gh, gn) in enumerate(fisher.interactions):
        assert pruned_loss(gn, plan.neurons[i]) <= pruned_loss(gn, search.neurons[i]) + 1e-6
    unfit = dc.prune(dense, plan)
    err = lambda m: sum(float((logits(m, b) - logits(dense, b)).pow(2).sum()) for b in calibration)  # noqa: E731
    assert err(slim) < err(unfit)


def test_pipeline_stages_can_be_switched_off():
    dense, calibration = tiny_model("bert", seed=1), tiny_batches(seed=3)
    slim, plan, info = dc.prune_without_retraining(dense, calibration, keep_flops=0.6, criterion="gradient",
                                                   seq_len=10, rearrange=False, reconstruct=False)
    assert plan.heads == info["search_plan"].heads and plan.neurons == info["search_plan"].neurons
    assert "reconstruct" not in info["timings"]
    for b in calibration:
        torch.testing.assert_close(logits(slim, b), logits(dc.prune(dense, plan), b))


def test_pipeline_on_given_scores_matches_scoring_itself(monkeypatch):
    dense, calibration = tiny_model("bert", seed=2), tiny_batches(n_batches=3, batch_size=8, seed=5)
    own_slim, own_plan, _ = dc.prune_without_retraining(dense, calibration, keep_flops=0.5, criterion="cam-cut",
                                                          seq_len=10, seed=3)
    shared = dc.score_many(dense, calibration, ["cam-cut", "gradient", "fisher"], granularity="unit", seed=3,
                           progress=False)
    monkeypatch.setattr("deepcuts_fast.pipeline.score_many", lambda *a, **k: pytest.fail("scored again"))
    slim, plan, _ = dc.prune_without_retraining(dense, calibration, keep_flops=0.5, criterion="cam-cut",
                                                seq_len=10, scores=shared)
    assert (plan.heads, plan.neurons) == (own_plan.heads, own_plan.neurons)
    assert_same_weights(slim, own_slim, rtol=0, atol=0)
    with pytest.raises(dc.DeepCutsError, match="lacks fisher.*score_many"):
        dc.prune_without_retraining(dense, calibration, keep_flops=0.5, criterion="gradient", seq_len=10,
                                    scores={"gradient": shared["gradient"]})


def test_default_criterion_follows_the_method():
    """Without a criterion the one-shot method scores with Cam-Cut and the iterative one with Fisher (the defaults
    the four-draw comparison chose); Fisher's scores come along either way as the reference."""
    dense, calibration = tiny_model("bert", seed=2), tiny_batches(n_batches=2, batch_size=4, seed=5)
    shared = dc.score_many(dense, calibration, ["cam-cut", "fisher"], granularity="unit", seed=3, progress=False)
    for method, expected in (("one-shot", "cam-cut"), ("iterative", "fisher")):
        _, _, info = dc.prune_without_retraining(dense, calibration, keep_flops=0.5, seq_len=10, scores=shared,
                                                 method=method)
        assert info["criterion"] == expected == dc.pipeline.DEFAULT_CRITERION[method]
    with pytest.raises(dc.DeepCutsError, match="lacks cam-cut"):
        dc.prune_without_retraining(dense, calibration, keep_flops=0.5, seq_len=10, scores={"fisher": shared["fisher"]})
