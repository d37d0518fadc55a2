"""`benchmark`: inference latency of one or more models over a grid of batch sizes and sequence lengths.

Every model sees the same seeded token ids with a full attention mask. At each grid point each
model gets one untimed pass and one that measures peak memory; then warm-up and timed passes go
round-robin over the models (one pass of each per round), so that load from other processes on a
shared machine hits all models alike instead of whichever happened to run during a busy spell.

Warm-up lasts until the latency is steady, not a fixed count: at least `warmup` rounds, then on until
every model's last `STEADY_WINDOW` warm-up passes are within `STEADY_SPREAD` of each other (the allocator
has its pages, the runtime its kernels and caches), bounded by `WARMUP_MAX_ROUNDS` rounds and
`WARMUP_MAX_S` seconds; a model still unsteady at the bound is warned about.

How many timed passes: like torch.utils.benchmark's `blocked_autorange`, rounds go on until every
model has at least `repeats` samples AND `min_time` seconds have passed at the grid point. A grid
point therefore takes max(`repeats` rounds, `min_time`) plus at most one round; there is no separate
upper cap, because the sample floor wins over any time limit and the time floor ends by itself.

What is honest about the numbers: the thread count is set explicitly for the run and printed, and the
machine record names the CPU, its ISA and the malloc that ran (`machine.allocator`: glibc's, or an
LD_PRELOADed tcmalloc / jemalloc, which alone moved dense torch fp32 by -17% / +8% on a Sapphire Rapids Xeon); every
row has its median with the interquartile range (IQR), p99 only from 100 samples or more. Warnings, one
line each: a row whose IQR exceeds 10% of the median, a load average above the CPU count, a warm-up
that never settled, timed passes that drift (the last quarter of the rounds' median against the first
quarter's, by more than 10% and more than the spread inside the quarters), and passes that page-fault
(minor faults counted around every timed pass with `resource.getrusage`: an allocator handing memory
back to the OS and faulting it in again each pass).

Kept as one module (about 400 lines) because the sampler, the warm-up rule and the warnings are one timing
protocol that `deploy` and the deployment tables reuse as it is.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError
from ..machine import describe_cpu, machine_info
from ..precision import choose
from ..models import resolve_device
from .report import BenchmarkReport
from .runners import OnnxRunner, SessionRunner, TorchRunner, max_seq_len

try:
    import resource
except ImportError:  # not Unix: no fault counts
    resource = None

# Token ids for every model: 5..99 avoids the usual special ids (BERT pad 0, RoBERTa pad 1, ...)
# and stays inside any real vocabulary, ONNX files included, whose vocabulary size is not at hand.
# Which ids they are does not change the time of a forward pass.
_ID_LOW, _ID_HIGH = 5, 100
NOISY_SPREAD = 0.10  # a row whose IQR / median is above this is flagged noisy
LOAD_SLACK = 0.5  # load average allowed above the CPU count (the run's own threads count towards it)
P99_MIN_SAMPLES = 100  # below this, the 99th percentile is one of the few slowest samples, not a percentile
STEADY_WINDOW = 3  # warm-up is steady when this many last passes of every model ...
STEADY_SPREAD = 0.05  # ... are within this fraction of each other (max / min - 1)
WARMUP_MAX_ROUNDS = 30  # warm-up gives up on steadiness after this many rounds (or `warmup`, if more) ...
WARMUP_MAX_S = 20.0  # ... or after this many seconds at a grid point, whichever comes first
DRIFT_LIMIT = 0.10  # the last quarter of timed passes this much slower or faster than the first is drift
DRIFT_MIN_SAMPLES = 8  # drift needs two passes per quarter at least
FAULT_PAGES_PER_PASS = 256  # more minor page faults per timed pass than this (1 MiB of 4 KiB pages) is re-faulting

ModelLike = nn.Module | str | os.PathLike | SessionRunner
Runner = TorchRunner | OnnxRunner | SessionRunner


def benchmark(
    models: Sequence[ModelLike],
    batch_sizes: Sequence[int] = (1, 32),
    seq_lens: Sequence[int] = (128,),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = "auto",
    warmup: int = 3,
    repeats: int = 20,
    names: Sequence[str] | None = None,
    threads: int | None = None,
    progress: bool = False,
    min_time: float | None = 1.0,
    flops_like: Sequence[nn.Module | None] | None = None,
    seed: int = 0,
) -> BenchmarkReport:
    """Time `models` (torch modules, `.onnx` paths and/or `SessionRunner`s, runtime sessions such as the
    deployment comparison's) at every (batch size, sequence length).

    The first model is the baseline: `speedup` is its median latency over each model's median at the
    same (batch, seq) and `flop_ratio` is its theoretical encoder FLOPs over each model's. Torch
    models run as a copy cast to `dtype` on `device` under `torch.inference_mode()`: fp32 / bf16 /
    fp16, or "auto", the fastest dtype this device runs natively (`precision.choose`; the choice and
    its reason are in `settings`). ONNX files run under onnxruntime in the precision they were
    exported in, sessions as loaded. `threads` (default: torch's current count) is set as torch's and
    onnxruntime's intra-op thread count for the run and restored after. Warm-up is at least `warmup`
    rounds and on until steady (module docstring; 0: none). Each model gets at least `repeats` timed
    passes per grid point, more until `min_time` seconds have passed there (None or 0: exactly
    `repeats` rounds). `flops_like[i]`, when given, is a torch model whose FLOPs stand for model i
    (e.g. the model an ONNX file came from).
    """
    models = list(models)
    batch_sizes, seq_lens = _sizes("batch_sizes", batch_sizes), _sizes("seq_lens", seq_lens)
    torch_device = resolve_device(device)
    names = _names(models, names)
    flops_like = _flops_like(flops_like, len(models))
    _check_counts(warmup, repeats, threads, min_time)
    _check_models(models, names, max(seq_lens), torch_device)
    precision = choose("infer", torch_device, dtype)  # 'auto' -> the fastest native dtype, with why

    old_threads = torch.get_num_threads()
    threads = threads or old_threads
    torch.set_num_threads(threads)
    try:
        runners = [_runner(m, torch_device, precision.dtype, flops_like[i]) for i, m in enumerate(models)]
        load_before = load_average()
        rows = []
        with torch.inference_mode():
            for seq in seq_lens:
                for batch in batch_sizes:
                    rows += _measure(runners, names, batch, seq, warmup, repeats, min_time, seed, progress)
        load_after = load_average()
        machine = _machine(torch_device, runners)
    finally:
        torch.set_num_threads(old_threads)
    machine |= {"load_1min_before": load_before, "load_1min_after": load_after}
    settings = {"models": names, "batch_sizes": batch_sizes, "seq_lens": seq_lens, "device": str(torch_device),
                "dtype": precision.name, "dtype_reason": precision.reason, "warmup": warmup,
                "warmup_rule": steady_rule(warmup), "repeats": repeats, "min_time": min_time, "threads": threads,
                "seed": seed}
    warnings = (_noise_warnings(rows) + timing_warnings(rows, machine["allocator"])
                + load_warnings(load_before, load_after, os.cpu_count()))
    return BenchmarkReport(rows=rows, machine=machine, settings=settings, warnings=warnings)


def _measure(runners: list[Runner], names: list[str], batch: int, seq: int, warmup: int, repeats: int,
             min_time: float | None, seed: int, progress: bool) -> list[dict]:
    """Rows of one grid point: an untimed pass (one-time work of the shape stays out of the memory peak) and a
    memory pass per model, then round-robin warm-up until steady, then round-robin timed passes."""
    ids = torch.randint(_ID_LOW, _ID_HIGH, (batch, seq), generator=torch.Generator().manual_seed(seed))
    feeds = [r.inputs(ids) for r in runners]
    for runner, feed in zip(runners, feeds):
        if warmup:
            runner.run(feed)
    activations = [runner.peak_mb(feed) for runner, feed in zip(runners, feeds)]  # may trim the heap: warm after
    warm = warm_up([_pass(runner, feed) for runner, feed in zip(runners, feeds)], warmup)
    times, faults = _rounds(runners, feeds, repeats, min_time)

    rows = []
    for runner, name, samples, act, warm_times, fault_count in zip(runners, names, times, activations, warm, faults):
        stats = sample_stats(samples)
        flops = runner.flops(seq)
        rows.append({
            "model": name, "backend": runner.backend, "device": str(runner.device), "dtype": runner.dtype,
            "batch": batch, "seq": seq, "threads": torch.get_num_threads(), "repeats": len(samples), **stats,
            "noisy": stats["iqr_ms"] > NOISY_SPREAD * stats["median_ms"],
            "warmup_passes": len(warm_times), "warmup_steady": steady(warm_times) if warmup else None,
            "warmup_spread": spread(warm_times[-STEADY_WINDOW:]) if warm_times else None, "drift": drift(samples),
            "drifted": drifted(samples),
            "minor_faults_per_pass": None if fault_count is None else fault_count / len(samples),
            "seq_per_s": batch * 1e3 / stats["median_ms"], "flops": None if flops is None else flops * batch,
            "weights_mb": runner.weights_mb, "activation_mb": act,
            "peak_mem_mb": None if act is None else runner.weights_mb + act,
        })
        if progress:
            print(f"bench {name} batch {batch} seq {seq}: median {stats['median_ms']:.3f} ms, "
                  f"IQR {stats['iqr_ms']:.3f} ms, {len(samples)} runs", file=sys.stderr)
    base = rows[0]
    for row in rows:
        row["speedup"] = base["median_ms"] / row["median_ms"]
        row["flop_ratio"] = base["flops"] / row["flops"] if base["flops"] and row["flops"] else None
    return rows


def _pass(runner: Runner, feed) -> Callable[[], float]:
    return lambda: runner.time_ms(feed)


def spread(times: Sequence[float]) -> float:
    """max / min - 1 of some pass times (0 for one pass)."""
    return max(times) / min(times) - 1


def steady(times: Sequence[float], window: int = STEADY_WINDOW, tolerance: float = STEADY_SPREAD) -> bool:
    """Whether the last `window` of `times` exist and are within `tolerance` of each other (max / min - 1)."""
    return len(times) >= window and spread(times[-window:]) <= tolerance


def steady_rule(warmup: int) -> str:
    """The warm-up rule of a run, in words, for its settings and headers."""
    if not warmup:
        return "no warm-up"
    return (f"at least {warmup} rounds, then until the last {STEADY_WINDOW} passes of every model are within "
            f"{STEADY_SPREAD:.0%} (at most {max(warmup, WARMUP_MAX_ROUNDS)} rounds or {WARMUP_MAX_S:g} s)")


def warm_up(passes: Sequence[Callable[[], float]], minimum: int) -> list[list[float]]:
    """Warm-up rounds, one pass of each model (`passes[i]()` runs model i and returns its milliseconds) per round:
    at least `minimum` rounds, then on until every model is `steady`, at most `max(minimum, WARMUP_MAX_ROUNDS)`
    rounds, and no new round after `WARMUP_MAX_S` seconds; each model's warm-up times. `minimum` 0: no warm-up."""
    times: list[list[float]] = [[] for _ in passes]
    if not minimum:
        return times
    start = time.perf_counter()
    for done in range(1, max(minimum, WARMUP_MAX_ROUNDS) + 1):
        for run, samples in zip(passes, times):
            samples.append(run())
        if done >= minimum and (all(steady(t) for t in times) or time.perf_counter() - start > WARMUP_MAX_S):
            break
    return times


def _quarters(samples: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The first and the last quarter of timed passes (in round order); None under `DRIFT_MIN_SAMPLES` passes."""
    quarter = len(samples) // 4
    if len(samples) < DRIFT_MIN_SAMPLES:
        return None
    return np.asarray(samples[:quarter]), np.asarray(samples[-quarter:])


def drift(samples: Sequence[float]) -> float | None:
    """The median of the last quarter of timed passes over the first quarter's, minus 1 (None under 8 passes)."""
    q = _quarters(samples)
    return None if q is None else float(np.median(q[1]) / np.median(q[0]) - 1)


def drifted(samples: Sequence[float]) -> bool:
    """Whether the last quarter's median moved from the first quarter's by more than `DRIFT_LIMIT` of it and by
    more than the IQR inside either quarter (so a series alternating between two stable times is no drift)."""
    q = _quarters(samples)
    if q is None:
        return False
    first, last = (float(np.median(x)) for x in q)
    noise = max(float(np.subtract(*np.percentile(x, [75, 25]))) for x in q)
    return abs(last - first) > max(DRIFT_LIMIT * first, noise)


def _minor_faults() -> int | None:
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rounds(runners: list[Runner], feeds: list, repeats: int,
            min_time: float | None) -> tuple[list[list[float]], list[int | None]]:
    """Timed passes in rounds (one per model each) until every model has `repeats` of them and `min_time`
    seconds have passed: the milliseconds of each model's passes, and the minor page faults of the process
    during each model's passes (counted outside the timed region; None where the OS does not count them)."""
    times: list[list[float]] = [[] for _ in runners]
    faults: list[int | None] = [0 if resource is not None else None for _ in runners]
    start = time.perf_counter()
    while len(times[0]) < repeats or time.perf_counter() - start < (min_time or 0):
        for i, (runner, feed, samples) in enumerate(zip(runners, feeds, times)):
            before = _minor_faults()
            samples.append(runner.time_ms(feed))
            if before is not None:
                faults[i] += _minor_faults() - before
    return times, faults


def _sample(runners: list, feeds: list, repeats: int, min_time: float | None) -> list[list[float]]:
    """`_rounds`' pass times alone (what `deploy` times its variants with)."""
    return _rounds(runners, feeds, repeats, min_time)[0]


def sample_stats(samples: list[float]) -> dict[str, float | None]:
    """Median, quartiles, IQR, p90, min, and p99 where there are enough samples for it (keys in ms; the
    values are in the unit of `samples`)."""
    ms = np.asarray(samples)
    q1, median, q3, p90 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90]))
    p99 = float(np.percentile(ms, 99)) if ms.size >= P99_MIN_SAMPLES else None
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "min_ms": float(ms.min()),
            "p90_ms": p90, "p99_ms": p99}


def _noise_warnings(rows: list[dict]) -> list[str]:
    return [noise_warning(f"{r['model']} batch {r['batch']} seq {r['seq']}", r["median_ms"], r["iqr_ms"])
            for r in rows if r["noisy"]]


def timing_warnings(rows: list[dict], allocator: str) -> list[str]:
    """One line per grid point whose warm-up never settled (naming its unsteady rows), and one per row whose timed
    passes `drifted` or page-faulted more than `FAULT_PAGES_PER_PASS` times each (naming `allocator`)."""
    page_mib = (resource.getpagesize() if resource is not None else 4096) / 2**20
    out = []
    for point in dict.fromkeys((r["batch"], r["seq"]) for r in rows):
        unsteady = [r for r in rows if (r["batch"], r["seq"]) == point and r["warmup_steady"] is False]
        if unsteady:
            out.append(f"unsteady warm-up at batch {point[0]} seq {point[1]}: after {unsteady[0]['warmup_passes']} "
                       f"rounds the last {STEADY_WINDOW} passes still differ by more than {STEADY_SPREAD:.0%} for "
                       + ", ".join(f"{r['model']} ({r['warmup_spread']:.0%})" for r in unsteady))
    for r in rows:
        what = f"{r['model']} batch {r['batch']} seq {r['seq']}"
        if r["drifted"]:
            out.append(f"drift: {what}: the last quarter of timed rounds is {r['drift']:+.0%} against the first")
        faults = r["minor_faults_per_pass"]
        if faults is not None and faults > FAULT_PAGES_PER_PASS:
            out.append(f"page faults: {what}: {faults:.0f} minor faults per timed pass ({faults * page_mib:.1f} MiB "
                       f"faulted in again each pass under {allocator}); the timings include it")
    return out


def noise_warning(what: str, median: float, iqr: float) -> str:
    """The warning for a measurement whose IQR is more than `NOISY_SPREAD` of its median."""
    return f"noisy: {what} IQR/median {iqr / median:.0%}"


def load_warnings(before: float | None, after: float | None, cpus: int | None) -> list[str]:
    """A warning when the 1-minute load average before or after the run exceeded the logical CPU count by
    more than half a CPU: this run's own threads already count up to the CPU count, so anything beyond
    means other processes were taking turns with it."""
    loads = [x for x in (before, after) if x is not None]
    if not loads or not cpus or max(loads) <= cpus + LOAD_SLACK:
        return []
    return [f"load average {max(loads):.1f} > {cpus} CPUs: other processes were running; timings are unreliable"]


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _runner(model: ModelLike, device: torch.device, dtype: torch.dtype, flops_model: nn.Module | None) -> Runner:
    if isinstance(model, SessionRunner):
        return model
    if isinstance(model, nn.Module):
        return TorchRunner(model, device, dtype, flops_model)
    return OnnxRunner(model, device, torch.get_num_threads(), flops_model)


def _machine(device: torch.device, runners: list[Runner]) -> dict:
    """`machine_info()` (CPU, ISA, threads, allocator, versions) plus the device, a one-line `description` for
    captions (CPU model, ISA and threads, or the GPU's name) and the onnxruntime version; called while the
    run's threads are set."""
    import transformers

    info = machine_info()
    info["transformers"] = transformers.__version__
    info["device"] = str(device)
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["description"] = f"{info['device_name']} ({device}), {info['threads']} CPU threads"
    else:
        info["description"] = describe_cpu()
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
    if min_time is not None and (isinstance(min_time, bool) or not isinstance(min_time, (int, float))
                                 or not min_time >= 0):
        raise DeepCutsError(f"min_time must be None or a number of seconds >= 0, got {min_time!r}")


def _check_models(models: list[ModelLike], names: list[str], longest: int, device: torch.device) -> None:
    for model, name in zip(models, names):
        if isinstance(model, SessionRunner):
            if device.type != "cpu":
                raise DeepCutsError(f"{name} is a runtime session, which runs on the CPU; benchmark it with "
                                    "device='cpu'")
        elif isinstance(model, nn.Module):
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
            raise DeepCutsError(f"cannot benchmark a {type(model).__name__}; pass nn.Module models, .onnx paths or "
                                "SessionRunners")
