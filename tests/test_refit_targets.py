"""Refit targets recorded during the scoring pass: the same refit as reconstruct's own dense forward, in every
family, with layers removed too; refused for another model, other batches or another precision."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, assert_same_weights, pad_id, tiny_batches, tiny_model
from test_pruning import random_plan

import deepcuts_fast as dc
from deepcuts_fast import pipeline
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.pruning.refit_targets import RefitTargets


def recorded(model, batches, outputs: bool = False, criteria=("cam-cut", "fisher"), dtype="fp32") -> RefitTargets:
    """Targets recorded by a scoring pass over `batches`."""
    targets = RefitTargets(model, outputs=outputs)
    dc.score_many(model, batches, list(criteria), granularity="unit", progress=False, dtype=dtype,
                  observer=targets.recording)
    return targets


@pytest.mark.parametrize("arch", FAMILIES)
def test_targets_recorded_while_scoring_give_the_refit_of_reconstructs_own_dense_forward(arch):
    model = tiny_model(arch)
    batches = tiny_batches(n_batches=3, batch_size=6, seq_len=12, seed=2, pad_id=pad_id(arch))
    slim = dc.prune(model, random_plan(model, 1))
    targets = recorded(model, batches)
    assert len(targets.token_counts) == len(batches)
    poisoned = {k: v.clone() for k, v in slim.state_dict().items()}
    own = dc.reconstruct(slim, model, batches, dtype="fp32")
    shared = dc.reconstruct(slim, model, batches, dtype="fp32", targets=targets)
    assert any(not torch.equal(v, poisoned[k]) for k, v in shared.state_dict().items())  # the refit changed it
    assert_same_weights(shared, own)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])  # a post-norm and a pre-norm family
def test_recorded_targets_bridge_removed_layers_like_the_dense_walk(arch):
    model = tiny_model(arch)
    batches = tiny_batches(n_batches=3, batch_size=6, seq_len=12, seed=3, pad_id=pad_id(arch))
    scores = dc.score(model, batches, "fisher", granularity="unit", progress=False)
    slim = dc.prune(model, dc.plan(model, scores, keep_flops=0.6, drop_layers=[1]))
    own = dc.reconstruct(slim, model, batches, dtype="fp32")
    assert_same_weights(dc.reconstruct(slim, model, batches, dtype="fp32", targets=recorded(model, batches, True)),
                        own)
    with pytest.raises(DeepCutsError, match="outputs=True"):
        dc.reconstruct(slim, model, batches, dtype="fp32", targets=recorded(model, batches, False))


def test_only_the_clean_passs_plain_forward_is_recorded():
    """A noisy pass (Smooth-Cut) records nothing: its forwards are not the dense model's."""
    model = tiny_model("bert")
    batches = tiny_batches(n_batches=2, seed=4)
    targets = recorded(model, batches, criteria=("smooth-cut", "cam-cut"))
    assert len(targets.token_counts) == len(batches)  # the clean pass only, once per batch
    slim = dc.prune(model, random_plan(model, 0))
    assert_same_weights(dc.reconstruct(slim, model, batches, dtype="fp32", targets=targets),
                        dc.reconstruct(slim, model, batches, dtype="fp32"))


def test_targets_of_another_model_other_batches_or_another_precision_are_refused():
    model = tiny_model("bert")
    batches = tiny_batches(n_batches=2, seed=5)
    slim = dc.prune(model, random_plan(model, 0))
    targets = recorded(model, batches)
    with pytest.raises(DeepCutsError, match="batches"):
        dc.reconstruct(slim, model, batches[:1], dtype="fp32", targets=targets)
    with pytest.raises(DeepCutsError, match="recorded in"):
        dc.reconstruct(slim, model, batches, dtype=torch.bfloat16, targets=targets)
    with torch.no_grad():
        model.classifier.weight.mul_(1.0)  # an in-place change of the dense weights
    with pytest.raises(DeepCutsError, match="another dense model"):
        dc.reconstruct(slim, model, batches, dtype="fp32", targets=targets)


@pytest.mark.parametrize("method", ["one-shot", "iterative"])
@pytest.mark.parametrize("cap, source", [(pipeline.SHARED_TARGETS_MEMORY, "scoring pass"), (0, "own forward")])
def test_the_pipeline_refits_on_its_scoring_passs_targets_where_they_fit(monkeypatch, cap, source, method):
    model = tiny_model("bert")
    batches = tiny_batches(n_batches=3, batch_size=6, seq_len=12, seed=6)
    monkeypatch.setattr(pipeline, "SHARED_TARGETS_MEMORY", cap)
    slim, _, info = dc.prune_without_retraining(model, batches, 0.5, dtype="fp32", method=method)
    assert info["refit_targets"] == source
    monkeypatch.setattr(pipeline, "SHARED_TARGETS_MEMORY", 0)
    reference, _, _ = dc.prune_without_retraining(model, batches, 0.5, dtype="fp32", method=method)
    assert_same_weights(slim, reference)
    _, _, info = dc.prune_without_retraining(model, batches, 0.5, dtype="fp32", method=method,
                                             reconstruct_batches=batches)
    assert info["refit_targets"] == "own forward"  # other refit data than the scoring's: nothing to share
