"""`dc.benchmark` / `deepcuts bench` on tiny models: grid, statistics, ratios, outputs, ONNX, errors, CLI."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, tiny_model
from torch import nn

from deepcuts_fast.benchmarking import BenchmarkReport, add_bench_command, benchmark, run_bench_command
from deepcuts_fast.benchmarking import latency as latency_module
from deepcuts_fast.benchmarking.runners import OnnxRunner, TorchRunner, onnx_quantized
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.flops import encoder_flops
from deepcuts_fast.machine import machine_info
from deepcuts_fast.outputs import MANIFEST, read_manifest
from deepcuts_fast.precision import choose, distinct

FAST = dict(warmup=1, repeats=3, threads=1, min_time=None)
GRID = dict(batch_sizes=(1, 3), seq_lens=(8, 16))


def smaller_ffn(model: nn.Module, width: int = 16) -> nn.Module:
    """The same architecture as `model` with a narrower FFN (fewer FLOPs), random weights."""
    config = type(model.config)(**{**model.config.to_dict(), "intermediate_size": width})
    return type(model)(config).eval()


@pytest.fixture(scope="module")
def pair():
    dense = tiny_model("bert")
    return dense, smaller_ffn(dense)


@pytest.fixture(scope="module")
def report(pair):
    return benchmark(list(pair), names=["dense", "small"], **GRID, **FAST)


def test_rows_cover_the_grid_with_sane_statistics(report):
    keys = [(r["model"], r["batch"], r["seq"]) for r in report.rows]
    assert sorted(keys) == sorted((m, b, s) for m in ("dense", "small") for b in (1, 3) for s in (8, 16))
    for r in report.rows:
        assert 0 < r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["p90_ms"]
        assert r["iqr_ms"] == pytest.approx(r["q3_ms"] - r["q1_ms"])
        assert r["p99_ms"] is None  # 3 samples are too few for a 99th percentile
        assert r["noisy"] == (r["iqr_ms"] > 0.1 * r["median_ms"])
        assert r["seq_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert (r["device"], r["dtype"], r["backend"], r["threads"], r["repeats"]) == ("cpu", "fp32", "torch", 1, 3)
        assert r["weights_mb"] > 0
        if r["peak_mem_mb"] is not None:  # Linux: measured from the RSS high-water mark
            assert r["peak_mem_mb"] == pytest.approx(r["weights_mb"] + r["activation_mb"])


def test_speedup_and_flop_ratio_are_relative_to_the_baseline(report, pair):
    dense, small = pair
    for b in (1, 3):
        for s in (8, 16):
            base, row = report.row("dense", b, s), report.row("small", b, s)
            assert base["speedup"] == 1.0 and base["flop_ratio"] == 1.0
            assert row["speedup"] == pytest.approx(base["median_ms"] / row["median_ms"])
            assert row["flops"] == encoder_flops(small, s) * b
            assert row["flop_ratio"] == pytest.approx(encoder_flops(dense, s) / encoder_flops(small, s))
            assert row["flop_ratio"] > 1


HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
OUT_FILES = ["bench.csv", "bench.json"] + (["bench.png"] if HAS_MATPLOTLIB else [])


def test_outputs_are_written_atomically(report, tmp_path):
    out = tmp_path / "out"
    assert report.save(out) == [out / "bench.json", out / "bench.csv"] + [out / "bench.png"] * HAS_MATPLOTLIB
    assert sorted(p.name for p in out.iterdir()) == OUT_FILES  # no temp files left
    data = json.loads((out / "bench.json").read_text())
    assert data["rows"] == report.rows and data["machine"]["torch"] == torch.__version__
    assert data["settings"]["batch_sizes"] == [1, 3] and data["warnings"] == report.warnings
    with (out / "bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and float(rows[0]["median_ms"]) == pytest.approx(report.rows[0]["median_ms"])
    assert rows[0]["p99_ms"] == "" and float(rows[0]["iqr_ms"]) == pytest.approx(report.rows[0]["iqr_ms"])
    caption, blank, header, rule, *body = report.table().splitlines()
    assert caption == report.caption() and blank == ""
    assert header.startswith("| model | batch | seq | dtype | median ms | IQR ms | p90 ms | p99 ms | runs | seq/s "
                             "| speedup | FLOP ratio")
    assert [line.split(" | ")[7:9] for line in body[:len(report.rows)]] == [["-", "3"]] * len(report.rows)
    assert body[len(report.rows):] == ([""] + [f"warning: {w}" for w in report.warnings] if report.warnings else [])


def test_caption_names_the_cpu_isa_threads_and_dtype(report):
    info = machine_info()
    caption = report.caption()
    assert info["processor"] in caption and info["isa"] in caption and "1 threads" in caption
    assert f"dtype fp32 ({report.settings['dtype_reason']})" in caption
    assert report.settings["threads"] == 1 and report.machine["threads"] == 1


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
def test_plot_is_a_png(report, tmp_path):
    assert report.plot(tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def _plotted_title(report: BenchmarkReport, path: Path, monkeypatch) -> str:
    """The title `report.plot` gives bench.png (the figure is caught as it is saved), its wrapped lines joined."""
    from matplotlib.figure import Figure

    seen = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), save(fig, *a, **k))[1])
    report.plot(path)
    (fig,) = seen
    return " ".join(fig.get_suptitle().split())


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
def test_plot_title_names_the_machine_threads_and_dtype(report, tmp_path, monkeypatch):
    info = machine_info()
    title = _plotted_title(report, tmp_path / "p.png", monkeypatch)
    assert title == report.plot_caption()
    assert info["processor"] in title and info["isa"] in title and "1 threads" in title
    assert "dtype fp32" in title and f"torch {torch.__version__}" in title


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
def test_plot_title_names_the_gpu_and_every_dtype_of_the_rows(report, tmp_path, monkeypatch):
    """A GPU run names the GPU; rows of several dtypes are all named; a report without the one-line description
    (an older bench.json) is named from its recorded CPU facts."""
    gpu = BenchmarkReport(rows=[{**report.rows[0], "dtype": "bf16"}, {**report.rows[1], "dtype": "fp32"}],
                          machine={"device_name": "NVIDIA H200", "threads": 16, "torch": "2.5.1"})
    title = _plotted_title(gpu, tmp_path / "gpu.png", monkeypatch)
    assert title == "Median latency on NVIDIA H200, 16 CPU threads; dtype bf16, fp32; torch 2.5.1"
    old = BenchmarkReport(rows=report.rows, machine={"processor": "AMD EPYC", "isa": "AVX2", "threads": 2})
    assert old.plot_caption() == "Median latency on AMD EPYC (AVX2), 2 threads; dtype fp32"


def test_save_without_matplotlib_keeps_the_numbers(report, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert [p.name for p in report.save(tmp_path)] == ["bench.json", "bench.csv"]
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_bf16_runs_a_cast_copy_and_leaves_the_model_alone():
    model = tiny_model("bert").train()
    threads = torch.get_num_threads()
    rep = benchmark([model], batch_sizes=(2,), seq_lens=(8,), dtype="bf16", warmup=1, repeats=2, threads=1,
                    min_time=None)
    assert [r["dtype"] for r in rep.rows] == ["bf16"]
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.get_num_threads() == threads


class Sleepy(nn.Module):
    """Not an HF model: takes 10 ms per call, has no config (so no FLOPs)."""

    def forward(self, input_ids, attention_mask):
        time.sleep(0.01)
        return input_ids


def test_min_time_adds_repeats_and_plain_modules_have_no_flops():
    rep = benchmark([Sleepy()], batch_sizes=(1,), seq_lens=(4,), warmup=0, repeats=1, min_time=0.05)
    (row,) = rep.rows
    assert row["repeats"] >= 5 and row["median_ms"] >= 10
    assert row["flops"] is None and row["flop_ratio"] is None
    assert "| - |" in rep.table()


def fake_times(monkeypatch, samples_ms, clock: SimpleNamespace | None = None) -> None:
    """Every timed torch pass returns the next of `samples_ms` (cycling); with `clock`, it also advances
    the benchmark's clock by that much, so time floors are met without waiting."""
    samples = itertools.cycle(samples_ms)

    def time_ms(self, inputs):
        ms = next(samples)
        if clock is not None:
            clock.now += ms / 1e3
        return ms

    monkeypatch.setattr(TorchRunner, "time_ms", time_ms)


def quiet_machine(monkeypatch, load: float = 0.0) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))


TINY_POINT = dict(batch_sizes=(1,), seq_lens=(4,), warmup=0, threads=1, min_time=None)


def test_noisy_rows_are_warned_about(pair, monkeypatch):
    quiet_machine(monkeypatch)
    fake_times(monkeypatch, [1.0, 3.0])
    rep = benchmark([pair[0]], names=["dense"], repeats=20, **TINY_POINT)
    (row,) = rep.rows
    assert (row["q1_ms"], row["median_ms"], row["q3_ms"], row["iqr_ms"]) == (1.0, 2.0, 3.0, 2.0)
    assert row["noisy"] and rep.warnings == ["noisy: dense batch 1 seq 4 IQR/median 100%"]
    assert rep.table().endswith("\n\nwarning: noisy: dense batch 1 seq 4 IQR/median 100%")


def test_steady_rows_have_no_warnings(pair, monkeypatch):
    quiet_machine(monkeypatch)
    fake_times(monkeypatch, [2.0])
    rep = benchmark([pair[0]], repeats=20, **TINY_POINT)
    assert rep.rows[0]["iqr_ms"] == 0 and not rep.rows[0]["noisy"]
    assert rep.warnings == [] and "warning" not in rep.table()
    assert rep.machine["load_1min_before"] == rep.machine["load_1min_after"] == 0.0


def test_a_loaded_machine_is_warned_about(pair, monkeypatch):
    fake_times(monkeypatch, [2.0])
    quiet_machine(monkeypatch, load=os.cpu_count() + 1.5)
    rep = benchmark([pair[0]], repeats=2, **TINY_POINT)
    assert rep.warnings == [f"load average {os.cpu_count() + 1.5:.1f} > {os.cpu_count()} CPUs: other processes "
                            "were running; timings are unreliable"]
    assert rep.to_dict()["warnings"] == rep.warnings and f"warning: {rep.warnings[0]}" in rep.table()
    quiet_machine(monkeypatch, load=float(os.cpu_count()))  # the run's own threads busy on every CPU: not load
    assert benchmark([pair[0]], repeats=2, **TINY_POINT).warnings == []


def test_no_load_average_means_no_load_warning(pair, monkeypatch):
    def unavailable():
        raise OSError("no load average here")

    fake_times(monkeypatch, [2.0])
    monkeypatch.setattr(os, "getloadavg", unavailable)
    rep = benchmark([pair[0]], repeats=2, **TINY_POINT)
    assert rep.machine["load_1min_before"] is None and rep.warnings == []


def test_min_time_takes_rounds_until_the_time_has_passed(pair, monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(latency_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    fake_times(monkeypatch, [10.0], clock)
    rep = benchmark(list(pair), repeats=3, **TINY_POINT | dict(min_time=1.0))
    # 10 ms per pass, two models per round: 1 s of timed passes is 50 rounds (51 with rounding)
    assert {r["repeats"] for r in rep.rows} in ({50}, {51})
    assert rep.settings["min_time"] == 1.0 and rep.settings["repeats"] == 3


def test_p99_needs_100_samples(pair):
    rep = benchmark([pair[0]], repeats=100, **TINY_POINT)
    (row,) = rep.rows
    assert row["repeats"] == 100 and row["p90_ms"] <= row["p99_ms"]
    assert "| - |" not in rep.table()


def test_auto_dtype_is_the_native_one_with_its_reason(pair, monkeypatch):
    monkeypatch.delenv("DEEPCUTS_PRECISION", raising=False)  # "auto" as a user gets it: bf16 where native
    expected = choose("infer", "cpu", "auto")
    rep = benchmark([pair[0]], repeats=1, **TINY_POINT)  # dtype defaults to "auto"
    assert (rep.settings["dtype"], rep.settings["dtype_reason"]) == (expected.name, expected.reason)
    assert rep.rows[0]["dtype"] == expected.name
    explicit = benchmark([pair[0]], repeats=1, dtype=torch.float32, **TINY_POINT)
    assert (explicit.settings["dtype"], explicit.settings["dtype_reason"]) == ("fp32", "requested")


def test_threads_are_set_for_the_run_and_restored(pair):
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    rep = benchmark([pair[0]], repeats=1, **TINY_POINT | dict(threads=other))
    assert torch.get_num_threads() == before
    assert rep.settings["threads"] == rep.rows[0]["threads"] == other and f"{other} threads" in rep.caption()
    default = benchmark([pair[0]], repeats=1, **TINY_POINT | dict(threads=None))
    assert default.settings["threads"] == default.rows[0]["threads"] == before
    assert torch.get_num_threads() == before


def export_onnx(model: nn.Module, path: Path) -> Path:
    """A tiny model as ONNX with dynamic batch and sequence (legacy exporter: no onnxscript needed)."""

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(5, TINY["vocab"], (2, 8))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(), (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, dynamo=False)
    return path


def test_onnx_model_runs_through_onnxruntime(pair, tmp_path):
    pytest.importorskip("onnxruntime")
    dense, small = pair
    path = export_onnx(small, tmp_path / "small.onnx")
    rep = benchmark([dense, path], batch_sizes=(1, 2), seq_lens=(8, 12), flops_like=[None, small], **FAST)
    onnx_rows = [r for r in rep.rows if r["backend"] == "onnxruntime"]
    assert len(onnx_rows) == 4 and {r["model"] for r in onnx_rows} == {"small.onnx"}
    for r in onnx_rows:
        assert r["dtype"] == "fp32" and r["median_ms"] > 0 and r["threads"] == 1
        assert r["flop_ratio"] == pytest.approx(encoder_flops(dense, r["seq"]) / encoder_flops(small, r["seq"]))
    assert "onnxruntime" in rep.machine
    without_flops = benchmark([path], batch_sizes=(1,), seq_lens=(8,), **FAST)
    assert without_flops.rows[0]["flops"] is None


def test_int8_onnx_is_labelled_int8(pair, tmp_path):
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_onnx(pair[1], tmp_path / "small.onnx")
    int8 = tmp_path / "small-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    assert not onnx_quantized(fp32) and onnx_quantized(int8)
    rep = benchmark([fp32, int8], **TINY_POINT | dict(repeats=1))
    assert [r["dtype"] for r in rep.rows] == ["fp32", "int8"]
    assert OnnxRunner(int8, torch.device("cpu"), 1).session.get_outputs()[0].type == "tensor(float)"


def test_onnx_without_onnxruntime_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not really onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(DeepCutsError, match="pip install onnxruntime"):
        benchmark([path], batch_sizes=(1,), seq_lens=(8,))


@pytest.mark.parametrize("kwargs, message", [
    (dict(models=[]), "at least one model"),
    (dict(device="tpu"), "device"),
    (dict(dtype="int8"), "unsupported dtype"),
    (dict(dtype=torch.int8), "unsupported dtype"),
    (dict(batch_sizes=(0, 1)), "batch_sizes"),
    (dict(batch_sizes=()), "batch_sizes"),
    (dict(seq_lens=(-1,)), "seq_lens"),
    (dict(repeats=0), "repeats"),
    (dict(warmup=-1), "warmup"),
    (dict(threads=0), "threads"),
    (dict(min_time=-1), "min_time"),
    (dict(min_time="1"), "min_time"),
    (dict(dtype=5), "unsupported dtype"),
    (dict(names=["a", "b"]), "one name per model"),
    (dict(seq_lens=(65,)), "longer than"),
    (dict(models=["model.safetensors"]), "not an .onnx file"),
    (dict(models=["missing.onnx"]), "does not exist"),
    (dict(models=[42]), "cannot benchmark"),
])
def test_bad_input_is_refused_before_running(kwargs, message, pair):
    args = dict(models=[pair[0]], batch_sizes=(1,), seq_lens=(8,)) | kwargs
    with pytest.raises(DeepCutsError, match=message):
        benchmark(args.pop("models"), **args)


def test_duplicate_names_and_missing_rows_are_errors(pair, report):
    with pytest.raises(DeepCutsError, match="unique"):
        benchmark(list(pair), names=["x", "x"], batch_sizes=(1,), seq_lens=(8,))
    with pytest.raises(DeepCutsError, match="no benchmark row"):
        report.row("dense", 7, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(pair):
    with pytest.raises(DeepCutsError, match="no CUDA GPU"):
        benchmark([pair[0]], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rows_use_cuda_events_and_cuda_memory(pair):
    rep = benchmark(list(pair), names=["dense", "small"], batch_sizes=(1, 8), seq_lens=(16,), device="cuda",
                    dtype="fp16", warmup=1, repeats=3, min_time=None)
    for r in rep.rows:
        assert r["device"].startswith("cuda") and r["dtype"] == "fp16" and r["median_ms"] > 0
        assert r["activation_mb"] > 0 and r["peak_mem_mb"] > r["weights_mb"]
    assert rep.row("small", 8, 16)["flop_ratio"] > 1 and rep.machine["device_name"] in rep.caption()


# ---------------------------------------------------------------------------------------------
# deepcuts bench


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepcuts")
    add_bench_command(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def model_dirs(pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_models")
    for name, model in zip(("dense", "small"), pair):
        model.save_pretrained(root / name)
    return root / "dense", root / "small"


def test_cli_writes_json_csv_png_and_prints_json(model_dirs, tmp_path, capsys):
    dense, small = model_dirs
    out = tmp_path / "bench"
    args = bench_parser().parse_args(["bench", "--model", str(small), "--baseline", str(dense), "--batch-sizes", "1,2",
                                      "--seq-lens", "8", "--repeats", "2", "--min-time", "0", "--warmup", "1",
                                      "--threads", "1", "--out", str(out), "--json"])
    assert run_bench_command(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["batch"]) for r in data["rows"]] == [("dense", 1), ("small", 1), ("dense", 2), ("small", 2)]
    assert data["rows"][1]["flop_ratio"] > 1 and isinstance(data["warnings"], list)
    auto = choose("infer", "cpu", "auto")
    assert (data["settings"]["dtype"], data["settings"]["dtype_reason"]) == (auto.name, auto.reason)
    assert data["settings"]["threads"] == 1 and data["settings"]["min_time"] == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == OUT_FILES
    assert read_manifest(out)["files"] == OUT_FILES


def test_cli_prints_the_table_and_reads_slim_folders(pair, tmp_path, capsys, monkeypatch):
    import deepcuts_fast as dc

    slim = dc.prune(pair[0], dc.plan(pair[0], dc.score(pair[0], None, "magnitude", progress=False),
                                     keep_flops=0.5, seq_len=8))
    dc.save_pretrained(slim, tmp_path / "slim")
    args = bench_parser().parse_args(["bench", "--model", str(tmp_path / "slim"), "--batch-sizes", "2",
                                      "--seq-lens", "8", "--repeats", "2", "--min-time", "0", "--warmup", "0",
                                      "--dtype", "bf16", "--threads", "1", "--quiet"])
    quiet_machine(monkeypatch, load=os.cpu_count() + 1)
    assert run_bench_command(args) == 0
    header, blank, caption, *rest = capsys.readouterr().out.splitlines()
    assert "at least 2 timed runs per model on cpu" in header and "speedup and FLOP ratio vs slim" in header
    info = machine_info()
    assert info["processor"] in caption and info["isa"] in caption and "1 threads" in caption and "bf16" in caption
    assert any(line.startswith("| slim | 2 | 8 | bf16 |") for line in rest)
    assert rest[-1].startswith("warning: load average")


def test_cli_dtype_defaults_to_auto():
    args = bench_parser().parse_args(["bench", "--model", "x"])
    assert (args.dtype, args.repeats, args.min_time) == ("auto", 20, 1.0)


def test_cli_refuses_bad_arguments(model_dirs, tmp_path, capsys):
    parser = bench_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--model", "x", "--batch-sizes", "0,1"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--model", "x", "--seq-lens", "a"])
    capsys.readouterr()
    a_file = tmp_path / "file"
    a_file.write_text("")
    args = parser.parse_args(["bench", "--model", str(model_dirs[0]), "--out", str(a_file)])
    with pytest.raises(DeepCutsError, match="is a file"):
        run_bench_command(args, load=lambda p: pytest.fail("loaded a model before checking --out"))
    with pytest.raises(DeepCutsError, match="nowhere does not exist"):
        run_bench_command(parser.parse_args(["bench", "--model", str(tmp_path / "nowhere")]))


# ---------------------------------------------------------------------------------------------
# benchmarks/bench_latency.py: its summary on hand-built dense / narrower models


def test_bench_latency_summary(pair):
    spec = importlib.util.spec_from_file_location(
        "bench_latency", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_latency.py")
    bench_latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_latency)
    args = bench_latency.parse_args(["--batch-sizes", "1", "--seq-len", "8", "--dtypes", "fp32,bf16",
                                     "--repeats", "2", "--min-time", "0", "--warmup", "0", "--threads", "1"])
    reports = bench_latency.measure("tiny", pair[0], {0.5: pair[1]}, args)
    text = bench_latency.summary(reports)
    assert "| tiny-keep0.5 | 1 | 8 | fp32 |" in text and "| tiny-keep0.5 | 1 | 8 | bf16 |" in text
    fp32, bf16 = reports
    dense_fp32 = fp32.row("tiny-dense", 1, 8)["median_ms"]
    assert f"{dense_fp32 / bf16.row('tiny-keep0.5', 1, 8)['median_ms']:.2f}x |" in text
    both = bench_latency.combined(reports, "bench_latency.py --models tiny")
    assert isinstance(both, BenchmarkReport) and len(both.rows) == 4
    assert both.settings["command"] == "bench_latency.py --models tiny"
    assert both.warnings == list(dict.fromkeys(w for r in reports for w in r.warnings))
    assert "1 threads" in bench_latency.settings_lines(reports)
    assert bench_latency.parse_args([]).dtypes == ["fp32", "auto"]
    expected = ["fp32"] if choose("infer", "cpu", "auto").name == "fp32" else ["fp32", "auto"]
    assert distinct("infer", "cpu", ["fp32", "auto"]) == expected
    assert distinct("infer", "cpu", ["fp32", "float32", "bf16"]) == ["fp32", "bf16"]


# ---------------------------------------------------------------------------------------------
# benchmarks/bench_families.py: a tiny run of two families (one with token_type_ids, one without)


def test_bench_families_tiny_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_families", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_families.py")
    bench_families = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_families)
    out = tmp_path / "families.json"
    argv = ["--families", "bert,roberta", "--layers", "1", "--hidden", "32", "--heads", "4", "--ffn", "64",
            "--batch-size", "1", "--seq-len", "8", "--rounds", "2", "--warmup", "0", "--threads", "1",
            "--json", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # magnitude scores have no Fisher reference: plan says so
        assert bench_families.main(argv) == 0
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert [r["family"] for r in saved["rows"]] == ["bert", "roberta"]
    assert saved["machine"]["threads"] == 1 and saved["settings"]["keep_flops"] == 0.5
    for row in saved["rows"]:
        assert row["flop_reduction"] == pytest.approx(row["dense_encoder_flops"] / row["slim_encoder_flops"])
        assert row["flop_reduction"] > 1 and row["dense"]["runs"] == row["slim"]["runs"] == 2
        assert row["flop_efficiency"] == pytest.approx(row["speedup"] / row["flop_reduction"])
        assert row["passed"] == (row["flop_efficiency"] >= bench_families.TARGET)
        assert f"| {row['family']} | " in text
    assert [r["inputs"] for r in saved["rows"]] == [["input_ids", "attention_mask", "token_type_ids"],
                                                    ["input_ids", "attention_mask"]]
    assert "machine: " in text and "1 threads" in text
    with pytest.raises(SystemExit):
        bench_families.parse_args(["--families", "bert,nosuch"])
    assert "registered: " in capsys.readouterr().err
