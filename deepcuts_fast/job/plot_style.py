"""The look every plot of the report shares, apart from the figures (`plots.py`, `structured_plots.py`) so that each
of them draws only its data: figures laid out by constrained layout and saved atomically as PNG, one colour per
criterion in every plot, legends outside the axes where they cannot cover data, accuracies (held-out test split)
in percent, and a caption naming the machine and dtype of a plot of times.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..outputs import write_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def available() -> bool:
    """Whether matplotlib (an optional dependency) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def figure(width: float, height: float) -> Figure:
    """A figure laid out by matplotlib's constrained layout, so that legends placed outside the axes fit."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG atomically (a reader never sees half a file)."""
    with write_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def colours(results: dict) -> dict[str, str]:
    """One colour per criterion, the same in every plot: the job's criteria, then pipeline-only ones (Fisher)."""
    pipeline = [e["criterion"] for e in results.get("retraining_free_summary") or []]
    names = dict.fromkeys([*results["settings"]["criteria"], *pipeline])
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def accuracy_axis(ax: Axes, results: dict) -> None:
    """Label the y axis as test accuracy in percent and draw the dense model's accuracy as a dotted line."""
    from matplotlib.ticker import PercentFormatter

    dense = results["dense"]["accuracy"]
    ax.axhline(dense, color="black", lw=1, ls=":", label=f"dense ({100 * dense:.2f}%)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)


def legend(fig: Figure, handles: list, ncols: int) -> None:
    """One legend for the whole figure, below the axes and their labels, where it cannot cover data or titles."""
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def proxy(label: str, **style):
    """A legend entry for a style shared by several drawn lines (a marker, a colour)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], label=label, **style)


def timing_caption(results: dict, tag: str) -> str:
    """Where and in which dtype a latency setting was measured, short enough for a title:
    'AMD EPYC (AVX-512 BF16), 2 threads, fp32' on the CPU, 'NVIDIA H200, bf16' for a 'cuda_<dtype>' setting."""
    device, _, dtype = tag.rpartition("_")
    if device:
        return f"{results['settings'].get('gpu') or device}, {dtype}"
    m = results["machine"]
    isa = f" ({m['isa']})" if m.get("isa") else ""
    return f"{m['processor']}{isa}, {m['threads']} thread{'' if m['threads'] == 1 else 's'}, {dtype}"
