"""Global allocation with a reference loss scale (rank matching) and Fisher mask rearrangement."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.flops import encoder_flops
from deepcuts_fast.planning.rearrange import pruned_loss, rearrange_layer


def random_unit_scores(model, seed, criterion="random-units"):
    """Unit scores with fresh random values (and random scales per layer)."""
    g = torch.Generator().manual_seed(seed)
    layers = dc.arch.encoder_layers(model)
    heads = [torch.rand(layer.num_heads, generator=g) * 10 ** float(torch.randn(1, generator=g)) for layer in layers]
    neurons = [torch.rand(layer.ffn_width, generator=g) * 10 ** float(torch.randn(1, generator=g)) for layer in layers]
    layout = dc.scoring.layout.model_layout(model)
    return dc.Scores({}, layout, {"criterion": criterion}, heads=heads, neurons=neurons)


def rescaled(scores, head_factors, neuron_factors):
    return dc.Scores({}, scores.layout, scores.meta, heads=[h * f for h, f in zip(scores.unit_scores()["heads"], head_factors)],
                     neurons=[n * f for n, f in zip(scores.unit_scores()["neurons"], neuron_factors)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_matching_keeps_the_order_and_takes_the_reference_values(seed):
    model = tiny_model("bert")
    scores, reference = random_unit_scores(model, seed), random_unit_scores(model, seed + 100)
    matched = dc.planning.rank_match(scores, reference)
    for i in range(2):
        for got, order, ref in ((matched.heads(i), scores.heads(i), reference.heads(i)),
                                (matched.neurons(i), scores.neurons(i), reference.neurons(i))):
            assert torch.equal(torch.sort(got).values, torch.sort(ref).values)
            assert torch.equal(torch.argsort(got), torch.argsort(order))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_with_a_reference_the_plan_ignores_each_layers_scale(seed, keep):
    """Scaling one layer's scores (or heads against neurons) changes nothing once rank-matched; it
    does change the raw plan, which is why raw scores of most criteria are not comparable."""
    model = tiny_model("bert")
    scores, fisher = random_unit_scores(model, seed), random_unit_scores(model, seed + 50)
    distorted = rescaled(scores, [1.0, 1e3], [1e-2, 5.0])
    base = dc.plan(model, scores, keep_flops=keep, seq_len=16, reference=fisher)
    again = dc.plan(model, distorted, keep_flops=keep, seq_len=16, reference=fisher)
    assert base.heads == again.heads and base.neurons == again.neurons
    raw = dc.plan(model, scores, keep_flops=keep, seq_len=16, allocation="raw")
    raw_distorted = dc.plan(model, distorted, keep_flops=keep, seq_len=16, allocation="raw")
    assert (raw.heads, raw.neurons) != (raw_distorted.heads, raw_distorted.neurons)
    assert base.target["allocation"] == "fisher" and raw.target["allocation"] == "raw"


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8])
def test_reference_plans_respect_the_budget_and_minimums(keep):
    model = tiny_model("bert")
    scores, fisher = random_unit_scores(model, 3), random_unit_scores(model, 4)
    plan = dc.plan(model, scores, keep_flops=keep, seq_len=16, reference=fisher, min_heads=1, min_neurons=5)
    slim = dc.prune(model, plan)
    kept = encoder_flops(slim, 16) / encoder_flops(model, 16)
    assert kept <= keep + 1e-9
    assert kept > keep - 0.05
    assert all(len(h) >= 1 for h in plan.heads) and all(len(n) >= 5 for n in plan.neurons)


def random_gram(n, seed, examples=20):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(examples, n, generator=g) * torch.rand(n, generator=g)
    return grads.T @ grads


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n, k", [(12, 5), (40, 31), (40, 3), (200, 90)])
def test_rearrangement_never_increases_its_objective(seed, n, k):
    gram = random_gram(n, seed)
    start = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist()
    kept = rearrange_layer(gram, start)
    assert len(kept) == k and len(set(kept)) == k
    assert pruned_loss(gram, kept) <= pruned_loss(gram, start) + 1e-9
    one_swap = rearrange_layer(gram, start, max_swaps=1)
    assert pruned_loss(gram, kept) <= pruned_loss(gram, one_swap) + 1e-9 <= pruned_loss(gram, start) + 2e-9


def test_rearrangement_finds_the_best_subset_of_a_small_layer():
    import itertools

    gram = random_gram(8, 11, examples=5)
    worst = min(itertools.combinations(range(8), 3), key=lambda c: -pruned_loss(gram, list(c)))
    kept = rearrange_layer(gram, list(worst))
    best = min(pruned_loss(gram, list(c)) for c in itertools.combinations(range(8), 3))
    assert pruned_loss(gram, kept) <= best * 1.05 + 1e-9  # local search: optimal or very close here
    assert pruned_loss(gram, kept) < pruned_loss(gram, list(worst))


def test_rearranging_a_plan_keeps_counts_and_needs_fisher_matrices():
    model, batches = tiny_model("bert", seed=2), tiny_batches(seed=5)
    fisher = dc.score(model, batches, "fisher", "unit", progress=False)
    plan = dc.plan(model, fisher, keep_flops=0.5, seq_len=16)
    better = dc.planning.rearrange(plan, fisher)
    assert [len(h) for h in better.heads] == [len(h) for h in plan.heads]
    assert [len(n) for n in better.neurons] == [len(n) for n in plan.neurons]
    for i, (gh, gn) in enumerate(fisher.interactions):
        assert pruned_loss(gn, better.neurons[i]) <= pruned_loss(gn, plan.neurons[i]) + 1e-9
    with pytest.raises(DeepCutsError, match="fisher"):
        dc.planning.rearrange(plan, dc.score(model, batches, "gradient", "unit", progress=False))


# -- the default allocation: Fisher scores from the same pass --------------------------------------------


@pytest.mark.parametrize("criterion", ["gradient", "cam-cut", "smooth-cut"])
@pytest.mark.parametrize("granularity", ["unit", "weight"])
def test_scores_carry_fishers_scores_of_the_same_pass(criterion, granularity):
    """Every result scored with data carries Fisher's unit scores, equal to Fisher's own from the same batches."""
    model, batches = tiny_model("bert"), tiny_batches(3)
    scores = dc.score(model, batches, criterion, granularity, noise_samples=2, progress=False)
    fisher = dc.score(model, batches, "fisher", "unit", progress=False)
    assert scores.fisher is not None and scores.fisher.criterion == "fisher"
    for i in range(2):
        torch.testing.assert_close(scores.fisher.heads(i), fisher.heads(i), rtol=1e-5, atol=0)
        torch.testing.assert_close(scores.fisher.neurons(i), fisher.neurons(i), rtol=1e-5, atol=0)
        assert scores.fisher.neurons(i).min() >= 0 and scores.fisher.neurons(i).sum() > 0
    assert scores.fisher.interactions is None  # the diagonal only: no unit-by-unit matrices kept


def test_fisher_companion_is_optional_and_absent_without_data():
    model, batches = tiny_model("bert"), tiny_batches(2)
    assert dc.score(model, batches, "gradient", "unit", with_fisher=False, progress=False).fisher is None
    assert dc.score(model, None, "magnitude", "unit", progress=False).fisher is None
    assert dc.score(model, batches, "magnitude", "unit", progress=False).fisher is not None
    assert dc.score(model, batches, "fisher", "unit", progress=False).fisher is None  # it is its own estimate


def test_companion_survives_save_load_addition_and_checkpoints(tmp_path):
    model, batches = tiny_model("bert"), tiny_batches(4)
    whole = dc.score(model, batches, "cam-cut", "unit", progress=False)
    path = tmp_path / "s.safetensors"
    whole.save(path)
    loaded = dc.Scores.load(path)
    for i in range(2):
        assert torch.equal(loaded.fisher.neurons(i), whole.fisher.neurons(i))
    halves = (dc.score(model, batches[:2], "cam-cut", "unit", progress=False)
              + dc.score(model, batches[2:], "cam-cut", "unit", batch_indices=[2, 3], progress=False))
    run = dc.score_run(model, batches, "cam-cut", granularity="unit", checkpoint=tmp_path / "ck", checkpoint_every=2,
                       progress=False).scores["cam-cut"]
    for got in (halves, run):
        for i in range(2):
            torch.testing.assert_close(got.fisher.heads(i), whole.fisher.heads(i), rtol=1e-5, atol=1e-12)


def test_default_plan_equals_the_fisher_referenced_search():
    """Without options, `plan` spends the budget on the scores rank-matched to their Fisher scores: the same plan
    as an explicit Fisher reference, and one that a per-layer rescaling of the raw scores does not change."""
    model, batches = tiny_model("bert"), tiny_batches(3)
    both = dc.score_many(model, batches, ["gradient", "fisher"], "unit", progress=False)
    for keep in (0.33, 0.5):
        default = dc.plan(model, both["gradient"], keep_flops=keep, seq_len=16)
        explicit = dc.plan(model, both["gradient"], keep_flops=keep, seq_len=16, reference=both["fisher"])
        assert (default.heads, default.neurons) == (explicit.heads, explicit.neurons)
        assert default.target["allocation"] == "fisher"
        distorted = rescaled(both["gradient"], [1e4, 1e-3], [1e-2, 1e3])
        distorted.fisher = both["gradient"].fisher
        again = dc.plan(model, distorted, keep_flops=keep, seq_len=16)
        assert (again.heads, again.neurons) == (default.heads, default.neurons)
        raw = dc.plan(model, distorted, keep_flops=keep, seq_len=16, allocation="raw")
        assert (raw.heads, raw.neurons) != (default.heads, default.neurons)


def test_data_free_scores_are_normalised_per_layer_with_a_warning():
    model = tiny_model("bert")
    scores = random_unit_scores(model, 3, criterion="magnitude")
    with pytest.warns(UserWarning, match="no Fisher loss estimate"):
        base = dc.plan(model, scores, keep_flops=0.5, seq_len=16)
    assert base.target["allocation"] == "normalized"
    with pytest.warns(UserWarning):
        again = dc.plan(model, rescaled(scores, [7.0, 1e-3], [1e2, 0.5]), keep_flops=0.5, seq_len=16)
    assert (again.heads, again.neurons) == (base.heads, base.neurons)
    with pytest.raises(DeepCutsError, match="needs Fisher's scores"):
        dc.plan(model, scores, keep_flops=0.5, allocation="fisher")
    with pytest.raises(DeepCutsError, match="unknown allocation"):
        dc.plan(model, scores, keep_flops=0.5, allocation="best")
    with pytest.raises(DeepCutsError, match="drop it or the allocation"):
        dc.plan(model, scores, keep_flops=0.5, allocation="raw", reference=scores)


def test_scores_of_another_model_with_the_same_shapes_are_refused():
    a, b = tiny_model("bert", seed=0), tiny_model("bert", seed=1)
    batches = tiny_batches(2)
    scores = dc.score(a, batches, "gradient", "unit", progress=False)
    with pytest.raises(DeepCutsError, match=r"computed on .*weights [0-9a-f]{16}.*not on this model.*weights [0-9a-f]{16}"):
        dc.plan(b, scores, keep_flops=0.5, seq_len=16)
    other = dc.score(b, batches, "fisher", "unit", progress=False)
    with pytest.raises(DeepCutsError):
        dc.plan(a, scores, keep_flops=0.5, seq_len=16, reference=other)
    with pytest.raises(DeepCutsError, match="differ in criterion, granularity or model"):
        scores + dc.score(b, batches, "gradient", "unit", progress=False)
    dc.plan(a, scores, keep_flops=0.5, seq_len=16)  # its own model is fine


def test_data_free_scores_spread_a_flop_budget_over_heads_and_neurons():
    """A head costs as much as dozens of neurons: normalised per unit of cost, data-free scores keep heads and
    neurons in every layer at half the FLOPs (per unit count, every head would have been dropped first)."""
    model = tiny_model("bert")
    scores = dc.score(model, None, "magnitude", "unit", progress=False)
    with pytest.warns(UserWarning, match="no Fisher loss estimate"):
        plan = dc.plan(model, scores, keep_flops=0.5, seq_len=16)
    assert all(0 < len(h) < n for h, n in zip(plan.heads, plan.num_heads))
    assert all(0 < len(k) < w for k, w in zip(plan.neurons, plan.ffn_widths))
