"""The report's PNG plots, drawn with matplotlib (skipped with a note where it is not installed).

Each plot is built by a `*_figure(results)` function that returns the matplotlib Figure, so that tests can read
its ticks and titles; `write_plots` saves them. Figures are made without pyplot (no global state, nothing left
open). Every criterion keeps one colour in every plot, legends sit outside the axes where they cannot cover
data, accuracies (held-out test split) are shown in percent, and a plot of times names the machine and dtype.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from .goals import ANCHOR_DATA, ANCHOR_DROP

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Kwon et al. 2022's retraining-free pruner (their code and their own dense fine-tune) on the Rotten Tomatoes
# test split that the default run evaluates on: keep_flops -> accuracy below dense (a fraction; 1.35 points at
# keep_flops 0.5, 0.05 at 0.75), measured in benchmarks/RESULTS.md, "Retraining-free structured pruning".
# goals.py quotes the same numbers.
KWON_ANCHOR_DROP: dict[float, float] = ANCHOR_DROP
KWON_ANCHOR_DATA = ANCHOR_DATA  # the only data they hold for: other runs get no marker
KWON_ANCHOR_LABEL = "Kwon et al. 2022 code, same split (benchmarks/RESULTS.md)"

_BUDGET_MARKERS = "os^vDPX"  # one marker shape per FLOP budget


def available() -> bool:
    """Whether matplotlib (an optional dependency) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Figure:
    """A figure laid out by matplotlib's constrained layout, so that legends placed outside the axes fit."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _colours(results: dict) -> dict[str, str]:
    """One colour per criterion, the same in every plot: the job's criteria, then pipeline-only ones (Fisher)."""
    pipeline = [e["criterion"] for e in results.get("retraining_free_summary") or []]
    names = dict.fromkeys([*results["settings"]["criteria"], *pipeline])
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _accuracy_axis(ax: Axes, results: dict) -> None:
    """Label the y axis as test accuracy in percent and draw the dense model's accuracy as a dotted line."""
    from matplotlib.ticker import PercentFormatter

    dense = results["dense"]["accuracy"]
    ax.axhline(dense, color="black", lw=1, ls=":", label=f"dense ({100 * dense:.2f}%)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)


def _legend(fig: Figure, handles: list, ncols: int) -> None:
    """One legend for the whole figure, below the axes and their labels, where it cannot cover data or titles."""
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _proxy(label: str, **style):
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


def paper_accuracy_figure(results: dict) -> Figure:
    """Accuracy vs compression per criterion: single shot (line), after recovery fine-tuning (hollow square),
    with lottery-ticket rewinding (hollow diamond); x ticks at exactly the measured compressions."""
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    colours = _colours(results)
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
    _accuracy_axis(ax, results)
    compressions = sorted({r["compression"] for r in results["paper_mode"]})
    ax.set_xticks(compressions, [f"{c:g}x" for c in compressions])
    ax.set(xlabel="compression (dense encoder parameters / kept parameters)",
           title="Paper mode: test accuracy of unstructured per-layer masks vs compression")
    handles = ax.get_legend_handles_labels()[0]
    handles += [_proxy("single shot", color="black", marker="o")] if extras else []
    handles += [_proxy(label, color="black", marker=marker, ls="", ms=9, mew=1.5, mfc="none")
                for _, marker, label in extras]
    _legend(fig, handles, 4)
    return fig


def _latency_tags(results: dict) -> list[str]:
    """The latency settings (fp32, bf16, cuda_bf16, ...) the structured slim models have speedups for."""
    return [t for t in results["latency"] if any(r.get(f"speedup_{t}") for r in results["structured_mode"])]


def _speedup_panel(ax: Axes, results: dict, tag: str, colours: dict[str, str], markers: dict[float, str]) -> None:
    """One latency setting: a line per criterion through its budgets, stars for recovery-fine-tuned models."""
    key = f"speedup_{tag}"
    rows = [r for r in results["structured_mode"] if r.get(key)]
    for crit in results["settings"]["criteria"]:
        mine = sorted((r for r in rows if r["criterion"] == crit), key=lambda r: -r["keep_flops"])
        ax.plot([r[key] for r in mine], [r["accuracy_reconstructed"] for r in mine], "-", lw=1, color=colours[crit])
        for r in mine:
            ax.plot(r[key], r["accuracy_reconstructed"], markers[r["keep_flops"]], color=colours[crit])
    for rec in _recovered(results):
        slim = next(r for r in rows if (r["criterion"], r["keep_flops"]) == (rec["criterion"], rec["keep_flops"]))
        ax.plot(slim[key], rec["accuracy"], "*", ms=15, mec="black", color=colours[rec["criterion"]])
    _accuracy_axis(ax, results)
    ax.set_xlabel("speedup over dense (dense / slim median latency)")
    ax.set_title(timing_caption(results, tag), fontsize=9)


def _recovered(results: dict) -> list[dict]:
    """The saved slim models that were recovery fine-tuned (the others are the reconstructed points already drawn)."""
    return [r for r in results["structured_recovery"] if r["epochs"] > 0]


def structured_speedup_figure(results: dict) -> Figure:
    """Accuracy after reconstruction vs measured speedup, one panel per latency setting (its title names the
    machine and dtype); a marker shape per FLOP budget; recovery fine-tuned models as stars named in the legend."""
    tags = _latency_tags(results)
    s = results["settings"]
    fig = _figure(max(5 * len(tags), 8), 6)
    axes = fig.subplots(1, len(tags), sharey=True, squeeze=False)[0]
    colours = _colours(results)
    budgets = sorted({r["keep_flops"] for r in results["structured_mode"]}, reverse=True)
    markers = dict(zip(budgets, itertools.cycle(_BUDGET_MARKERS)))
    for ax, tag in zip(axes, tags):
        _speedup_panel(ax, results, tag, colours, markers)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle(f"Structured mode: test accuracy after reconstruction vs speedup\n(measured at batch "
                 f"{s['latency_batch']}, seq {s['seq_len_flops']}, on the machine and dtype above each panel)",
                 fontsize=11)
    handles = [_proxy(c, color=colours[c]) for c in s["criteria"]]
    handles += [_proxy(f"keep {k:g} of FLOPs", color="black", marker=m, ls="") for k, m in markers.items()]
    handles += axes[0].get_legend_handles_labels()[0]
    handles += [_proxy(f"{r['criterion']} at keep {r['keep_flops']:g}, after {r['epochs']:g} epoch recovery "
                       "fine-tune", color=colours[r["criterion"]], marker="*", ms=12, mec="black", ls="")
                for r in _recovered(results)]
    _legend(fig, handles, 4)
    return fig


def kept_units_figure(results: dict) -> Figure:
    """Kept heads and FFN neurons per layer for each criterion at the analysed FLOP budget, side by side."""
    keep = results["settings"]["iou_keep_flops"]
    rows = [r for r in results["structured_mode"] if r["keep_flops"] == keep]
    colours = _colours(results)
    fig = _figure(12, 4.5)
    ax_h, ax_n = fig.subplots(1, 2)
    width = 0.8 / len(rows)
    layers = range(len(rows[0]["heads"]))
    for i, r in enumerate(rows):
        x = [layer - 0.4 + (i + 0.5) * width for layer in layers]
        ax_h.bar(x, r["heads"], width, color=colours[r["criterion"]], label=r["criterion"])
        ax_n.bar(x, r["ffn"], width, color=colours[r["criterion"]])
    for ax, what in ((ax_h, "Attention heads"), (ax_n, "FFN neurons")):
        ax.set_xticks(list(layers))
        ax.set(xlabel="encoder layer", ylabel=f"{what} kept (count)", title=f"{what} kept per layer")
        ax.grid(axis="y", alpha=0.3)
    ax_h.yaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Structured mode: units each criterion's global plan keeps at keep_flops {keep:g}", fontsize=11)
    _legend(fig, ax_h.get_legend_handles_labels()[0], min(len(rows), 8))
    return fig


def _kwon_anchor(ax: Axes, results: dict, budgets: list[float], half_width: float) -> None:
    """Kwon et al.'s measured drop below dense as a thick dash under each budget's group of bars, where this run
    is on the split they were measured on (a dash spans the group without hiding any criterion's bar)."""
    if results["settings"].get("data") != KWON_ANCHOR_DATA:
        return
    dense = results["dense"]["accuracy"]
    points = {k: drop for k, drop in KWON_ANCHOR_DROP.items() if k in budgets}
    if points:
        drops = ", ".join(f"{100 * d:g} points below dense at {k:g}" for k, d in points.items())
        ax.hlines([dense - d for d in points.values()], [k - half_width for k in points],
                  [k + half_width for k in points], colors="black", lw=3, zorder=1,
                  label=f"{KWON_ANCHOR_LABEL}:\n{drops}")


def retraining_free_figure(results: dict) -> Figure:
    """The retraining-free pipeline: accuracy vs fraction of FLOPs kept, a line per criterion through its mean
    over calibration draws with min-max bars, dense as a dotted line, Kwon et al.'s measured drop as a dash."""
    summary = results["retraining_free_summary"]
    budgets = sorted({e["keep_flops"] for e in summary}, reverse=True)
    crits = list(dict.fromkeys(e["criterion"] for e in summary))
    colours = _colours(results)
    gap = min((a - b for a, b in zip(budgets, budgets[1:])), default=0.2)
    step = 0.25 * gap / len(crits)  # criteria side by side around each budget, so that their bars do not overlap
    half_width = step * len(crits) / 2
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    for i, crit in enumerate(crits):
        mine = sorted((e for e in summary if e["criterion"] == crit), key=lambda e: -e["keep_flops"])
        mean = [e["accuracy_mean"] for e in mine]
        bars = [[m - e["accuracy_min"] for m, e in zip(mean, mine)],
                [e["accuracy_max"] - m for m, e in zip(mean, mine)]]
        ax.errorbar([e["keep_flops"] + (i - (len(crits) - 1) / 2) * step for e in mine], mean, yerr=bars, fmt="o-",
                    capsize=3, color=colours[crit], label=crit)
    _accuracy_axis(ax, results)
    _kwon_anchor(ax, results, budgets, half_width)
    ax.set_xticks(budgets, [f"{k:g}" for k in budgets])
    ax.set_xlim(budgets[0] + gap / 2, budgets[-1] - gap / 2)  # reversed: pruning harder to the right
    draws = max(e["draws"] for e in summary)
    spread = f"mean over {draws} calibration draws, bars min to max" if draws > 1 else "one calibration draw"
    ax.set(xlabel=f"fraction of dense encoder FLOPs kept (seq {results['settings']['seq_len_flops']}); "
                  "pruning harder to the right",
           title=f"Retraining-free pipeline (no fine-tuning): test accuracy vs FLOPs kept\n{spread}")
    handles = ax.get_legend_handles_labels()[0]
    _legend(fig, sorted(handles, key=lambda h: h.get_label() not in crits), 3)  # the criteria first
    return fig


def iou_matrix_figure(matrix: list[list[float]], labels: list[str], title: str) -> Figure:
    """Heatmap of layer-averaged mask IoU between criteria."""
    fig = _figure(6.5, 5.5)
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


def figures(results: dict) -> dict[str, Figure]:
    """Every plot the run's results hold the data for, by file name (a section the run skipped has none)."""
    out = {"paper_accuracy.png": paper_accuracy_figure(results)}
    if _latency_tags(results):
        out["structured_speedup.png"] = structured_speedup_figure(results)
    if any(r["keep_flops"] == results["settings"]["iou_keep_flops"] for r in results["structured_mode"]):
        out["kept_units.png"] = kept_units_figure(results)
    if results.get("retraining_free_summary"):
        out["retraining_free.png"] = retraining_free_figure(results)
    analysis = results["mask_analysis"]
    labels = analysis["criteria"]
    out["mask_iou.png"] = iou_matrix_figure(
        analysis["weight_iou_matrix"], labels,
        f"Paper mode, c={analysis['compression']:g}:\nIoU of the kept weights between criteria (mean over layers)")
    if analysis.get("plan_iou_matrix"):
        out["plan_iou.png"] = iou_matrix_figure(
            analysis["plan_iou_matrix"], labels,
            f"Structured mode, keep_flops {analysis['keep_flops']:g}:\nIoU of the kept heads + FFN neurons between "
            "criteria (mean over layers)")
    return out


def write_plots(results: dict, out: Path) -> list[Path]:
    """All plots of a run into `out`; an empty list (the report says why) without matplotlib."""
    if not available():
        return []
    return [_save(fig, out / name) for name, fig in figures(results).items()]
