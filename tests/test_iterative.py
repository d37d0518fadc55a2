"""The iterative method of dc.prune_without_retraining: units chosen bottom-up by output error, each sublayer
refit before the next (tiny random models)."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import FAMILIES, assert_same_weights, pad_id, replay_results, tiny_batches, tiny_model
from test_cli_flags import api_pipeline, prune_argv, run
from test_pruning import logits

import deepcuts_fast as dc
from deepcuts_fast.arch import encoder_layers
from deepcuts_fast.pruning.iterative import obs_keep, select_and_refit
from deepcuts_fast.pruning.reconstruct import ridge_solution

reconstruct_module = sys.modules["deepcuts_fast.pruning.reconstruct"]  # the package exports the function


def counts_plan(model, heads: list[int], neurons: list[int]) -> dc.Plan:
    """A plan keeping the first heads[i] heads and neurons[i] neurons of layer i (only the counts matter)."""
    layers = encoder_layers(model)
    return dc.Plan([list(range(h)) for h in heads], [list(range(n)) for n in neurons],
                   [layer.num_heads for layer in layers], [layer.ffn_width for layer in layers])


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_slim_model_equals_the_masked_refit_dense_copy(arch):
    dense = tiny_model(arch, seed=3)
    calibration = tiny_batches(n_batches=3, batch_size=8, seed=2)
    counts = counts_plan(dense, heads=[0, 3], neurons=[20, 0])  # a layer without heads, one without neurons
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    masked, plan, timings = select_and_refit(dense, calibration, counts)
    assert [len(h) for h in plan.heads] == [0, 3] and [len(n) for n in plan.neurons] == [20, 0]
    assert set(timings) == {"forward", "grams", "select", "refit"}
    slim = dc.prune(masked, plan)
    for b in calibration + tiny_batches(n_batches=1, seed=11):
        torch.testing.assert_close(logits(slim, b), logits(masked, b), rtol=0, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())  # input untouched
    layer = encoder_layers(masked)[1]
    removed = [c for c in range(48) if c not in plan.neurons[0]]
    assert not encoder_layers(masked)[0].linears["ffn_out"].weight[:, removed].any()
    assert layer.linears["ffn_out"].weight.abs().sum() == 0


def test_keeping_everything_changes_nothing():
    dense = tiny_model("bert", seed=1)
    calibration = tiny_batches(n_batches=2, batch_size=8, seed=4)
    slim, plan, info = dc.prune_without_retraining(dense, calibration, keep_flops=1.0, seq_len=10,
                                                   method="iterative")
    assert info["heads"] == [4, 4] and info["neurons"] == [48, 48]
    assert_same_weights(slim, dense, rtol=0, atol=0)


def lstsq_error(x: torch.Tensor, y: torch.Tensor, columns: list[int], ridge: float) -> float:
    """Squared error of the ridge least-squares fit of y on x's `columns` plus a bias."""
    xs = torch.cat([x[:, columns], torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    w = ridge_solution(xs.T @ xs, xs.T @ y, ridge)
    return float((xs @ w - y).pow(2).sum())


def random_problem(k: int, out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated random inputs and targets that depend on them unevenly, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(600, k, generator=g, dtype=torch.float64) @ torch.randn(k, k, generator=g, dtype=torch.float64)
    x += 0.5 * torch.randn(600, k, generator=g, dtype=torch.float64)
    w = torch.randn(k, out, generator=g, dtype=torch.float64) * torch.rand(k, 1, generator=g, dtype=torch.float64) ** 3
    return x, x @ w + 0.3 * torch.randn(600, out, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("group, groups, keep, steps", [(4, 8, 3, None), (1, 40, 15, 4), (1, 40, 15, None)])
def test_obs_choice_beats_random_choices_of_the_same_count(group, groups, keep, steps):
    ridge = 1e-4
    for seed in range(3):
        x, y = random_problem(group * groups, 6, seed)
        xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        kept = obs_keep(xb.T @ xb, xb.T @ y, group, keep, ridge, steps)
        assert len(kept) == keep and kept == sorted(set(kept))
        cols = lambda units: [u * group + j for u in units for j in range(group)]  # noqa: E731
        mine = lstsq_error(x, y, cols(kept), ridge)
        g = torch.Generator().manual_seed(100 + seed)
        others = [lstsq_error(x, y, cols(sorted(torch.randperm(groups, generator=g)[:keep].tolist())), ridge)
                  for _ in range(20)]
        assert mine <= min(others) * (1 + 1e-9) and mine < 0.9 * sorted(others)[10], (seed, mine, min(others))


def test_obs_removal_cost_is_the_exact_error_increase():
    """One group removed: the group chosen is the one whose removal (with a refit) raises the error least."""
    x, y = random_problem(12, 5, seed=7)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    for group in (1, 3):
        n = 12 // group
        kept = obs_keep(xb.T @ xb, xb.T @ y, group, n - 1, ridge=0.0)
        errors = [lstsq_error(x, y, [c for c in range(12) if c // group != g], 0.0) for g in range(n)]
        assert [g for g in range(n) if g not in kept] == [min(range(n), key=errors.__getitem__)]


def test_sublayer_output_error_is_lower_than_with_random_heads():
    """On the tiny model's first attention block: the chosen heads fit the dense output better than random ones."""
    dense = tiny_model("bert", seed=5)
    calibration = tiny_batches(n_batches=4, batch_size=8, seed=6)
    counts = counts_plan(dense, heads=[2, 4], neurons=[48, 48])
    masked, plan, _ = select_and_refit(dense, calibration, counts)

    def attention_output_error(model) -> float:
        got, want = [], []
        hooks = [encoder_layers(m)[0].linears["attn_out"].register_forward_hook(
            lambda mod, i, out, sink=sink: sink.append(out)) for m, sink in ((model, got), (dense, want))]
        for b in calibration:
            logits(model, b), logits(dense, b)
        for h in hooks:
            h.remove()
        return sum(float((a - b)[c["attention_mask"].bool()].pow(2).sum()) for a, b, c in zip(got, want, calibration))

    mine = attention_output_error(masked)
    pairs = [[a, b] for a in range(4) for b in range(a + 1, 4) if [a, b] != plan.heads[0]]
    for heads in pairs:  # every other choice of two heads, refit the same way
        fixed = dc.Plan([heads, [0, 1, 2, 3]], plan.neurons, plan.num_heads, plan.ffn_widths)
        other = dc.reconstruct(dc.prune(dense, fixed), dense, calibration)
        assert mine <= attention_output_error(other) + 1e-9, heads


def test_counts_follow_the_search_plan_and_criterion_selection_keeps_the_top_units():
    dense = tiny_model("bert", seed=4)
    calibration = tiny_batches(n_batches=4, batch_size=8, seed=9)
    shared = dc.score_many(dense, calibration, ["cam-cut", "fisher"], granularity="unit", progress=False)
    by_output = {}
    for selection in ("output", "criterion", "output-heads"):
        slim, plan, info = dc.prune_without_retraining(dense, calibration, keep_flops=0.5, criterion="cam-cut",
                                                       seq_len=10, scores=shared, method="iterative",
                                                       selection=selection)
        search = info["search_plan"]
        assert [len(h) for h in plan.heads] == [len(h) for h in search.heads] == info["heads"]
        assert [len(n) for n in plan.neurons] == [len(n) for n in search.neurons] == info["neurons"]
        assert info["flops_kept"] <= 0.5 and (info["method"], info["selection"]) == ("iterative", selection)
        assert plan.target["method"] == "iterative" and plan.target["selection"] == selection
        assert set(info["timings"]) == {"score", "search", "forward", "grams", "select", "refit", "prune", "total"}
        if selection == "output":
            by_output = plan
        if selection == "criterion":
            for i, (heads, neurons) in enumerate(zip(plan.heads, plan.neurons)):
                assert heads == sorted(torch.topk(shared["cam-cut"].heads(i), len(heads)).indices.tolist())
                assert neurons == sorted(torch.topk(shared["cam-cut"].neurons(i), len(neurons)).indices.tolist())
        if selection == "output-heads":  # heads as output selection, neurons as criterion selection
            assert plan.heads[0] == by_output.heads[0]  # the first layer sees the same inputs either way
            for i, neurons in enumerate(plan.neurons):
                assert neurons == sorted(torch.topk(shared["cam-cut"].neurons(i), len(neurons)).indices.tolist())


def test_iterative_fits_the_dense_model_better_than_the_unrefit_search():
    dense = tiny_model("bert", seed=4)
    calibration = tiny_batches(n_batches=4, batch_size=8, seed=9)
    slim, plan, info = dc.prune_without_retraining(dense, calibration, keep_flops=0.5, seq_len=10,
                                                   method="iterative")
    err = lambda m: sum(float((logits(m, b) - logits(dense, b)).pow(2).sum()) for b in calibration)  # noqa: E731
    assert err(slim) < err(dc.prune(dense, info["search_plan"]))


def test_bad_method_selection_and_one_shot_switches_are_refused():
    dense, calibration = tiny_model("bert"), tiny_batches(n_batches=1)
    prune = lambda **kw: dc.prune_without_retraining(dense, calibration, keep_flops=0.5, seq_len=10, **kw)  # noqa: E731
    with pytest.raises(dc.DeepCutsError, match="unknown method 'iterativ'. Did you mean 'iterative'.*one-shot, iter"):
        prune(method="iterativ")
    with pytest.raises(dc.DeepCutsError, match="unknown selection 'scores'.*output, criterion, output-heads"):
        prune(method="iterative", selection="scores")
    with pytest.raises(dc.DeepCutsError, match="inside method='iterative'"):
        prune(selection="criterion")
    with pytest.raises(dc.DeepCutsError, match="always refits, so rearrange=False does not apply"):
        prune(method="iterative", rearrange=False)
    with pytest.raises(dc.DeepCutsError, match="reconstruct=False does not apply"):
        prune(method="iterative", reconstruct=False)


def test_cli_prune_method_iterative(model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "slim"
    code, stdout, _ = run(prune_argv(model_dir, data_csv, out, "--method", "iterative"), capsys)
    assert code == 0
    s = json.loads(stdout)
    assert (s["path"], s["method"], s["rearranged"], s["reconstructed"]) == ("pipeline", "iterative", False, True)
    assert {"forward", "grams", "select", "refit", "prune"} <= set(s["timings"]) and s["flops_kept"] <= 0.5
    slim, plan, info = api_pipeline(model_dir, data_csv, method="iterative")
    got, want = dc.from_pretrained(out).state_dict(), slim.state_dict()
    assert s["heads"] == info["heads"] and s["ffn"] == info["neurons"]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    text = [a for a in prune_argv(model_dir, data_csv, tmp_path / "t", "--method", "iterative") if a != "--json"]
    code, stdout, _ = run(text, capsys)
    assert code == 0 and "units chosen iteratively by output error" in stdout
    code, _, err = run(prune_argv(model_dir, data_csv, tmp_path / "u", "--method", "iterative", "--no-rearrange"),
                       capsys)
    assert code != 0 and "--no-rearrange does not apply" in err
    code, stdout, _ = run(prune_argv(model_dir, data_csv, tmp_path / "v", "--method", "iterative", "--selection",
                                     "criterion", "--criterion", "cam-cut"), capsys)
    s = json.loads(stdout)
    assert code == 0 and (s["method"], s["selection"], s["criterion"]) == ("iterative", "criterion", "cam-cut")
    code, _, err = run(prune_argv(model_dir, data_csv, tmp_path / "w", "--selection", "criterion"), capsys)
    assert code == 2 and "--selection criterion chooses units inside --method iterative" in err and not (
        tmp_path / "w").exists()


@pytest.mark.parametrize("arch", FAMILIES)
def test_layer_outputs_from_the_kept_ffn_inputs_give_the_choices_and_refits_of_running_the_layers(arch, monkeypatch):
    """As in `reconstruct`: after a layer's refits its output comes from the FFN output's kept inputs in every
    family, and the units chosen and the weights are those that running the layer again gives."""
    dense = tiny_model(arch, seed=4)
    calibration = tiny_batches(n_batches=3, batch_size=6, seq_len=12, seed=5, pad_id=pad_id(arch))
    counts = counts_plan(dense, heads=[2, 3], neurons=[20, 30])
    replays = replay_results(monkeypatch)
    masked, plan, _ = select_and_refit(dense, calibration, counts)
    assert replays and all(r is not None for r in replays)
    monkeypatch.setattr(reconstruct_module, "REPLAY_MEMORY", 0)
    run_masked, run_plan, _ = select_and_refit(dense, calibration, counts)
    assert (plan.heads, plan.neurons) == (run_plan.heads, run_plan.neurons)
    assert_same_weights(masked, run_masked)
