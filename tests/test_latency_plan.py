"""Latency budgets: the per-layer latency table (its shape, its cache) and `dc.plan(..., speedup=s)` on it, with
`deepcuts prune --speedup`. Tiny models; no timing assertions: plans are checked against synthetic tables."""
from __future__ import annotations

import itertools
import json
import math
import warnings

import pytest
import torch
from conftest import TINY, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.cache import cache_dir
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.planning import latency_table as lt

H, F = TINY["heads"], TINY["ffn"]


@pytest.fixture(autouse=True)
def quick_tables(monkeypatch, tmp_path):
    """A private cache, and the fewest timed rounds: these tests check shapes and caching, not times."""
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lt, "WARMUP", 1)
    monkeypatch.setattr(lt, "ROUNDS", 2)
    monkeypatch.setattr(lt, "MIN_TIME", 0.0)


def synthetic_table(heads=(0, 3, 3.5, 4, 4.5), ffn=(0, 2, 2.5, 3.5, 4), fixed=1.0, layer=0.5) -> lt.LatencyTable:
    """A table with a step for the first head (the cost of running attention at all) and a concave FFN."""
    return lt.LatencyTable(key="synthetic", fixed_ms=fixed, layer_ms=layer, heads_ms=heads,
                           ffn_widths=tuple(range(0, F + 1, F // (len(ffn) - 1))), ffn_ms=ffn,
                           settings={"batch_size": 32, "seq_len": 128, "device": "cpu", "dtype": "fp32"})


@pytest.fixture
def table(monkeypatch):
    """The synthetic table in place of a measured one; the list of (seq_len, batch_size, device, dtype) asked."""
    asked, made = [], synthetic_table()

    def table_for(model, seq_len, batch_size, device="cpu", dtype="auto"):
        asked.append((seq_len, batch_size, device, dtype))
        return made

    monkeypatch.setattr(lt, "table_for", table_for)
    return made, asked


@pytest.fixture(scope="module")
def model_and_scores():
    model = tiny_model("bert")
    return model, dc.score(model, None, "magnitude", granularity="unit")


def quiet_plan(model, scores, **kwargs) -> dc.Plan:
    """dc.plan without the warning that data-free scores are normalised per layer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no Fisher loss estimate.*")
        return dc.plan(model, scores, **kwargs)


def counts(plan: dc.Plan) -> tuple[list[int], list[int]]:
    return [len(h) for h in plan.heads], [len(n) for n in plan.neurons]


# ---------------------------------------------------------------------------------------------------------------
# the table


def counting_measurements(monkeypatch) -> list[int]:
    """Wrap the measuring function: the number of probes of every measurement, in order."""
    calls, real = [], lt.time_probes

    def time_probes(install, run, count, device):
        calls.append(count)
        return real(install, run, count, device)

    monkeypatch.setattr(lt, "time_probes", time_probes)
    return calls


@pytest.mark.parametrize("arch", ["bert", "distilbert"])  # distilbert: a layer without heads needs slicing's module
def test_table_prices_every_head_count_and_ffn_step_and_is_cached(arch, monkeypatch):
    model = tiny_model(arch)
    calls = counting_measurements(monkeypatch)
    table = lt.table_for(model, seq_len=8, batch_size=2)
    assert len(table.heads_ms) == H + 1 and table.heads_ms[0] == 0
    assert table.ffn_widths == tuple(range(0, F + 1, F // lt.FFN_STEPS)) and table.ffn_ms[0] == 0
    assert len(table.ffn_ms) == lt.FFN_STEPS + 1
    for times in (table.heads_ms, table.ffn_ms):
        assert all(b >= a for a, b in zip(times, times[1:]))  # monotone: noise never makes a unit free
    assert table.fixed_ms > 0 and table.layer_ms >= 0
    assert calls == [1 + (H + 1) + lt.FFN_STEPS]  # the shell alone, k = 0..H heads, the FFN grid above 0
    assert (table.settings["batch_size"], table.settings["seq_len"], table.settings["dtype"]) == (2, 8, "fp32")
    assert (cache_dir() / "latency" / f"layer-table-{table.key}.json").is_file()

    assert lt.table_for(model, seq_len=8, batch_size=2) == table and len(calls) == 1  # read from the cache
    others = [lt.table_for(model, seq_len=8, batch_size=3), lt.table_for(model, seq_len=9, batch_size=2),
              lt.table_for(model, seq_len=8, batch_size=2, dtype="bf16")]
    assert len(calls) == 4 and len({t.key for t in [table, *others]}) == 4  # batch, seq and dtype are in the key
    assert [layer.num_heads for layer in dc.arch.encoder_layers(model)] == [H, H]  # the model is untouched


def test_table_key_follows_threads_and_a_damaged_cache_file_is_measured_again(monkeypatch):
    model = tiny_model("bert")
    calls = counting_measurements(monkeypatch)
    table = lt.table_for(model, seq_len=8, batch_size=2)
    (cache_dir() / "latency" / f"layer-table-{table.key}.json").write_text('{"format": "deepcuts-latency-table/1"}')
    assert lt.table_for(model, seq_len=8, batch_size=2).key == table.key and len(calls) == 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert lt.table_for(model, seq_len=8, batch_size=2).key != table.key
    finally:
        torch.set_num_threads(threads)


def test_model_time_is_fixed_part_plus_layers():
    t = synthetic_table()
    assert t.model_ms([H, H], [F, F]) == pytest.approx(1.0 + 2 * (0.5 + 4.5 + 4.0))
    assert t.model_ms([0, 2], [0, 6]) == pytest.approx(1.0 + 2 * 0.5 + 3.5 + 1.0)  # 6 neurons: half way to 12
    with pytest.raises(DeepCutsError, match="covers 0..4 heads"):
        t.model_ms([5, 0], [0, 0])


# ---------------------------------------------------------------------------------------------------------------
# plans on a synthetic table


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("speedup", [1.0, 1.25, 1.5, 2.0, 3.0, 4.0])
def test_plan_keeps_predicted_latency_within_dense_over_speedup(speedup, scope, table, model_and_scores):
    made, asked = table
    model, scores = model_and_scores
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*misses its speedup.*")  # the step of the first head
        plan = quiet_plan(model, scores, speedup=speedup, scope=scope, multiple_of=1)
    dense, predicted = made.model_ms([H, H], [F, F]), made.model_ms(*counts(plan))
    assert predicted <= dense / speedup * (1 + 1e-9)
    assert asked == [(128, 32, "cpu", "auto")]
    t = plan.target
    assert (t["speedup"], t["latency_table"], t["batch_size"], t["device"], t["dtype"]) == (
        speedup, "synthetic", 32, "cpu", "fp32")
    assert t["predicted_speedup"] == pytest.approx(dense / predicted, abs=1e-4) and t["predicted_speedup"] >= speedup
    assert t["dense_ms"] == pytest.approx(dense) and t["predicted_ms"] == pytest.approx(predicted, abs=1e-4)
    assert dc.Plan.from_json(json.dumps(plan.to_dict())).target == t  # the record is a valid plan file
    if speedup == 1.0:
        assert counts(plan) == ([H, H], [F, F])


def test_plan_is_near_the_exact_optimum_of_the_time_knapsack(table, model_and_scores):
    made, _ = table
    model, scores = model_and_scores
    totals = [[[0.0, *torch.sort(s.double(), descending=True).values.cumsum(0).tolist()]
               for s in (scores.heads(i), scores.neurons(i))] for i in range(2)]

    def value(heads, neurons):
        return sum(totals[i][0][h] + totals[i][1][n] for i, (h, n) in enumerate(zip(heads, neurons)))

    dense = made.model_ms([H, H], [F, F])
    for speedup in (1.2, 1.5, 2.0, 3.0):
        plan = dc.plan(model, scores, speedup=speedup, allocation="raw", multiple_of=1)
        best = max(value(hs, ns) for hs in itertools.product(range(H + 1), repeat=2)
                   for ns in itertools.product(range(F + 1), repeat=2)
                   if made.model_ms(hs, ns) <= dense / speedup * (1 + 1e-9))
        assert value(*counts(plan)) >= 0.95 * best


def test_a_layer_left_without_heads_saves_its_whole_attention_block(table, model_and_scores):
    made, _ = table
    model, scores = model_and_scores
    units = scores.unit_scores()
    heads = [torch.full((H,), 10.0), torch.full((H,), 0.1)]  # layer 1's heads are worth little
    neurons = [torch.ones(F), torch.ones(F)]
    skewed = dc.Scores({}, scores.layout, scores.meta, heads=heads, neurons=neurons)
    assert [h.numel() for h in units["heads"]] == [H, H]
    dense = made.model_ms([H, H], [F, F])
    plan = dc.plan(model, skewed, speedup=dense / (dense - 4.5), allocation="raw")  # exactly one attention block
    assert counts(plan) == ([H, 0], [F, F])
    assert plan.target["predicted_ms"] == pytest.approx(dense - 4.5)


def test_minimums_win_over_the_speedup_with_a_warning(table, model_and_scores):
    model, scores = model_and_scores
    with pytest.warns(UserWarning, match=r"misses its speedup: asked 3x.*min_heads=4 keep units beyond it"):
        plan = quiet_plan(model, scores, speedup=3.0, min_heads=4)
    assert counts(plan)[0] == [H, H]


def test_ffn_widths_default_to_aligned_multiples_for_a_speedup(table, model_and_scores):
    model, scores = model_and_scores
    for speedup in (1.3, 2.0, 3.0):
        plan = quiet_plan(model, scores, speedup=speedup)
        assert plan.target["multiple_of"] == 16 and all(n % 16 == 0 for n in counts(plan)[1])
    assert quiet_plan(model, scores, keep_flops=0.5).target["multiple_of"] == 1  # other budgets: any width


def test_multiple_of_keeps_ffn_widths_in_multiples(table, model_and_scores):
    made, _ = table
    model, scores = model_and_scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = dc.plan(model, scores, speedup=1.3, multiple_of=8)
    assert all(n % 8 == 0 for n in counts(plan)[1])
    assert made.model_ms(*counts(plan)) <= made.model_ms([H, H], [F, F]) / 1.3 * (1 + 1e-9)


def test_a_speedup_beyond_the_fixed_part_is_refused(table, model_and_scores):
    model, scores = model_and_scores
    # fixed part: 1 ms + 2 layers x 0.5 ms of the dense 19 ms: at most 9.5x even with nothing kept
    with pytest.raises(DeepCutsError, match=r"speedup 10 is out of reach.*below 9\.5x.*ask for less"):
        quiet_plan(model, scores, speedup=10)


@pytest.mark.parametrize("speedup", [0.5, 0, -2, "2", True, math.nan, math.inf, [2]])
def test_invalid_speedup_is_a_clear_error(speedup, table, model_and_scores):
    model, scores = model_and_scores
    with pytest.raises(DeepCutsError, match=r"speedup is how many times faster .* >= 1"):
        dc.plan(model, scores, speedup=speedup)
    assert table[1] == []  # refused before any table is measured


@pytest.mark.parametrize("budget", ["keep_flops", "keep_params", "keep_heads", "keep_neurons"])
def test_speedup_is_exclusive_with_other_budgets(budget, table, model_and_scores):
    model, scores = model_and_scores
    with pytest.raises(DeepCutsError, match=f"give one budget, not speedup and {budget}"):
        dc.plan(model, scores, speedup=2.0, **{budget: 0.5})


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"device": "meta"}, "unsupported device 'meta'"),
    ({"device": "not a device"}, "unknown device"),
    ({"dtype": "fp8"}, "unsupported dtype"),
])
def test_bad_latency_settings_are_clear_errors(kwargs, message, model_and_scores):
    model, scores = model_and_scores
    with pytest.raises(DeepCutsError, match=message):
        quiet_plan(model, scores, speedup=2.0, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# deepcuts prune --speedup


@pytest.fixture
def scores_file(model_dir, tmp_path):
    path = tmp_path / "s.safetensors"
    dc.score(dc.load_model(str(model_dir)), None, "magnitude", granularity="unit").save(path)
    return path


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_speedup_plans_on_the_table_of_the_flags(model_dir, scores_file, tmp_path, capsys, table):
    made, asked = table
    out = tmp_path / "slim"
    code, stdout, err = run(["prune", "--model", str(model_dir), "--scores", str(scores_file), "--speedup", "2",
                             "--batch-size", "4", "--seq-len", "16", "--dtype", "fp32", "--out", str(out), "--json",
                             "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert asked == [(16, 4, "cpu", "fp32")]
    assert (summary["speedup"], summary["latency_table"], summary["batch_size"]) == (2.0, "synthetic", 32)
    assert summary["predicted_speedup"] >= 2.0
    assert made.model_ms(summary["heads"], summary["ffn"]) <= made.model_ms([H, H], [F, F]) / 2 * (1 + 1e-9)
    assert dc.Plan.load(out / "deepcuts_plan.json").target["speedup"] == 2.0
    assert [layer.num_heads for layer in dc.arch.encoder_layers(dc.from_pretrained(out))] == summary["heads"]


def test_prune_speedup_measures_the_table_end_to_end(model_dir, scores_file, tmp_path, capsys):
    out = tmp_path / "slim"
    code, stdout, err = run(["prune", "--model", str(model_dir), "--scores", str(scores_file), "--speedup", "1",
                             "--batch-size", "2", "--seq-len", "8", "--out", str(out)], capsys)
    assert code == 0, err
    assert "latency table" in err and "predicted 1.00x faster (asked 1x) at batch 2 on cpu fp32" in stdout
    key = dc.Plan.load(out / "deepcuts_plan.json").target["latency_table"]
    assert (cache_dir() / "latency" / f"layer-table-{key}.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--data", "d.csv", "--speedup", "2"], "retraining-free pipeline (--data without --scores) spends a "
                                            "--keep-flops budget"),
    (["--scores", "s", "--speedup", "0.5"], "--speedup is how many times faster"),
    (["--scores", "s", "--speedup", "nan"], "--speedup is how many times faster"),
    (["--scores", "s", "--speedup", "2", "--keep-flops", "0.5"], "give one budget, not --speedup and --keep-flops"),
    (["--scores", "s", "--keep-flops", "0.5", "--device", "cpu"], "give --speedup X, or drop --device"),
    (["--scores", "s", "--speedup", "2", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_prune_speedup_flag_errors_come_before_loading(extra, message, tmp_path, capsys, monkeypatch):
    def loaded(*args, **kwargs):
        pytest.fail("loaded a model or data before checking the flags")

    for target in ("deepcuts_fast.cli.loading.classifier", "deepcuts_fast.cli.loading.model_and_data",
                   "deepcuts_fast.scoring.Scores.load"):
        monkeypatch.setattr(target, loaded)
    code, _, err = run(["prune", *extra, "--out", str(tmp_path / "slim")], capsys)
    assert code == 2 and message in err and "Traceback" not in err
