"""The report's PNG plots, drawn with matplotlib (skipped with a note where it is not installed).

Each plot is built by a `*_figure(results)` function that returns the matplotlib Figure, so that tests can read
its ticks and titles; `write_plots` draws and saves each on its own (one that raises is named, not fatal). Figures
are made without pyplot (no global state, nothing left open). Every criterion keeps one colour in every plot,
legends sit outside the axes where they cannot cover data, accuracies (held-out test split) are shown in percent,
and a plot of times names the machine and dtype.
"""
from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import first_line
from ..outputs import write_file
from .goals import ANCHOR_DROP, embedded

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Kwon et al. 2022's retraining-free pruner (their code and their own dense fine-tune, 82.55%) on the embedded Rotten
# Tomatoes test split: keep_flops -> accuracy below their dense (a fraction; 1.35 points at keep_flops 0.5, 0.05 at
# 0.75), measured in benchmarks/RESULTS.md, "Retraining-free structured pruning". goals.py quotes the same numbers
# and decides, with `embedded`, which runs they hold for: only those on the embedded data.
KWON_ANCHOR_DROP: dict[float, float] = ANCHOR_DROP
KWON_ANCHOR_DENSE = 0.8255  # their own fine-tune's test accuracy, which the drops are measured from
KWON_ANCHOR_LABEL = "Kwon et al. 2022 (their code and own fine-tune, same test split;\nbenchmarks/RESULTS.md)"

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
    with write_file(path, overwrite=True) as tmp:
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


# Speedups of separate benchmark runs of the same models differ by a few percent on a shared machine (load, clocks,
# memory placement), more than the IQR inside one run shows: the noise band is never narrower than this.
RUN_TO_RUN_NOISE = 0.02


def speedup_noise(results: dict, tag: str) -> tuple[float, str]:
    """The relative half-width of the speedups within measurement noise for latency setting `tag`, and what it is.

    A speedup is dense / slim median latency, so its interquartile half-width is about half the sum of the two
    relative IQRs (dense_q1 / slim_q3 to dense_q3 / slim_q1). The band uses the median of that over the slim models
    measured in the setting, but never less than `RUN_TO_RUN_NOISE` (one run's IQR does not see the drift between
    runs); results without IQRs (older runs) get the stated floor."""
    rows = results["latency"].get(tag) or []
    spreads = []
    if rows and rows[0].get("iqr_ms") is not None and rows[0].get("median_ms"):
        dense = rows[0]["iqr_ms"] / rows[0]["median_ms"]
        spreads = [(dense + r["iqr_ms"] / r["median_ms"]) / 2 for r in rows[1:]
                   if r.get("iqr_ms") is not None and r.get("median_ms")]
    floor = f"±{100 * RUN_TO_RUN_NOISE:g}%, the stated run-to-run noise"
    if not spreads:
        return RUN_TO_RUN_NOISE, f"{floor} (no latency IQRs recorded)"
    measured = statistics.median(spreads)
    if measured < RUN_TO_RUN_NOISE:
        return RUN_TO_RUN_NOISE, f"{floor} (measured IQR only ±{100 * measured:.1f}%)"
    return measured, f"±{100 * measured:.1f}%, the measured IQR of dense / slim"


def _speedup_panel(ax: Axes, results: dict, tag: str, colours: dict[str, str], markers: dict[float, str]) -> None:
    """One latency setting: a line per criterion through its budgets, stars for recovery-fine-tuned models, a grey
    noise band around each budget's median speedup, the x axis from 1x (dense speed)."""
    key = f"speedup_{tag}"
    rows = [r for r in results["structured_mode"] if r.get(key)]
    noise, why = speedup_noise(results, tag)
    for n, keep in enumerate(sorted({r["keep_flops"] for r in rows}, reverse=True)):
        centre = statistics.median(r[key] for r in rows if r["keep_flops"] == keep)
        ax.axvspan(centre * (1 - noise), centre * (1 + noise), color="0.85", zorder=0, gid="noise_band",
                   label="within noise of the budget's median speedup (ties)" if n == 0 else "_nolegend_")
    for crit in results["settings"]["criteria"]:
        mine = sorted((r for r in rows if r["criterion"] == crit), key=lambda r: -r["keep_flops"])
        ax.plot([r[key] for r in mine], [r["accuracy_reconstructed"] for r in mine], "-", lw=1, color=colours[crit])
        for r in mine:
            ax.plot(r[key], r["accuracy_reconstructed"], markers[r["keep_flops"]], color=colours[crit])
    for rec in _recovered(results):
        slim = next(r for r in rows if (r["criterion"], r["keep_flops"]) == (rec["criterion"], rec["keep_flops"]))
        ax.plot(slim[key], rec["accuracy"], "*", ms=15, mec="black", color=colours[rec["criterion"]])
    _accuracy_axis(ax, results)
    ax.axvline(1.0, color="black", lw=1, ls="--", label="dense speed (1x)")
    speeds = [r[key] for r in rows]
    low, high = min(1.0, min(speeds) * (1 - noise)), max(1.0, max(speeds) * (1 + noise))
    pad = 0.06 * (high - low) or 0.05
    ax.set_xlim(low - pad, high + pad)  # from dense speed: a 1% difference stays 1% of the axis, not all of it
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}x")
    ax.set_xlabel(f"speedup over dense (dense / slim median latency)\ngrey band: {why}", fontsize=8)
    ax.set_title(timing_caption(results, tag), fontsize=9)


def _recovered(results: dict) -> list[dict]:
    """The saved slim models that were recovery fine-tuned (the others are the reconstructed points already drawn)."""
    return [r for r in results["structured_recovery"] if r["epochs"] > 0]


def structured_speedup_figure(results: dict) -> Figure:
    """Accuracy after reconstruction vs measured speedup, one panel per latency setting (its title names the
    machine and dtype); a marker shape per FLOP budget; recovery fine-tuned models as stars named in the legend.

    Speedups of one budget differ mostly by noise (every criterion keeps the same per-layer counts under the default
    Fisher allocation, so the slim models have the same shapes): the x axis starts at 1x, the dense model's speed,
    so that a 1% difference looks like 1%, and a grey band around each budget's median speedup spans the
    measurement noise (`speedup_noise`, named under each panel): points inside it are ties."""
    tags = _latency_tags(results)
    s = results["settings"]
    fig = _figure(max(5 * len(tags), 8), 6.3)
    axes = fig.subplots(1, len(tags), sharey=True, squeeze=False)[0]
    colours = _colours(results)
    budgets = sorted({r["keep_flops"] for r in results["structured_mode"]}, reverse=True)
    markers = dict(zip(budgets, itertools.cycle(_BUDGET_MARKERS)))
    for ax, tag in zip(axes, tags):
        _speedup_panel(ax, results, tag, colours, markers)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle(f"Structured mode: test accuracy after reconstruction vs speedup\n(measured at batch "
                 f"{s['latency_batch']}, seq {s['seq_len_flops']}, on the machine and dtype above each panel)\n"
                 "speedups inside one grey band differ by less than the measurement noise: ties", fontsize=11)
    handles = [_proxy(c, color=colours[c]) for c in s["criteria"]]
    handles += [_proxy(f"keep {k:g} of FLOPs", color="black", marker=m, ls="") for k, m in markers.items()]
    handles += axes[0].get_legend_handles_labels()[0]
    handles += [_proxy(f"{r['criterion']} at keep {r['keep_flops']:g}, after {r['epochs']:g} epoch recovery "
                       "fine-tune", color=colours[r["criterion"]], marker="*", ms=12, mec="black", ls="")
                for r in _recovered(results)]
    _legend(fig, handles, 4 if len(tags) > 1 else 3)
    return fig


def _allocations(rows: list[dict]) -> list[tuple[list[str], list[int], list[int]]]:
    """The distinct per-layer (heads, FFN neurons) counts among `rows`, each with the criteria that keep it."""
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        groups.setdefault((tuple(r["heads"]), tuple(r["ffn"])), []).append(r["criterion"])
    return [(crits, list(heads), list(ffn)) for (heads, ffn), crits in groups.items()]


def _heads_kept_by_all(results: dict, keep: float) -> list[int] | None:
    """Per layer, how many heads every criterion's plan at `keep` keeps (the same heads, not only as many), from
    the mask analysis's kept head indices; None where it has none for this budget (it records FFN neurons only
    as counts)."""
    a = results.get("mask_analysis") or {}
    kept = a.get("kept_units") or {}
    if a.get("keep_flops") != keep or len(kept) < 2:
        return None
    per_crit = [k["heads"] for k in kept.values()]
    return [len(set.intersection(*(set(c[layer]) for c in per_crit))) for layer in range(len(per_crit[0]))]


def kept_units_figure(results: dict) -> Figure:
    """Kept heads and FFN neurons per layer, one row of panels per FLOP budget, drawn once per distinct allocation.

    Under the default allocation ("auto", docs/architecture.md) each criterion's scores are rank-matched to
    Fisher's inside every layer and unit type, so Fisher decides how many units each layer keeps and the criterion
    only which: every criterion of a budget keeps the same counts, and a bar per criterion drew the same bar over
    and over. So criteria with the same counts share one bar (grey where all of them do, the panel's title says
    so; else in the first one's colour, the legend naming them all); different counts (data-free scores, "raw"
    allocation, older runs) still get a bar each. Where the criteria differ under equal counts, in which units,
    the heads panel of the analysed budget marks per layer how many heads every criterion keeps (the same heads):
    the gap to the bar's top is the heads they disagree on (plan_iou.png measures it over heads and neurons)."""
    rows_all = results["structured_mode"]
    budgets = sorted({r["keep_flops"] for r in rows_all}, reverse=True)
    colours = _colours(results)
    fig = _figure(12, 1.6 + 3.1 * len(budgets))
    grid = fig.subplots(len(budgets), 2, squeeze=False)
    shared_everywhere = True
    for (ax_h, ax_n), keep in zip(grid, budgets):
        rows = [r for r in rows_all if r["keep_flops"] == keep]
        groups = _allocations(rows)
        shared = len(groups) == 1 and len(rows) > 1
        shared_everywhere &= shared
        width = 0.8 / len(groups)
        layers = range(len(rows[0]["heads"]))
        for i, (crits, heads, ffn) in enumerate(groups):
            x = [layer - 0.4 + (i + 0.5) * width for layer in layers]
            if shared:
                style = {"color": "0.55", "label": f"all {len(crits)} criteria (same counts)"}
            else:
                style = {"color": colours[crits[0]],
                         "label": crits[0] if len(crits) == 1 else f"{' = '.join(crits)} (same counts)"}
            ax_h.bar(x, heads, width, **style)
            ax_n.bar(x, ffn, width, color=style["color"])
        overlap = _heads_kept_by_all(results, keep)
        if overlap is not None:
            ax_h.hlines(overlap, [layer - 0.4 for layer in layers], [layer + 0.4 for layer in layers],
                        colors="black", lw=2.5, gid="heads_kept_by_all",
                        label="heads every criterion keeps (the same heads; mask analysis)")
        owner = f"shared by all {len(rows)} criteria" if shared else "per criterion"
        for ax, what in ((ax_h, "attention heads"), (ax_n, "FFN neurons")):
            ax.set_xticks(list(layers))
            ax.set(ylabel=f"{what} kept", title=f"keep_flops {keep:g}: {what} kept per layer ({owner})")
            ax.title.set_fontsize(9)
            ax.grid(axis="y", alpha=0.3)
        ax_h.yaxis.get_major_locator().set_params(integer=True)
    for ax in grid[-1]:
        ax.set_xlabel("encoder layer")
    why = ("\nevery criterion keeps the same counts per layer: the Fisher allocation ('auto') decides how many, "
           "the criterion which ones" if shared_everywhere else "")
    fig.suptitle(f"Structured mode: units each criterion's global plan keeps per layer{why}", fontsize=11)
    handles = {h.get_label(): h for ax in grid.flat for h in ax.get_legend_handles_labels()[0]}
    _legend(fig, list(handles.values()), min(len(handles), 4))
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
    colours = _colours(results)
    gap = min((a - b for a, b in zip(budgets, budgets[1:])), default=0.2)
    step = 0.25 * gap / len(crits)  # criteria side by side around each budget, so that their bars do not overlap
    half_width = max(step * len(crits) / 2, gap / 8)
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    for i, crit in enumerate(crits):
        mine = sorted((e for e in summary if e["criterion"] == crit), key=lambda e: -e["keep_flops"])
        mean = [e["accuracy_mean"] for e in mine]
        bars = bar_lengths(mean, [e["accuracy_min"] for e in mine], [e["accuracy_max"] for e in mine])
        ax.errorbar([e["keep_flops"] + (i - (len(crits) - 1) / 2) * step for e in mine], mean, yerr=bars,
                    fmt="o-" if len(mine) > 1 else "o", capsize=3, color=colours[crit], label=crit)
    _accuracy_axis(ax, results)
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
    "structured_speedup.png": (lambda r: bool(_latency_tags(r)), structured_speedup_figure),
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
    if not available():
        return Drawn(written, failed)
    for name, (wanted, draw) in FIGURES.items():
        try:
            if wanted(results):
                written.append(_save(draw(results), out / name))
        except Exception as e:  # a plot is an illustration of results.json: never worth the report
            failed[name] = f"{type(e).__name__}: {first_line(e)}"
    return Drawn(written, failed)
