"""Honest timing: the allocator named, warm-up until steady, drift and page-fault warnings; and the
deployment table, whose every row is compared with the fastest dense variant of the same run. No speed is asserted."""
from __future__ import annotations

import dataclasses
import itertools
import os
import warnings

import pytest
import torch
from conftest import tiny_model

import deepcuts_fast as dc
from deepcuts_fast import machine
from deepcuts_fast.benchmarking import benchmark
from deepcuts_fast.benchmarking import latency as latency_module
from deepcuts_fast.benchmarking.deployment import compare_deployment, deployment_table, rank_by_best_dense
from deepcuts_fast.benchmarking.latency import (STEADY_WINDOW, WARMUP_MAX_ROUNDS, drift, drifted, steady,
                                                timing_warnings, warm_up)
from deepcuts_fast.benchmarking.runners import TorchRunner
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.runtimes import RUNTIMES

POINT = dict(batch_sizes=(1,), seq_lens=(4,), threads=1, min_time=None)


# --- the allocator --------------------------------------------------------------------------------------------

@pytest.mark.skipif("LD_PRELOAD" in os.environ, reason="this process runs a preloaded library")
def test_this_process_runs_glibc_malloc_and_every_report_says_so():
    assert machine.allocator() == "glibc malloc"
    assert machine.machine_info()["allocator"] == "glibc malloc"
    rep = benchmark([tiny_model("bert")], warmup=0, repeats=1, **POINT)
    assert rep.machine["allocator"] == "glibc malloc" and "; glibc malloc; " in rep.caption()
    assert rep.to_dict()["machine"]["allocator"] == "glibc malloc" and "glibc malloc" in rep.plot_caption()


def test_a_preloaded_allocator_is_named(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    maps.write_text("7f00 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.9\n")
    monkeypatch.setattr(machine, "_MAPS", maps)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert machine.allocator() == "tcmalloc (LD_PRELOAD)"
    monkeypatch.delenv("LD_PRELOAD")  # mapped (opened by some extension) but not preloaded: malloc is still libc's
    assert machine.allocator().endswith("malloc (tcmalloc loaded, not preloaded)")
    monkeypatch.setattr(machine, "_MAPS", tmp_path / "missing")  # no /proc: the variable alone
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert machine.allocator() == "jemalloc (LD_PRELOAD)"


# --- warm-up until steady -------------------------------------------------------------------------------------

def scripted(times: list[float]):
    """A pass that returns the next of `times` (the last one forever after), counting its calls."""
    it = itertools.chain(times, itertools.repeat(times[-1]))

    def run() -> float:
        run.calls += 1
        return next(it)

    run.calls = 0
    return run


def test_warm_up_stops_at_the_first_steady_window():
    run = scripted([90.0, 40.0, 20.0, 12.0, 10.4, 10.0, 10.2, 10.1, 30.0])
    (times,) = warm_up([run], minimum=2)
    assert times == [90.0, 40.0, 20.0, 12.0, 10.4, 10.0, 10.2] and run.calls == 7  # 10.4 / 10.0 - 1 = 4% <= 5%
    assert steady(times) and not steady(times[:-1]) and not steady([10.0, 10.0])


def test_warm_up_keeps_its_minimum_and_waits_for_every_model():
    assert warm_up([scripted([5.0])], minimum=7) == [[5.0] * 7]  # steady from the start, still 7 rounds
    slow = scripted([9.0, 8.0, 7.0, 6.0, 5.0, 5.0, 5.0])
    times = warm_up([scripted([1.0]), slow], minimum=1)
    assert [len(t) for t in times] == [7, 7] and times[1][-STEADY_WINDOW:] == [5.0] * 3  # rounds: both alike


def test_warm_up_is_bounded_and_zero_means_none():
    alternating = itertools.cycle([1.0, 2.0])
    (times,) = warm_up([lambda: next(alternating)], minimum=1)
    assert len(times) == WARMUP_MAX_ROUNDS and not steady(times)
    assert warm_up([scripted([1.0])], minimum=0) == [[]]


def fake_passes(monkeypatch, times: list[float]) -> None:
    """Every torch pass of the benchmark (warm-up and timed) returns the next of `times`, the last forever."""
    it = itertools.chain(times, itertools.repeat(times[-1]))
    monkeypatch.setattr(TorchRunner, "time_ms", lambda self, inputs: next(it))


def test_unsteady_warm_up_drift_and_page_faults_are_warned_about(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    fake_passes(monkeypatch, [1.0, 2.0] * (WARMUP_MAX_ROUNDS // 2) + [10.0] * 6 + [20.0] * 6)
    faults = itertools.count(step=1000)  # 1000 minor faults between any two reads: 1000 per timed pass
    monkeypatch.setattr(latency_module, "_minor_faults", lambda: next(faults))
    rep = benchmark([tiny_model("bert")], names=["m"], warmup=1, repeats=12, **POINT)
    (row,) = rep.rows
    assert (row["warmup_passes"], row["warmup_steady"], row["warmup_spread"]) == (WARMUP_MAX_ROUNDS, False, 1.0)
    assert row["drift"] == 1.0 and row["minor_faults_per_pass"] == 1000
    assert rep.warnings == [
        "noisy: m batch 1 seq 4 IQR/median 67%",
        f"unsteady warm-up at batch 1 seq 4: after {WARMUP_MAX_ROUNDS} rounds the last 3 passes still differ by more "
        "than 5% for m (100%)",
        "drift: m batch 1 seq 4: the last quarter of timed rounds is +100% against the first",
        f"page faults: m batch 1 seq 4: 1000 minor faults per timed pass (3.9 MiB faulted in again each pass under "
        f"{rep.machine['allocator']}); the timings include it"]
    assert "at least 1 rounds, then until the last 3 passes" in rep.settings["warmup_rule"]


def test_steady_rows_warn_about_nothing():
    rows = [{"model": "m", "batch": 1, "seq": 4, "warmup_steady": True, "warmup_passes": 3, "drift": 2.0,
             "drifted": False, "median_ms": 2.0, "iqr_ms": 2.0, "minor_faults_per_pass": 3.0}]
    assert timing_warnings(rows, "glibc malloc") == []
    assert drift([1.0] * 7) is None and drift([1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 2.0, 2.0]) == 1.0
    alternating = [1.0, 3.0] * 10  # quarters of 5: medians 1 and 3, a shift of 2 ms, no more than their IQRs
    assert drift(alternating) == 2.0 and not drifted(alternating) and drifted([1.0] * 4 + [1.2] * 4)
    assert not drifted([1.0] * 4 + [1.05] * 4) and not drifted([1.0] * 7)


# --- the deployment table -------------------------------------------------------------------------------------

def fake_result(times: dict[str, float]) -> dict:
    rows = [{"variant": v, "batch": 32, "seq": 128, "median_ms": ms, "iqr_ms": 1.0, "speedup": times[
        "dense torch fp32"] / ms, "accuracy": None, "vs_dense": None, "size_mib": 1.0} for v, ms in times.items()]
    rank_by_best_dense(rows)
    machine_record = {"description": "AMD EPYC (AVX2), 2 threads", "allocator": "glibc malloc",
                      "versions": {"torch": "2.13.0+cpu", "openvino": "2026.4"}}
    settings = {"repeats": 10, "min_time": 1.0, "warmup_rule": "at least 2 rounds, then until steady"}
    return {"rows": rows, "benchmark": {"machine": machine_record, "settings": settings, "warnings": []}}


def test_every_row_is_compared_with_the_fastest_dense_variant_of_the_run():
    result = fake_result({"dense torch fp32": 355.0, "dense ORT int8": 124.0, "dense OpenVINO int8": 76.0,
                          "slim torch fp32": 180.0, "slim ORT int8": 62.0, "slim OpenVINO int8": 40.0})
    by = {r["variant"]: r for r in result["rows"]}
    assert {r["best_dense"] for r in result["rows"]} == {"dense OpenVINO int8"}
    assert by["slim OpenVINO int8"]["speedup_best_dense"] == pytest.approx(76 / 40)
    assert by["dense OpenVINO int8"]["speedup_best_dense"] == 1.0
    where, _, winner, _, header, _, *body = deployment_table(result)
    assert where.startswith("Measured on AMD EPYC (AVX2), 2 threads; glibc malloc; torch 2.13.0+cpu, openvino 2026.4")
    assert winner == ("Fastest dense: **dense OpenVINO int8** (76.0 ms); fastest slim: **slim OpenVINO int8** "
                      "(40.0 ms), **1.90x** the fastest dense and 8.88x dense torch fp32.")
    assert "x over dense torch fp32 | x over best dense (dense OpenVINO int8) |" in header
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in body}
    assert cells["slim ORT int8"][3:5] == ["5.73x", "1.23x"] and cells["dense torch fp32"][3:5] == ["1.00x", "0.21x"]
    with pytest.raises(DeepCutsError, match="no batch 1; use one of \\[32\\]"):
        deployment_table(result, batch=1)


def test_a_slim_model_slower_than_the_best_dense_shows_below_1x():
    result = fake_result({"dense torch fp32": 355.0, "dense OpenVINO fp32": 76.0, "slim ORT int8": 124.0})
    winner = deployment_table(result)[2]
    assert "fastest slim: **slim ORT int8** (124.0 ms), **0.61x** the fastest dense" in winner


def tiny_pair():
    dense = tiny_model("bert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = dc.plan(dense, dc.score(dense, None, "magnitude", progress=False), keep_flops=0.5, seq_len=8)
    return dense, dc.prune(dense, plan)


def test_compare_deployment_builds_every_runtime_variant_and_names_the_winners(tmp_path):
    dense, slim = tiny_pair()
    g = torch.Generator().manual_seed(0)
    test = [{"input_ids": torch.randint(5, 100, (8, 8), generator=g), "labels": torch.randint(0, 2, (8,), generator=g)}
            for _ in range(2)]  # no attention mask or token type ids: the comparison fills them in
    runtimes = ["ort"]  # OpenVINO builds take seconds each; test_deploy covers its runtime module
    result = compare_deployment(dense, slim, dc.load_tokenizer("minilm"), tmp_path, test=test, calibration=test,
                                runtimes=runtimes, batch_sizes=(2,), seq_len=8, repeats=3, threads=1,
                                log=lambda m: None)
    by = {r["variant"]: r for r in result["rows"]}
    variants = [f"torch {p}" for p in RUNTIMES["torch"].precisions()] + ["ORT fp32", "ORT int8"]  # bf16 if native
    expected = {f"{m} {v}" for m in ("dense", "slim") for v in variants}
    assert set(by) == expected and by["dense torch fp32"]["speedup"] == 1.0
    best = min((r for r in by.values() if r["model"] == "dense"), key=lambda r: r["median_ms"])
    assert all(r["best_dense"] == best["variant"] for r in by.values())
    assert all(r["speedup_best_dense"] == pytest.approx(best["median_ms"] / r["median_ms"]) for r in by.values())
    assert by["slim ORT int8"]["runtime"] == "ort" and by["slim ORT int8"]["precision"] == "int8"
    assert by["slim ORT fp32"]["accuracy"] == by["slim torch fp32"]["accuracy"] and by[
        "slim torch fp32"]["vs_dense"]["verdict"] in ("tie", "slim torch fp32", "dense torch fp32")
    assert set(result["exports"]) == {"dense ORT fp32", "dense ORT int8", "slim ORT fp32", "slim ORT int8"}
    assert result["calibration"] == "2 given batches" and result["failed_variants"] == {}
    machine_record = result["benchmark"]["machine"]
    assert machine_record["allocator"] and machine_record["threads"] == 1 and machine_record["versions"]["onnxruntime"]
    table = "\n".join(deployment_table(result))
    assert f"Fastest dense: **{best['variant']}**" in table and "| slim ORT int8 |" in table


def test_a_variant_its_runtime_cannot_build_is_left_out_and_said(tmp_path, monkeypatch):
    from deepcuts_fast.runtimes import ort

    def build(model, tokenizer, precision, out, calibration):
        if precision == "int8" and hasattr(model.config, "deepcuts_heads"):  # the slim model's int8 only
            raise RuntimeError("OpConversionFailure: an empty MatMul\nsecond line")
        return original(model, tokenizer, precision, out, calibration)

    original = RUNTIMES["ort"].build
    monkeypatch.setitem(RUNTIMES, "ort", dataclasses.replace(ort.RUNTIME, build=build))
    dense, slim = tiny_pair()
    logged = []
    result = compare_deployment(dense, slim, dc.load_tokenizer("minilm"), tmp_path, runtimes=["ort"],
                                batch_sizes=(2,), seq_len=8, repeats=3, threads=1, log=logged.append)
    assert result["failed_variants"] == {"slim ORT int8": "RuntimeError: OpConversionFailure: an empty MatMul"}
    assert "slim ORT int8" not in {r["variant"] for r in result["rows"]} and "slim ORT fp32" in result["exports"]
    assert any(m.startswith("deployment comparison: skipping slim ORT int8: ort could not build") for m in logged)
    assert deployment_table(result)[-1] == ("Not built: slim ORT int8 (RuntimeError: OpConversionFailure: an empty "
                                            "MatMul).")


def test_bad_runtime_lists_are_refused(tmp_path):
    dense, slim = tiny_pair()
    with pytest.raises(DeepCutsError, match="list of runtime names"):
        compare_deployment(dense, slim, None, tmp_path, runtimes="ort", log=lambda m: None)
    with pytest.raises(DeepCutsError, match="runtime"):
        compare_deployment(dense, slim, None, tmp_path, runtimes=["tensorrt"], log=lambda m: None)
    (tmp_path / "dense-torch-fp32").mkdir()
    with pytest.raises(DeepCutsError, match="dense-torch-fp32 already exists: give compare_deployment a folder"):
        compare_deployment(dense, slim, None, tmp_path, runtimes=[], log=lambda m: None)


def test_the_job_report_names_the_runtimes_and_the_winners():
    from deepcuts_fast.job.report import _deployment_section

    result = fake_result({"dense torch fp32": 355.0, "dense OpenVINO int8": 76.0, "slim ORT int8": 50.0})
    result["benchmark"]["warnings"] = ["drift: x"]
    lines = _deployment_section({"deployment": {"folder": "slim-keep0.5", "criterion": "fisher", "keep_flops": 0.5,
                                                **result}})
    text = "\n".join(lines)
    assert lines[0] == "## Deployment" and "every runtime installed here (torch, OpenVINO, ORT)" in text
    assert "OpenVINO int8: NNCF calibrated on random token ids)" in text
    assert ("Fastest dense: **dense OpenVINO int8** (76.0 ms); fastest slim: **slim ORT int8** (50.0 ms), **1.52x**"
            in text)
    assert "| slim ORT int8 | 50.0 | 1.0 | 7.10x | 1.52x |" in text and "Warning: drift: x." in text
