"""The deployment comparison: a dense model and its slim model, each run by torch and by ONNX Runtime, in fp32
and int8 (and in torch bf16 where this machine runs bf16 natively), timed side by side in one benchmark run,
each with its accuracy on the held-out test data.

This is the table a user reads to choose what to ship: dense ORT int8 is what most users pick instead of
pruning on CPUs without native bf16, so the slim model has to beat it, not only dense torch fp32.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..export import OnnxClassifier, export
from ..precision import choose
from ..stats import compare, points
from ..train import EvalResult, evaluate
from .latency import benchmark

BASELINE = "dense torch fp32"
ONNX_VARIANTS = (("ORT fp32", None), ("ORT int8", "int8"))


class Bf16Copy(nn.Module):
    """A bf16 copy of a model that the benchmark's fp32 cast leaves in bf16 (the copy is not a registered
    submodule), so bf16 rows are timed in the same run, and under the same load, as the fp32 ones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._inner = [copy.deepcopy(model).to(torch.bfloat16).eval()]
        self.config = model.config

    def forward(self, **inputs):
        return self._inner[0](**inputs)


def onnx_ready() -> str | None:
    """None when onnx and onnxruntime are installed, else what to install."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return f"the deployment comparison needs {' and '.join(missing)}: pip install 'deepcuts-fast[onnx]'"
    return None


def compare_deployment(dense: nn.Module, slim: nn.Module, tokenizer, folder: str | os.PathLike | None = None, *,
                       test: Sequence[dict] | None = None, batch_sizes: Sequence[int] = (32,), seq_len: int = 128,
                       repeats: int = 10, bf16: bool | None = None, log: Callable[[str], None] = print) -> dict:
    """Export the ORT fp32 / int8 files of `dense` and `slim` into `folder` (a temporary folder, removed after,
    when None), time every variant at `batch_sizes` x `seq_len` in one `benchmark` run, and evaluate each on
    `test` (skipped when None), comparing it with dense torch fp32 on the same examples (McNemar and a paired
    bootstrap, `deepcuts_fast.stats.compare`). `bf16` adds torch bf16 rows (default: where this machine runs
    bf16 natively).

    Returns {"rows": [{variant, batch, seq, median_ms, iqr_ms, speedup, accuracy, vs_dense, size_mib}],
    "exports": {variant: export summary}, "benchmark": the benchmark's machine / settings / warnings}."""
    if bf16 is None:
        bf16 = choose("infer", torch.device("cpu"), "auto").name == "bf16"
    with tempfile.TemporaryDirectory(prefix="deepcuts-deploy-") as scratch:
        out = Path(folder) if folder is not None else Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        models: dict[str, nn.Module | Path] = {}
        flops_like: list[nn.Module] = []
        exports: dict[str, dict] = {}
        for name, model in (("dense", dense), ("slim", slim)):
            models[f"{name} torch fp32"] = model
            flops_like.append(model)
            for label, quantize in ONNX_VARIANTS:
                path = out / f"{name}-{label.split()[1]}.onnx"
                result = export(model, path, tokenizer, optimize=True, quantize=quantize)
                log(f"{name} {label}: {result.summary()}")
                models[f"{name} {label}"] = Path(path)
                exports[f"{name} {label}"] = {"size_mib": round(result.size_bytes / 2**20, 3),
                                              "fused_attention": result.fused_attention,
                                              "max_abs_diff": result.max_abs_diff,
                                              "argmax_agreement": result.argmax_agreement}
                flops_like.append(model)
        if bf16:
            models.update({"dense torch bf16": Bf16Copy(dense), "slim torch bf16": Bf16Copy(slim)})
            flops_like += [dense, slim]
        report = benchmark(list(models.values()), batch_sizes=tuple(batch_sizes), seq_lens=(seq_len,), dtype="fp32",
                           names=list(models), repeats=repeats, warmup=2, flops_like=flops_like)
        evals = {name: _evaluate(model, test) for name, model in models.items()} if test is not None else {}
    rows = []
    for name in models:
        result = evals.get(name)
        vs_dense = None if result is None or name == BASELINE else compare(
            result, evals[BASELINE], names=(name, BASELINE)).to_dict()
        for batch in batch_sizes:
            r = report.row(name, batch, seq_len)
            rows.append({"variant": name, "batch": batch, "seq": seq_len, "median_ms": r["median_ms"],
                         "iqr_ms": r["iqr_ms"], "speedup": r["speedup"],
                         "accuracy": None if result is None else result.accuracy, "vs_dense": vs_dense,
                         "size_mib": exports.get(name, {}).get("size_mib")})
    return {"rows": rows, "exports": exports,
            "benchmark": {"machine": report.machine, "settings": report.settings, "warnings": report.warnings}}


def _evaluate(model: nn.Module | Path, test: Sequence[dict]) -> EvalResult:
    """Test metrics of a torch model (bf16 copies in bf16) or an ONNX file under onnxruntime."""
    if isinstance(model, Path):
        return OnnxClassifier(model).evaluate(test)
    if isinstance(model, Bf16Copy):
        return evaluate(model._inner[0], test, dtype=torch.bfloat16)
    return evaluate(model, test)


def deployment_table(result: dict, batch: int | None = None) -> list[str]:
    """Markdown lines: one row per variant (at `batch`, default the largest measured), with its speedup over
    dense torch fp32 and over dense ORT int8, and its accuracy drop from dense torch fp32."""
    rows = result["rows"]
    batch = batch or max(r["batch"] for r in rows)
    rows = [r for r in rows if r["batch"] == batch]
    by_name = {r["variant"]: r for r in rows}
    int8 = by_name.get("dense ORT int8")
    lines = [f"| variant | median ms (batch {batch}, seq {rows[0]['seq']}) | IQR ms | speedup vs dense torch fp32 "
             "| speedup vs dense ORT int8 | test accuracy | vs dense torch fp32 [95% CI], p | file MiB |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        vs_int8 = f"{int8['median_ms'] / r['median_ms']:.2f}x" if int8 else ""
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        size = "" if r["size_mib"] is None else f"{r['size_mib']:.1f}"
        drop = _versus(r.get("vs_dense"))
        lines.append(f"| {r['variant']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {r['speedup']:.2f}x | {vs_int8} "
                     f"| {acc} | {drop} | {size} |")
    return lines


def _versus(c: dict | None) -> str:
    """'-1.10 [-2.20, -0.05] points, p=0.061, tie' (a - b, in accuracy points), or 'dense better' / 'better'."""
    if c is None:
        return ""
    verdict = "tie" if c["verdict"] == "tie" else ("better" if c["verdict"] == c["a"] else "dense better")
    return f"{points(c)}, {verdict}"
