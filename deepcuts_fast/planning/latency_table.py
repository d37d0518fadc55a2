"""Per-layer latency table: the time of one encoder layer's attention block with k heads and of its FFN with
n neurons, measured once per machine, precision and shape, so that a speedup budget is spent in time, not FLOPs.

FLOPs map to time differently on each device (small GEMMs, kernel launches, LayerNorms and softmax), so
`dc.plan(..., speedup=s)` prices every unit by its measured marginal time. How it is measured: a copy of the
model with its encoder layers taken out (the shell: embeddings, pooler, classifier) runs with one copy of an
encoder layer sliced by `dc.prune`'s own code (so a layer without heads runs the slim model's empty attention) to
k heads and no FFN neurons (k = 0..H), or to no heads and n neurons (n on a grid of every 1/16 of the width,
interpolated in between), and with no layer at all (time E; an encoder that cannot run without a layer, as
DeBERTa's, runs with two layers of no heads and no neurons instead, and E is one empty layer less the difference).
The probes run round-robin in a shuffled order on the seeded token ids `dc.benchmark` feeds (full attention mask),
after a warm-up; each time is the median of the faster half of its rounds (the 25th percentile: other processes on
a shared machine only ever add time, and a burst of them must not price one probe higher than the rest), and a
monotone fit over k and over n keeps the noise left from making a unit look negative in cost.

A model's predicted time is E + (layers x C) + the sum over layers of attention(k_i) + ffn(n_i), where C is
a layer with no heads and no neurons (LayerNorms, residual adds, output biases) and attention(0) = ffn(0) = 0:
a layer left without heads drops its whole attention block, as the slim model does. The table is cached under
`cache_dir()/latency`, keyed by the machine, the model's shapes, dtype, torch threads and library versions.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..arch import base_model, encoder_layers
from ..cache import cache_dir
from ..errors import DeepCutsError
from ..families import family
from ..families.narrowing import shrink
from ..hashing import cache_key
from ..machine import cpu_isa, cpu_model
from ..models import resolve_device
from ..precision import Precision, choose

FORMAT = "deepcuts-latency-table/1"
FFN_STEPS = 16  # the FFN is measured at every 1/FFN_STEPS of its width
WARMUP = 2  # untimed passes of every probe before the timed rounds
ROUNDS = 9  # timed rounds at least (one pass of every probe each) ...
MIN_TIME = 5.0  # ... and more until this many seconds have passed ...
MAX_ROUNDS = 200  # ... but no more than this (a GPU runs thousands of passes in MIN_TIME)
QUANTILE = 25  # percentile of a probe's rounds taken as its time: the median of the faster half
ID_LOW, ID_HIGH = 5, 100  # token ids as dc.benchmark draws them (no special ids, inside any vocabulary)


@dataclass(frozen=True)
class LatencyTable:
    """Measured milliseconds of one forward pass at (batch_size, seq_len): the fixed part and, per encoder
    layer, its base time and the time its attention heads and FFN neurons add."""

    key: str  # the cache key: machine, shapes, dtype, threads, versions
    fixed_ms: float  # once per forward: embeddings, pooler, classifier
    layer_ms: float  # once per encoder layer with no heads and no neurons: LayerNorms, residuals, biases
    heads_ms: tuple[float, ...]  # attention time with k heads, k = 0..H (heads_ms[0] == 0)
    ffn_widths: tuple[int, ...]  # the FFN widths measured, ascending from 0
    ffn_ms: tuple[float, ...]  # FFN time at those widths (ffn_ms[0] == 0)
    settings: dict  # what was measured and where: batch_size, seq_len, device, dtype, threads, machine

    def __post_init__(self) -> None:
        _check_table(self)

    def attention_ms(self, heads: int) -> float:
        """Time the attention block of one layer takes with `heads` heads (0 without any)."""
        if not 0 <= heads < len(self.heads_ms):
            raise DeepCutsError(f"the latency table covers 0..{len(self.heads_ms) - 1} heads, not {heads}; "
                                "plan with the model the table was measured for")
        return self.heads_ms[heads]

    def ffn_time_ms(self, neurons: int | np.ndarray) -> float | np.ndarray:
        """Time the FFN of one layer takes with `neurons` neurons, interpolated between the measured widths."""
        if np.any(np.asarray(neurons) < 0) or np.any(np.asarray(neurons) > self.ffn_widths[-1]):
            raise DeepCutsError(f"the latency table covers FFN widths 0..{self.ffn_widths[-1]}, not {neurons}; "
                                "plan with the model the table was measured for")
        return np.interp(neurons, self.ffn_widths, self.ffn_ms)

    def model_ms(self, heads: Sequence[int], neurons: Sequence[int]) -> float:
        """Predicted time of a model whose layers keep `heads[i]` heads and `neurons[i]` FFN neurons."""
        layers = sum(self.layer_ms + self.attention_ms(h) + float(self.ffn_time_ms(n)) for h, n in zip(heads, neurons))
        return self.fixed_ms + layers

    def to_dict(self) -> dict:
        """JSON-serialisable form (the cache file)."""
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        """Rebuild a table written by `to_dict`, checking it (a cache file may be damaged)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DeepCutsError(f"not a latency table (format {d.get('format') if isinstance(d, dict) else None!r})")
        fields = {k: d[k] for k in ("key", "fixed_ms", "layer_ms", "settings")}
        return cls(**fields, heads_ms=tuple(d["heads_ms"]), ffn_widths=tuple(d["ffn_widths"]),
                   ffn_ms=tuple(d["ffn_ms"]))


def _check_table(t: LatencyTable) -> None:
    """Refuse a table that cannot price units: wrong lengths, negative or non-finite times, unsorted widths."""
    times = [t.fixed_ms, t.layer_ms, *t.heads_ms, *t.ffn_ms]
    widths = list(t.ffn_widths)
    if (not t.heads_ms or len(widths) != len(t.ffn_ms) or not widths or widths[0] != 0
            or any(b <= a for a, b in zip(widths, widths[1:])) or t.heads_ms[0] != 0 or t.ffn_ms[0] != 0
            or not all(isinstance(x, (int, float)) and np.isfinite(x) and x >= 0 for x in times)):
        raise DeepCutsError("malformed latency table: it needs times >= 0 for 0..H heads and for ascending FFN widths "
                            "from 0, zero at 0 heads and 0 neurons; delete the cached file to measure it again")


def table_for(model: nn.Module, seq_len: int, batch_size: int, device: str | torch.device = "cpu",
              dtype: str | torch.dtype | None = "auto") -> LatencyTable:
    """The latency table of `model`'s layer shapes on `device` in `dtype` (resolved by
    `precision.choose("infer", ...)`): read from the per-machine cache, else measured once and cached."""
    torch_device = resolve_device(device)
    precision = choose("infer", torch_device, dtype)
    shapes = model_shapes(model)
    key = table_key(shapes, seq_len, batch_size, torch_device, precision)
    path = cache_dir() / "latency" / f"layer-table-{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, DeepCutsError):
        return LatencyTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
    table = measure(model, shapes, seq_len, batch_size, torch_device, precision, key)
    from ..outputs import write_text

    with contextlib.suppress(OSError, DeepCutsError):  # a read-only cache only costs a re-measurement
        write_text(path, json.dumps(table.to_dict(), indent=1), overwrite=True)
    return table


def model_shapes(model: nn.Module) -> dict:
    """What decides the table: the model class and attention code, layer widths, FFN activation, head sizes, the
    family's relative-position attention."""
    layers = encoder_layers(model)
    config = model.config
    heads, ffn = max(layer.num_heads for layer in layers), max(layer.ffn_width for layer in layers)
    return {"model": type(model).__name__, "model_type": config.model_type,
            "attention": getattr(config, "_attn_implementation", None) or "eager",
            "hidden": layers[0].linears["query"].in_features, "head_dim": layers[0].head_dim, "heads": heads,
            "ffn": ffn, "ffn_grid": ffn_grid(ffn, [layer.ffn_width for layer in layers]),
            "activation": str(getattr(config, "hidden_act", getattr(config, "activation", None))),
            "vocab": getattr(config, "vocab_size", None), "labels": getattr(config, "num_labels", None),
            "relative": list(family(model).relative(config))}


def ffn_grid(width: int, widths: Sequence[int] = ()) -> list[int]:
    """FFN widths to measure: every 1/FFN_STEPS of `width`, and each layer's own width (exact, not interpolated)."""
    return sorted({round(j * width / FFN_STEPS) for j in range(FFN_STEPS + 1)} | set(widths))


def table_key(shapes: dict, seq_len: int, batch_size: int, device: torch.device, precision: Precision) -> str:
    """The cache key: machine description, shapes, dtype, torch threads, torch and transformers versions."""
    import transformers

    return cache_key(format=FORMAT, machine=machine_description(device), shapes=shapes, seq_len=seq_len,
                     batch_size=batch_size, dtype=precision.name, threads=torch.get_num_threads(),
                     torch=torch.__version__, transformers=transformers.__version__)


def machine_description(device: torch.device) -> dict:
    """The hardware the table holds for: the CPU (model, ISA, cores) and, on a GPU, its name and capability."""
    info = {"device": device.type, "cpu": cpu_model(), "isa": cpu_isa(), "logical_cpus": os.cpu_count()}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device)),
                 "cuda": torch.version.cuda}
    return info


def measure(model: nn.Module, shapes: dict, seq_len: int, batch_size: int, device: torch.device,
            precision: Precision, key: str) -> LatencyTable:
    """Time the shell and the one-layer probes (see the module docstring) and fold them into a table."""
    heads, grid = list(range(shapes["heads"] + 1)), shapes["ffn_grid"]
    points = [(k, 0) for k in heads] + [(0, n) for n in grid if n]
    shell, install = _shell(model, device, precision.dtype)
    single = [[_layer(model, shell, install, k, n, device, precision.dtype)] for k, n in points]
    inputs = _inputs(model, batch_size, seq_len, device)
    empty = single[points.index((0, 0))][0]
    # the shell alone, or (an encoder that cannot run without a layer) with two empty layers
    bare = [] if _runs_bare(shell, install, inputs) else [copy.deepcopy(empty), copy.deepcopy(empty)]
    probes = [bare, *single]
    with torch.inference_mode():
        times = time_probes(lambda i: install(probes[i]), lambda: shell(**inputs), len(probes), device)
    first, by_point = times[0], dict(zip(points, times[1:]))
    one_empty = by_point[(0, 0)]
    if bare:  # E = one empty layer less the cost of one; noise must not make E negative
        layer_ms = min(max(0.0, first - one_empty), one_empty)
        fixed = one_empty - layer_ms
    else:
        fixed, layer_ms = first, max(0.0, one_empty - first)
    attention = _monotone([by_point[(k, 0)] for k in heads])
    ffn = _monotone([by_point[(0, n)] if n else by_point[(0, 0)] for n in grid])
    settings = {"batch_size": batch_size, "seq_len": seq_len, "device": str(device), "dtype": precision.name,
                "dtype_reason": precision.reason, "threads": torch.get_num_threads(),
                "machine": machine_description(device), "shapes": shapes,
                "fixed_probe": "two empty layers" if bare else "no layer", "fixed_probe_raw_ms": first,
                "raw_ms": {f"{k},{n}": t for (k, n), t in by_point.items()}}
    return LatencyTable(key=key, fixed_ms=fixed, layer_ms=layer_ms,
                        heads_ms=tuple(a - attention[0] for a in attention), ffn_widths=tuple(grid),
                        ffn_ms=tuple(f - ffn[0] for f in ffn), settings=settings)


def _shell(model: nn.Module, device: torch.device, dtype: torch.dtype):
    """(a copy of `model` without its encoder layers, cast and moved, in eval mode; a function that installs the
    given layers as its encoder layers). The model's layers are never copied with it."""
    spec = family(model)
    layers = base_model(model).get_submodule(spec.layers)
    shell = copy.deepcopy(model, memo={id(layers): nn.ModuleList()}).to(device=device, dtype=dtype).eval()
    parent, _, name = spec.layers.rpartition(".")
    holder = base_model(shell).get_submodule(parent) if parent else base_model(shell)

    def install(layers: Sequence[nn.Module]) -> None:
        setattr(holder, name, nn.ModuleList(layers))

    return shell, install


def _runs_bare(shell: nn.Module, install, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether the shell runs with no encoder layer at all (DeBERTa's encoder, for one, returns nothing then)."""
    install([])
    try:
        with torch.inference_mode():
            shell(**inputs)
    except Exception:  # noqa: BLE001 - any failure means: time it with layers instead
        return False
    return True


def _layer(model: nn.Module, shell: nn.Module, install, heads: int, neurons: int, device: torch.device,
           dtype: torch.dtype) -> nn.Module:
    """A copy of the model's widest encoder layer sliced as `dc.prune` slices it, to `heads` heads and `neurons`
    FFN neurons, cast and moved to `device`."""
    layers = encoder_layers(model)
    widest = max(layers, key=lambda layer: (layer.num_heads if neurons == 0 else layer.ffn_width))
    module = copy.deepcopy(base_model(model).get_submodule(family(model).layers)[widest.index])
    install([module])
    shrink(shell, [list(range(heads))], [list(range(neurons))])
    return module.to(device=device, dtype=dtype).eval()


def _inputs(model: nn.Module, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The token ids and full attention mask dc.benchmark feeds (seed 0)."""
    ids = torch.randint(ID_LOW, ID_HIGH, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and vocab < ID_HIGH:
        ids = ids.remainder(vocab)
    ids = ids.to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def time_probes(install, run, count: int, device: torch.device) -> list[float]:
    """Milliseconds of `run()` with each of probes 0..count-1 installed (`install(i)`), the QUANTILE of its passes:
    WARMUP passes of each, then rounds of one pass each in a shuffled order, ROUNDS at least and until MIN_TIME has
    passed, so that load from other processes spreads over all probes instead of hitting whichever ran during a
    busy spell."""
    for i in range(count):
        install(i)
        for _ in range(WARMUP):
            run()
    times: list[list[float]] = [[] for _ in range(count)]
    order = torch.Generator().manual_seed(0)
    start, rounds = time.perf_counter(), 0
    while rounds < ROUNDS or (time.perf_counter() - start < MIN_TIME and rounds < MAX_ROUNDS):
        for i in torch.randperm(count, generator=order).tolist():
            install(i)
            times[i].append(_timed_ms(run, device))
        rounds += 1
    return [float(np.percentile(t, QUANTILE)) for t in times]


def _timed_ms(run, device: torch.device) -> float:
    """Milliseconds of one `run()`, timed as dc.benchmark times a pass (CUDA events on a GPU)."""
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e3


def _monotone(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators), so that
    measurement noise never makes a unit look free or negative in cost."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, n = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * n) / (blocks[-1][1] + n), blocks[-1][1] + n]
    return [mean for mean, n in blocks for _ in range(int(n))]


def describe(table: LatencyTable) -> str:
    """One line for logs: where the table was measured and its main numbers."""
    s = table.settings
    return (f"latency table {table.key}: batch {s.get('batch_size')} seq {s.get('seq_len')} on {s.get('device')} "
            f"{s.get('dtype')}; fixed {table.fixed_ms:.3f} ms, per layer {table.layer_ms:.3f} ms + attention up to "
            f"{table.heads_ms[-1]:.3f} ms + FFN up to {table.ffn_ms[-1]:.3f} ms")

