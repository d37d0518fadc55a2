"""`BenchmarkReport`: the rows of a latency benchmark as a markdown table, JSON, CSV and a plot.

Every file is written atomically (temporary sibling, then rename).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DeepCutsError
from ..outputs import write_file, write_text

_COLUMNS = ("model", "batch", "seq", "dtype", "median ms", "IQR ms", "p90 ms", "p99 ms", "runs", "seq/s", "speedup",
            "FLOP ratio", "peak mem MB")


@dataclass
class BenchmarkReport:
    """Benchmark rows, one per (model, batch, seq), plus where and how they were measured.

    Row keys: model, backend, device, dtype, batch, seq, threads, repeats (timed samples), median_ms,
    q1_ms, q3_ms, iqr_ms (q3 - q1), min_ms, p90_ms, p99_ms (None under 100 samples), noisy (IQR
    above 10% of the median), seq_per_s, flops (theoretical encoder FLOPs of the whole batch, None
    when unknown), weights_mb, activation_mb (peak memory a forward pass added over what was resident
    before it), peak_mem_mb (weights + activations; None where memory cannot be measured), speedup
    and flop_ratio (the baseline's median latency / FLOPs over this row's, at the same batch and seq),
    warmup_passes, warmup_steady (None without warm-up), warmup_spread (max / min - 1 of the last warm-up
    passes), drift (median of the last quarter of timed rounds over the first quarter's, minus 1; None under
    8 passes), drifted (that shift above 10% and above the spread inside the quarters),
    minor_faults_per_pass (None where the OS does not count them). `machine` names the CPU, ISA, threads
    and `allocator`. `warnings` says why numbers may not be trustworthy (noisy rows, an unsteady
    warm-up, drift, page faults while timing, a loaded machine).
    """

    rows: list[dict]
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def row(self, model: str, batch: int, seq: int, dtype: str | None = None) -> dict:
        """The row of `model` at (`batch`, `seq`) (and `dtype` when rows of several dtypes are mixed)."""
        for r in self.rows:
            if (r["model"], r["batch"], r["seq"]) == (model, batch, seq) and dtype in (None, r["dtype"]):
                return r
        raise DeepCutsError(f"no benchmark row for {model!r} at batch {batch}, seq {seq}"
                            + (f", dtype {dtype}" if dtype else ""))

    def to_dict(self) -> dict:
        return {"machine": self.machine, "settings": self.settings, "rows": self.rows, "warnings": self.warnings}

    def caption(self) -> str:
        """Where and how the numbers were measured, e.g. 'AMD EPYC (AVX2), 2 threads; glibc malloc; torch 2.5.1;
        dtype fp32 (requested)': the CPU model, ISA, threads (or the GPU) and allocator, so no number is read
        without them."""
        parts = [self.machine.get("description"), self.machine.get("allocator")]
        if "torch" in self.machine:
            parts.append(f"torch {self.machine['torch']}")
        if "dtype" in self.settings:
            reason = self.settings.get("dtype_reason")
            parts.append(f"dtype {self.settings['dtype']}" + (f" ({reason})" if reason else ""))
        return "; ".join(p for p in parts if p)

    def table(self) -> str:
        """The caption, a markdown table (median and IQR, p90, p99, sample count, throughput, speedup and
        FLOP ratio side by side, memory) and the warnings under it."""
        caption = self.caption()
        lines = [caption, ""] if caption else []
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for r in self.rows:
            cells = [r["model"], str(r["batch"]), str(r["seq"]), r["dtype"], _ms(r["median_ms"]), _ms(r["iqr_ms"]),
                     _ms(r["p90_ms"]), _opt(r["p99_ms"], _ms), str(r["repeats"]), f"{r['seq_per_s']:.1f}",
                     f"{r['speedup']:.2f}x", _opt(r["flop_ratio"], "{:.2f}x".format),
                     _opt(r["peak_mem_mb"], "{:.1f}".format)]
            lines.append("| " + " | ".join(cells) + " |")
        if self.warnings:
            lines += [""] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
        """Write bench.json, bench.csv and bench.png into `folder` (files already there only with `overwrite`);
        the plot is skipped, with a note on stderr, where matplotlib is missing (e.g. a bare GPU image), so the
        numbers are never lost."""
        folder = Path(folder)
        written = [self.to_json(folder / "bench.json", overwrite), self.to_csv(folder / "bench.csv", overwrite)]
        if importlib.util.find_spec("matplotlib") is None:
            print("deepcuts: note: matplotlib is not installed, so bench.png was not written", file=sys.stderr)
        else:
            written.append(self.plot(folder / "bench.png", overwrite))
        return written

    def to_json(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", overwrite=overwrite)

    def to_csv(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        with write_file(path, overwrite=overwrite) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]) if self.rows else [])
            writer.writeheader()
            writer.writerows(self.rows)
        return Path(path)

    def plot_caption(self) -> str:
        """The plot's title: the machine (CPU model, ISA and threads, or the GPU), the dtypes of the rows and torch,
        e.g. 'Median latency on AMD EPYC (AVX-512 BF16, no AMX), 2 threads; dtype fp32; torch 2.5.1'. Built from
        the recorded machine facts where the one-line description is missing (reports of older versions)."""
        m = self.machine
        where = m.get("description")
        if not where and m.get("device_name"):
            where = f"{m['device_name']}" + (f", {m['threads']} CPU threads" if m.get("threads") else "")
        elif not where and m.get("processor"):
            where = m["processor"] + (f" ({m['isa']})" if m.get("isa") else "")
            where += f", {m['threads']} threads" if m.get("threads") else ""
        dtypes = sorted({r["dtype"] for r in self.rows}) or [self.settings.get("dtype")]
        parts = [f"Median latency on {where or 'an unrecorded machine'}",
                 self.machine.get("allocator"),
                 "dtype " + ", ".join(d for d in dtypes if d) if any(dtypes) else None,
                 f"torch {m['torch']}" if m.get("torch") else None]
        return "; ".join(p for p in parts if p)

    def plot(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """PNG: median latency vs batch size, one line per model (and dtype), one panel per sequence length, titled
        with the machine and dtype (`plot_caption`), since no latency means anything without them."""
        import textwrap

        try:
            from matplotlib import ticker
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:
            raise DeepCutsError("plotting needs matplotlib: pip install matplotlib") from e
        seqs = sorted({r["seq"] for r in self.rows})
        several_dtypes = len({r["dtype"] for r in self.rows}) > 1
        # An explicit Figure on the Agg canvas: no pyplot state, no change to the user's backend.
        fig = Figure(figsize=(5 * max(len(seqs), 1), 4), layout="constrained")
        FigureCanvasAgg(fig)
        for ax, seq in zip(fig.subplots(1, max(len(seqs), 1), squeeze=False)[0], seqs):
            lines: dict[str, list[tuple[int, float]]] = {}
            for r in self.rows:
                if r["seq"] == seq:
                    label = f"{r['model']} ({r['dtype']})" if several_dtypes else r["model"]
                    lines.setdefault(label, []).append((r["batch"], r["median_ms"]))
            for label, points in lines.items():
                batches, ms = zip(*sorted(points))
                ax.plot(batches, ms, marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sorted({r["batch"] for r in self.rows if r["seq"] == seq}))
            ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.yaxis.set_major_formatter(ticker.LogFormatter())
            ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
            ax.set(title=f"seq {seq}", xlabel="batch size", ylabel="median latency (ms)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(textwrap.fill(self.plot_caption(), width=12 * 5 * max(len(seqs), 1)), fontsize=10)
        with write_file(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return Path(path)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _opt(value: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if value is None else fmt(value)
