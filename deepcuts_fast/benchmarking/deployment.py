"""The deployment comparison: a dense model and its slim model, each built by every installed runtime of
`deepcuts_fast.runtimes` (torch; ONNX Runtime; OpenVINO) in every precision that runtime offers on this machine
(fp32, int8, and bf16 only where the precision policy finds it native), timed side by side in one benchmark run,
each with its accuracy on the held-out test data.

This is the table a user reads to choose what to ship. The slim model has to beat what the user can already do with
the dense one: on an AMX Xeon dense OpenVINO (76 ms) beat the slim ORT int8 file (124 ms), so every
row is also compared with the fastest dense variant measured in the same run, and the table names the fastest
dense and the fastest slim variant.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError, first_line
from ..export.side import REPORT_FILE
from ..runtimes import Runtime, get_runtime, installed
from ..runtimes.base import Feeds, Session, feeds_of
from ..stats import compare, points
from ..train import EvalResult, evaluate_logits
from .latency import benchmark
from .runners import SessionRunner

BASELINE = "dense torch fp32"
LABELS = {"torch": "torch", "ort": "ORT", "openvino": "OpenVINO"}  # how the tables name each runtime
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_SHAPE = (4, 8)  # random-token calibration when none is given: this many batches of this many rows


def onnx_ready() -> str | None:
    """None when onnx and onnxruntime are installed, else what to install."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return f"the deployment comparison needs {' and '.join(missing)}: pip install 'deepcuts-fast[onnx]'"
    return None


def compare_deployment(dense: nn.Module, slim: nn.Module, tokenizer, folder: str | os.PathLike | None = None, *,
                       test: Sequence[dict] | None = None, calibration: Sequence[dict] | None = None,
                       runtimes: Sequence[str] | None = None, batch_sizes: Sequence[int] = (32,), seq_len: int = 128,
                       repeats: int = 10, threads: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Build `dense` and `slim` in every precision of every runtime (`runtimes`: names, default every installed
    one; torch is always in) into `folder` (a temporary folder, removed after, when None), time every variant at
    `batch_sizes` x `seq_len` on `threads` threads in one `benchmark` run, and evaluate each on `test` (skipped
    when None), comparing it with dense torch fp32 on the same examples (McNemar and a paired bootstrap,
    `deepcuts_fast.stats.compare`). `calibration` (tokenized batches) calibrates the int8 variants that need it
    (OpenVINO's NNCF); without it they are calibrated on random token ids, which is said in the log.

    Returns {"rows": [{variant, model, runtime, precision, batch, seq, median_ms, iqr_ms, speedup,
    speedup_best_dense, best_dense, accuracy, vs_dense, size_mib}], "exports": {variant: ONNX export summary},
    "failed_variants": {variant: why its runtime could not build or load it (it is left out, with a log line)},
    "calibration": what calibrated the int8 variants that calibrate ("random token ids" or "N given batches"),
    "benchmark": the benchmark's machine / settings / warnings}."""
    chosen = _runtimes(runtimes, log)
    threads = threads or torch.get_num_threads()
    feeds = _calibration(calibration, dense, seq_len, log)
    with tempfile.TemporaryDirectory(prefix="deepcuts-deploy-") as scratch:
        out = Path(folder) if folder is not None else Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        runners: dict[str, SessionRunner] = {}
        exports: dict[str, dict] = {}
        failed: dict[str, str] = {}
        for name, model in (("dense", dense), ("slim", slim)):
            for runtime in chosen:
                for precision in runtime.precisions():
                    variant = f"{name} {LABELS.get(runtime.name, runtime.name)} {precision}"
                    artifact = out / f"{name}-{runtime.name}-{precision}"
                    if artifact.exists():
                        raise DeepCutsError(f"{artifact} already exists: give compare_deployment a folder without "
                                            "earlier artifacts (or None for a temporary one)")
                    artifact.mkdir()
                    try:
                        runtime.build(model, tokenizer, precision, artifact, feeds)
                        session = runtime.load(artifact, precision, threads)
                    except Exception as e:  # a runtime's converter raises its own types; torch is the baseline
                        if runtime.name == "torch":
                            raise
                        failed[variant] = f"{type(e).__name__}: {first_line(e)}"
                        log(f"deployment comparison: skipping {variant}: {runtime.name} could not build or load it "
                            f"({failed[variant]})")
                        continue
                    runners[variant] = SessionRunner(session, runtime.name, precision, artifact, model)
                    exports |= _export_record(variant, artifact, runners[variant].weights_mb)
                    log(f"built {variant} ({runners[variant].weights_mb:.1f} MiB)")
        report = benchmark(list(runners.values()), batch_sizes=tuple(batch_sizes), seq_lens=(seq_len,),
                           names=list(runners), repeats=repeats, warmup=2, threads=threads)
        evals = {name: _evaluate(r.session, test) for name, r in runners.items()} if test is not None else {}
    rows = []
    for name, runner in runners.items():
        result = evals.get(name)
        vs_dense = None if result is None or name == BASELINE else compare(
            result, evals[BASELINE], names=(name, BASELINE)).to_dict()
        for batch in batch_sizes:
            r = report.row(name, batch, seq_len)
            rows.append({"variant": name, "model": name.split()[0], "runtime": runner.backend,
                         "precision": runner.dtype, "batch": batch, "seq": seq_len, "median_ms": r["median_ms"],
                         "iqr_ms": r["iqr_ms"], "speedup": r["speedup"],
                         "accuracy": None if result is None else result.accuracy, "vs_dense": vs_dense,
                         "size_mib": round(runner.weights_mb, 3)})
    rank_by_best_dense(rows)
    machine = report.machine | {"versions": _versions(chosen)}
    return {"rows": rows, "exports": exports, "failed_variants": failed,
            "calibration": "random token ids" if calibration is None else f"{len(feeds)} given batches",
            "benchmark": {"machine": machine, "settings": report.settings, "warnings": report.warnings}}


def _runtimes(names: Sequence[str] | None, log: Callable[[str], None]) -> list[Runtime]:
    """The runtimes to compare: those named (torch always among them) or every installed one."""
    if names is None:
        return installed(lambda message: log(f"deployment comparison: {message}"))
    if isinstance(names, str):
        raise DeepCutsError(f"runtimes must be a list of runtime names such as ['torch', 'ort'], got {names!r}")
    return [get_runtime(n) for n in dict.fromkeys(["torch", *names])]


def _calibration(batches: Sequence[dict] | None, model: nn.Module, seq_len: int,
                 log: Callable[[str], None]) -> list[Feeds]:
    """The int8 calibration feeds: `batches`' token arrays, or random token ids of the benchmark's shape."""
    if batches is not None:
        if not batches or not all(isinstance(b, dict) and "input_ids" in b for b in batches):
            raise DeepCutsError("calibration must be a non-empty list of tokenized batches with input_ids")
        return [_feeds(b) for b in batches]
    log("deployment comparison: note: int8 variants that calibrate (OpenVINO) are calibrated on random token ids; "
        "pass calibration= batches of real text for their real accuracy")
    vocab = int(getattr(model.config, "vocab_size", 100))
    rng = np.random.default_rng(0)
    count, rows = CALIBRATION_SHAPE
    shape = (rows, seq_len)
    return [{"input_ids": rng.integers(min(5, vocab - 1), vocab, shape, dtype=np.int64),
             "attention_mask": np.ones(shape, np.int64), "token_type_ids": np.zeros(shape, np.int64)}
            for _ in range(count)]


def _feeds(batch: dict) -> dict[str, np.ndarray]:
    """A tokenized batch as the int64 arrays every runtime's graph may ask for: a missing attention mask is all
    ones and missing token type ids are zeros, as the tokenizers that leave them out mean."""
    ids = feeds_of(batch, ["input_ids"])["input_ids"]
    given = feeds_of(batch, [n for n in INPUTS if n in batch])
    return {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)} | given


def _export_record(variant: str, artifact: Path, size_mib: float) -> dict[str, dict]:
    """{variant: size, fused attention layers and the check against torch} for an artifact that is an ONNX Runtime
    graph from `dc.export` (its report beside it, no other IR); {} otherwise."""
    report = artifact / REPORT_FILE
    if not report.is_file() or any(artifact.glob("*.xml")):
        return {}
    r = json.loads(report.read_text(encoding="utf-8"))
    fused = sum(n for op, n in (r.get("fused") or {}).items() if "Attention" in op)
    return {variant: {"size_mib": round(size_mib, 3), "fused_attention": fused, "max_abs_diff": r.get("max_abs_diff"),
                      "argmax_agreement": r.get("argmax_agreement")}}


def _versions(runtimes: list[Runtime]) -> dict[str, str | None]:
    """The installed version of every package the compared runtimes import."""
    out = {}
    for package in dict.fromkeys(p for r in runtimes for p in r.packages):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _evaluate(session: Session, test: Sequence[dict]) -> EvalResult:
    """Test metrics of a runtime session, as `evaluate` reports a torch model's, so every variant compares."""
    return evaluate_logits((torch.from_numpy(np.asarray(session(_feeds(b)), dtype=np.float32)),
                            torch.as_tensor(b["labels"])) for b in test)


def fastest(rows: Sequence[dict], model: str, batch: int) -> dict | None:
    """The row of `model` ("dense" or "slim") with the lowest median latency at `batch` (None when it has none)."""
    mine = [r for r in rows if r["variant"].split()[0] == model and r["batch"] == batch]
    return min(mine, key=lambda r: r["median_ms"]) if mine else None


def rank_by_best_dense(rows: list[dict]) -> None:
    """Give every row `best_dense` (the fastest dense variant at its batch, measured in the same run) and
    `speedup_best_dense` (that variant's median over this row's)."""
    for r in rows:
        best = fastest(rows, "dense", r["batch"])
        r["best_dense"] = best["variant"]
        r["speedup_best_dense"] = best["median_ms"] / r["median_ms"]


def winners(result: dict, batch: int) -> str:
    """One line naming the fastest dense and the fastest slim variant at `batch` and how they compare."""
    dense, slim = fastest(result["rows"], "dense", batch), fastest(result["rows"], "slim", batch)
    if dense is None or slim is None:
        return ""
    return (f"Fastest dense: **{dense['variant']}** ({dense['median_ms']:.1f} ms); fastest slim: **{slim['variant']}**"
            f" ({slim['median_ms']:.1f} ms), **{dense['median_ms'] / slim['median_ms']:.2f}x** the fastest dense "
            f"and {slim['speedup']:.2f}x dense torch fp32.")


def measured_on(result: dict) -> str:
    """Where and how the table was measured: CPU, ISA, threads, allocator, versions, warm-up and rounds."""
    m, s = result["benchmark"]["machine"], result["benchmark"]["settings"]
    versions = ", ".join(f"{p} {v}" for p, v in (m.get("versions") or {}).items() if v and p not in ("nncf", "onnx"))
    rounds = f"at least {s['repeats']} interleaved rounds" + (f" and {s['min_time']:g} s" if s.get("min_time") else "")
    return (f"Measured on {m.get('description')}; {m.get('allocator', 'allocator not recorded')}; {versions}; "
            f"median and IQR of {rounds} after warm-up ({s.get('warmup_rule', 'fixed count')}).")


def deployment_table(result: dict, batch: int | None = None) -> list[str]:
    """Markdown lines: where it was measured, the fastest dense and slim variant, then one row per variant (at
    `batch`, default the largest measured) with its speedup over dense torch fp32 and over the fastest dense
    variant of the same run (both computed from the rows), and its accuracy drop from dense torch fp32."""
    rows = result["rows"]
    batch = batch or max(r["batch"] for r in rows)
    rows = [r for r in rows if r["batch"] == batch]
    if not rows:
        raise DeepCutsError(f"the deployment comparison measured no batch {batch}; use one of "
                            f"{sorted({r['batch'] for r in result['rows']})}")
    baseline = next((r for r in rows if r["variant"] == BASELINE), None)
    best = fastest(rows, "dense", batch)
    lines = [measured_on(result), "", winners(result, batch), "",
             f"| variant | median ms (batch {batch}, seq {rows[0]['seq']}) | IQR ms | x over dense torch fp32 "
             f"| x over best dense ({best['variant']}) | test accuracy | vs dense torch fp32 [95% CI], p "
             "| weights MiB |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        over_fp32 = f"{baseline['median_ms'] / r['median_ms']:.2f}x" if baseline else ""
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        size = "" if r.get("size_mib") is None else f"{r['size_mib']:.1f}"
        lines.append(f"| {r['variant']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {over_fp32} "
                     f"| {best['median_ms'] / r['median_ms']:.2f}x | {acc} | {_versus(r.get('vs_dense'))} | {size} |")
    lines += [f"Not built: {variant} ({why})." for variant, why in (result.get("failed_variants") or {}).items()]
    return lines


def _versus(c: dict | None) -> str:
    """'-1.10 [-2.20, -0.05] points, p=0.061, tie' (a - b, in accuracy points), or 'dense better' / 'better'."""
    if c is None:
        return ""
    verdict = "tie" if c["verdict"] == "tie" else ("better" if c["verdict"] == c["a"] else "dense better")
    return f"{points(c)}, {verdict}"
