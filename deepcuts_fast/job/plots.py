"""The report's PNG plots, drawn with matplotlib (skipped with a note where it is not installed).

Each plot is built by a `*_figure(results)` function that returns the matplotlib Figure, so that tests can read
its ticks and titles; `write_plots` draws and saves each on its own (one that raises is named, not fatal). Figures
are made without pyplot (no global state, nothing left open). This module holds the registry of plots (`FIGURES`),
`write_plots`, and the figures of paper mode, of the retraining-free pipeline and of the mask IoUs; structured
mode's figures are `structured_plots.py`'s, and the look they all share (one colour per criterion, legends outside
the axes, accuracies in percent, a plot of times naming the machine and dtype) is `plot_style.py`'s.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import first_line
from . import plot_style
from .goals import ANCHOR_DROP, embedded
from .plot_style import timing_caption
from .structured_plots import kept_units_figure, latency_tags, speedup_noise, structured_speedup_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# what the report and its tests use: every figure by name, whichever module draws it, and the registry
__all__ = ["FIGURES", "KWON_ANCHOR_DENSE", "KWON_ANCHOR_DROP", "KWON_ANCHOR_LABEL", "Drawn", "bar_lengths", "figures",
           "iou_matrix_figure", "kept_units_figure", "paper_accuracy_figure", "plan_iou_figure",
           "retraining_free_figure", "speedup_noise", "structured_speedup_figure", "timing_caption",
           "weight_iou_figure", "write_plots"]

# Kwon et al. 2022's retraining-free pruner (their code and their own dense fine-tune, 82.55%) on the embedded Rotten
# Tomatoes test split: keep_flops -> accuracy below their dense (a fraction; 1.35 points at keep_flops 0.5, 0.05 at
# 0.75), measured in benchmarks/RESULTS.md, "Retraining-free structured pruning". goals.py quotes the same numbers
# and decides, with `embedded`, which runs they hold for: only those on the embedded data.
KWON_ANCHOR_DROP: dict[float, float] = ANCHOR_DROP
KWON_ANCHOR_DENSE = 0.8255  # their own fine-tune's test accuracy, which the drops are measured from
KWON_ANCHOR_LABEL = "Kwon et al. 2022 (their code and own fine-tune, same test split;\nbenchmarks/RESULTS.md)"


def paper_accuracy_figure(results: dict) -> Figure:
    """Accuracy vs compression per criterion: single shot (line), after recovery fine-tuning (hollow square),
    with lottery-ticket rewinding (hollow diamond); x ticks at exactly the measured compressions."""
    fig = plot_style.figure(8, 5.5)
    ax = fig.subplots()
    colours = plot_style.colours(results)
    extras = [(key, marker, label) for key, marker, label in (
        ("paper_recovery", "s", f"after {results['settings']['recovery_epochs']:g} epoch recovery fine-tune"),
        ("paper_rewind", "D", "lottery-ticket rewound, then fine-tuned")) if results[key]]
    for crit in results["settings"]["criteria"]:
        rows = sorted((r for r in results["paper_mode"] if r["criterion"] == crit), key=lambda r: r["compression"])
        ax.plot([r["compression"] for r in rows], [r["accuracy"] for r in rows], "o-", color=colours[crit],
                label=crit)
        for key, marker, _ in extras:
            done = [r for r in results[key] if r["criterion"] == crit]
            ax.plot([r["compression"] for r in done], [r["accuracy"] for r in done], marker, ms=9, mew=1.5,
                    mfc="none", color=colours[crit])
    plot_style.accuracy_axis(ax, results)
    compressions = sorted({r["compression"] for r in results["paper_mode"]})
    ax.set_xticks(compressions, [f"{c:g}x" for c in compressions])
    ax.set(xlabel="compression (dense encoder parameters / kept parameters)",
           title="Paper mode: test accuracy of unstructured per-layer masks vs compression")
    handles = ax.get_legend_handles_labels()[0]
    handles += [plot_style.proxy("single shot", color="black", marker="o")] if extras else []
    handles += [plot_style.proxy(label, color="black", marker=marker, ls="", ms=9, mew=1.5, mfc="none")
                for _, marker, label in extras]
    plot_style.legend(fig, handles, 4)
    return fig


def _kwon_anchor(ax: Axes, results: dict, budgets: list[float], half_width: float) -> None:
    """Kwon et al.'s measured drop below their dense model as a thick dash under each budget's group of points, this
    far below this run's dense, at the budgets they were measured at, only where this run is on the embedded data
    they were measured on (goals.embedded); the label names the source, their dense accuracy and each budget."""
    if not embedded(results):
        return
    dense = results["dense"]["accuracy"]
    points = {k: drop for k, drop in KWON_ANCHOR_DROP.items() if k in budgets}
    if points:
        drops = ",\n".join(f"{100 * d:g} points below their dense at keep_flops {k:g}" for k, d in points.items())
        ax.hlines([dense - d for d in points.values()], [k - half_width for k in points],
                  [k + half_width for k in points], colors="black", lw=3, zorder=1, gid="kwon_anchor",
                  label=f"{KWON_ANCHOR_LABEL}: {drops}\n(their dense {100 * KWON_ANCHOR_DENSE:.2f}%), drawn as far "
                        "below this run's dense")


def bar_lengths(points: list[float], lows: list[float], highs: list[float]) -> list[list[float]]:
    """Error-bar lengths [below, above] of points with their [low, high] intervals, never negative: a point outside
    its interval (the summary's mean is rounded to 6 digits, its min and max are not) gets no bar on that side,
    where matplotlib would refuse the whole figure."""
    return [[max(0.0, p - low) for p, low in zip(points, lows)],
            [max(0.0, high - p) for p, high in zip(points, highs)]]


def retraining_free_figure(results: dict) -> Figure:
    """The retraining-free pipeline: accuracy vs fraction of FLOPs kept, per criterion (each method its own:
    "fisher (iterative)" is not joined to "fisher") its mean over calibration draws with min-max bars, a line only
    between budgets of the same criterion and method, dense as a dotted line, and Kwon et al.'s measured drop as a
    dash at the budgets they measured, on the embedded data only (`_kwon_anchor`). The title says how many draws
    each point is over: with one draw (`deepcuts run --quick`) a point has no spread, and says so."""
    summary = results["retraining_free_summary"]
    budgets = sorted({e["keep_flops"] for e in summary}, reverse=True)
    crits = list(dict.fromkeys(e["criterion"] for e in summary))
    colours = plot_style.colours(results)
    gap = min((a - b for a, b in zip(budgets, budgets[1:])), default=0.2)
    step = 0.25 * gap / len(crits)  # criteria side by side around each budget, so that their bars do not overlap
    half_width = max(step * len(crits) / 2, gap / 8)
    fig = plot_style.figure(8, 5.5)
    ax = fig.subplots()
    for i, crit in enumerate(crits):
        mine = sorted((e for e in summary if e["criterion"] == crit), key=lambda e: -e["keep_flops"])
        mean = [e["accuracy_mean"] for e in mine]
        bars = bar_lengths(mean, [e["accuracy_min"] for e in mine], [e["accuracy_max"] for e in mine])
        ax.errorbar([e["keep_flops"] + (i - (len(crits) - 1) / 2) * step for e in mine], mean, yerr=bars,
                    fmt="o-" if len(mine) > 1 else "o", capsize=3, color=colours[crit], label=crit)
    plot_style.accuracy_axis(ax, results)
    _kwon_anchor(ax, results, budgets, half_width)
    ax.set_xticks(budgets, [f"{k:g}" for k in budgets])
    ax.set_xlim(budgets[0] + gap / 2, budgets[-1] - gap / 2)  # reversed: pruning harder to the right
    draws = sorted({e["draws"] for e in summary})
    if draws[-1] == 1:
        spread = "1 calibration draw: no spread (several draws give min-max bars)"
    else:
        over = f"{draws[0]}-{draws[-1]}" if len(draws) > 1 else f"{draws[0]}"
        spread = f"mean over {over} calibration draws per point, bars min to max"
    ax.set(xlabel=f"fraction of dense encoder FLOPs kept (seq {results['settings']['seq_len_flops']}); "
                  "pruning harder to the right",
           title=f"Retraining-free pipeline (no fine-tuning): test accuracy vs FLOPs kept\n{spread}")
    handles = ax.get_legend_handles_labels()[0]
    plot_style.legend(fig, sorted(handles, key=lambda h: h.get_label() not in crits), 3)  # the criteria first
    return fig


def iou_matrix_figure(matrix: list[list[float]], labels: list[str], title: str) -> Figure:
    """Heatmap of layer-averaged mask IoU between criteria."""
    fig = plot_style.figure(6.5, 5.5)
    ax = fig.subplots()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="IoU (intersection / union of kept sets)")
    ax.set_title(title, fontsize=10)
    return fig


def weight_iou_figure(results: dict) -> Figure:
    """Paper mode's IoU of the kept weights between criteria."""
    a = results["mask_analysis"]
    return iou_matrix_figure(a["weight_iou_matrix"], a["criteria"], f"Paper mode, c={a['compression']:g}:\nIoU of "
                             "the kept weights between criteria (mean over layers)")


def plan_iou_figure(results: dict) -> Figure:
    """Structured mode's IoU of the kept heads and FFN neurons between the criteria's plans."""
    a = results["mask_analysis"]
    return iou_matrix_figure(a["plan_iou_matrix"], a["criteria"], f"Structured mode, keep_flops {a['keep_flops']:g}:"
                             "\nIoU of the kept heads + FFN neurons between criteria (mean over layers)")


# file name -> (whether the run's results hold the plot's data, the function drawing it), in the report's order
FIGURES: dict[str, tuple[Callable[[dict], bool], Callable[[dict], Figure]]] = {
    "paper_accuracy.png": (lambda r: True, paper_accuracy_figure),
    "structured_speedup.png": (lambda r: bool(latency_tags(r)), structured_speedup_figure),
    "kept_units.png": (lambda r: any(row["keep_flops"] == r["settings"]["iou_keep_flops"]
                                     for row in r["structured_mode"]), kept_units_figure),
    "retraining_free.png": (lambda r: bool(r.get("retraining_free_summary")), retraining_free_figure),
    "mask_iou.png": (lambda r: True, weight_iou_figure),
    "plan_iou.png": (lambda r: bool(r["mask_analysis"].get("plan_iou_matrix")), plan_iou_figure),
}


def figures(results: dict) -> dict[str, Figure]:
    """Every plot the run's results hold the data for, by file name (a section the run skipped has none)."""
    return {name: draw(results) for name, (wanted, draw) in FIGURES.items() if wanted(results)}


class Drawn(NamedTuple):
    """What `write_plots` did: the PNGs written, and each plot that raised, by file name, with the error's first
    line (the report names them instead of losing everything to one figure)."""

    written: list[Path]
    failed: dict[str, str]


def write_plots(results: dict, out: Path) -> Drawn:
    """All plots of a run into `out`, each drawn and saved on its own, so that one that raises is skipped and named,
    not fatal; nothing written (the report says why) without matplotlib."""
    written, failed = [], {}
    if not plot_style.available():
        return Drawn(written, failed)
    for name, (wanted, draw) in FIGURES.items():
        try:
            if wanted(results):
                written.append(plot_style.save(draw(results), out / name))
        except Exception as e:  # a plot is an illustration of results.json: never worth the report
            failed[name] = f"{type(e).__name__}: {first_line(e)}"
    return Drawn(written, failed)
