"""`benchmark`: inference latency of one or more models over a grid of batch sizes and sequence lengths.

Every model sees the same seeded token ids with a full attention mask. At each grid point each
model gets its warm-up passes and one untimed pass that measures peak memory; then the timed passes
go round-robin over the models (one pass of each per round), so that load from other processes on a
shared machine hits all models alike instead of whichever happened to run during a busy spell.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError
from ..machine import machine_info
from .report import BenchmarkReport
from .runners import DTYPE_NAMES, OnnxRunner, TorchRunner, max_seq_len

_DTYPE_ALIASES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
# Token ids for every model: 5..99 avoids the usual special ids (BERT pad 0, RoBERTa pad 1, ...)
# and stays inside any real vocabulary, ONNX files included, whose vocabulary size is not at hand.
# Which ids they are does not change the time of a forward pass.
_ID_LOW, _ID_HIGH = 5, 100

ModelLike = nn.Module | str | os.PathLike
Runner = TorchRunner | OnnxRunner


def benchmark(
    models: Sequence[ModelLike],
    batch_sizes: Sequence[int] = (1, 32),
    seq_lens: Sequence[int] = (128,),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    warmup: int = 3,
    repeats: int = 20,
    names: Sequence[str] | None = None,
    threads: int | None = None,
    progress: bool = False,
    min_time: float | None = None,
    flops_like: Sequence[nn.Module | None] | None = None,
    seed: int = 0,
) -> BenchmarkReport:
    """Time `models` (torch modules and/or `.onnx` paths) at every (batch size, sequence length).

    The first model is the baseline: `speedup` is its median latency over each model's median at the
    same (batch, seq) and `flop_ratio` is its theoretical encoder FLOPs over each model's. Torch
    models run as a copy cast to `dtype` (fp32 / bf16 / fp16) on `device` under
    `torch.inference_mode()`; ONNX files run under onnxruntime in the precision they were exported in.
    `threads` sets torch's (and onnxruntime's) intra-op threads for the run; `repeats` timed passes
    per model, more while `min_time` seconds have not passed at a grid point. `flops_like[i]`, when
    given, is a torch model whose FLOPs stand for model i (e.g. the model an ONNX file came from).
    """
    models = list(models)
    batch_sizes, seq_lens = _sizes("batch_sizes", batch_sizes), _sizes("seq_lens", seq_lens)
    torch_device, torch_dtype = _device(device), _dtype(dtype)
    names = _names(models, names)
    flops_like = _flops_like(flops_like, len(models))
    _check_counts(warmup, repeats, threads, min_time)
    _check_models(models, names, max(seq_lens))

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        runners = [_runner(m, torch_device, torch_dtype, flops_like[i]) for i, m in enumerate(models)]
        rows = []
        with torch.inference_mode():
            for seq in seq_lens:
                for batch in batch_sizes:
                    rows += _measure(runners, names, batch, seq, warmup, repeats, min_time, seed, progress)
        machine = _machine(torch_device, runners)
    finally:
        torch.set_num_threads(old_threads)
    settings = {"models": names, "batch_sizes": batch_sizes, "seq_lens": seq_lens, "device": str(torch_device),
                "dtype": DTYPE_NAMES[torch_dtype], "warmup": warmup, "repeats": repeats, "min_time": min_time,
                "threads": rows[0]["threads"], "seed": seed}
    return BenchmarkReport(rows=rows, machine=machine, settings=settings)


def _measure(runners: list[Runner], names: list[str], batch: int, seq: int, warmup: int, repeats: int,
             min_time: float | None, seed: int, progress: bool) -> list[dict]:
    """Rows of one grid point: warm-up, one memory pass, then round-robin timed passes."""
    ids = torch.randint(_ID_LOW, _ID_HIGH, (batch, seq), generator=torch.Generator().manual_seed(seed))
    feeds = [r.inputs(ids) for r in runners]
    for runner, feed in zip(runners, feeds):
        for _ in range(warmup):
            runner.run(feed)
    activations = [runner.peak_mb(feed) for runner, feed in zip(runners, feeds)]
    times: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    while len(times[0]) < repeats or (min_time is not None and time.perf_counter() - start < min_time):
        for runner, feed, samples in zip(runners, feeds, times):
            samples.append(runner.time_ms(feed))

    rows = []
    for runner, name, samples, act in zip(runners, names, times, activations):
        ms = np.asarray(samples)
        median = float(np.median(ms))
        flops = runner.flops(seq)
        rows.append({
            "model": name, "backend": runner.backend, "device": str(runner.device), "dtype": runner.dtype,
            "batch": batch, "seq": seq, "threads": torch.get_num_threads(), "repeats": len(samples),
            "median_ms": median, "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "min_ms": float(ms.min()), "seq_per_s": batch * 1e3 / median,
            "flops": None if flops is None else flops * batch,
            "weights_mb": runner.weights_mb, "activation_mb": act,
            "peak_mem_mb": None if act is None else runner.weights_mb + act,
        })
        if progress:
            print(f"bench {name} batch {batch} seq {seq}: median {median:.3f} ms", file=sys.stderr)
    base = rows[0]
    for row in rows:
        row["speedup"] = base["median_ms"] / row["median_ms"]
        row["flop_ratio"] = base["flops"] / row["flops"] if base["flops"] and row["flops"] else None
    return rows


def _runner(model: ModelLike, device: torch.device, dtype: torch.dtype, flops_model: nn.Module | None) -> Runner:
    if isinstance(model, nn.Module):
        return TorchRunner(model, device, dtype, flops_model)
    return OnnxRunner(model, device, torch.get_num_threads(), flops_model)


def _machine(device: torch.device, runners: list[Runner]) -> dict:
    import transformers

    info = machine_info()
    info["transformers"] = transformers.__version__
    info["device"] = str(device)
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    ort_versions = {r.onnxruntime_version for r in runners if isinstance(r, OnnxRunner)}
    if ort_versions:
        info["onnxruntime"] = ort_versions.pop()
    return info


# ---------------------------------------------------------------------------------------------
# argument checks: every problem is reported before any model is copied or run


def _sizes(what: str, values: Sequence[int]) -> list[int]:
    values = list(values) if not isinstance(values, (int, str)) else [values]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise DeepCutsError(f"{what} must be a non-empty list of positive integers, got {values!r}")
    return [int(v) for v in values]


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeepCutsError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from e
    if dev.type not in ("cpu", "cuda"):
        raise DeepCutsError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeepCutsError("device 'cuda' requested but torch sees no CUDA GPU here; use device 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise DeepCutsError(f"{dev} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    return dev


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = _DTYPE_ALIASES.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if resolved not in DTYPE_NAMES:
        raise DeepCutsError(f"unsupported dtype {dtype!r}; use fp32, bf16 or fp16")
    return resolved


def _names(models: list[ModelLike], names: Sequence[str] | None) -> list[str]:
    if not models:
        raise DeepCutsError("benchmark needs at least one model (the first one is the baseline)")
    if names is None:
        names = [Path(m).name if isinstance(m, (str, os.PathLike)) else f"model{i}" for i, m in enumerate(models)]
    names = [str(n) for n in names]
    if len(names) != len(models):
        raise DeepCutsError(f"got {len(names)} names for {len(models)} models; give one name per model")
    if len(set(names)) != len(names):
        raise DeepCutsError(f"model names must be unique, got {names}; pass names=[...]")
    return names


def _flops_like(flops_like: Sequence[nn.Module | None] | None, n: int) -> list[nn.Module | None]:
    if flops_like is None:
        return [None] * n
    if len(flops_like) != n:
        raise DeepCutsError(f"flops_like has {len(flops_like)} entries for {n} models; give one (or None) per model")
    return list(flops_like)


def _check_counts(warmup: int, repeats: int, threads: int | None, min_time: float | None) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise DeepCutsError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise DeepCutsError(f"repeats must be an integer >= 1, got {repeats!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise DeepCutsError(f"threads must be None or an integer >= 1, got {threads!r}")
    if min_time is not None and not min_time > 0:
        raise DeepCutsError(f"min_time must be None or a number of seconds > 0, got {min_time!r}")


def _check_models(models: list[ModelLike], names: list[str], longest: int) -> None:
    for model, name in zip(models, names):
        if isinstance(model, nn.Module):
            limit = max_seq_len(model)
            if limit is not None and longest > limit:
                raise DeepCutsError(f"sequence length {longest} is longer than {name} allows ({limit} positions); "
                                    f"use seq_lens <= {limit}")
        elif isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if path.suffix != ".onnx":
                raise DeepCutsError(f"{path} is not an .onnx file; pass torch models as nn.Module "
                                    "(load folders with dc.from_pretrained / dc.load_model first)")
            if not path.is_file():
                raise DeepCutsError(f"ONNX file {path} does not exist")
        else:
            raise DeepCutsError(f"cannot benchmark a {type(model).__name__}; pass nn.Module models or .onnx paths")
