"""The report's plots of structured mode: accuracy against the measured speedup of each slim model, and the heads
and FFN neurons each criterion's plan keeps per layer. Apart from `plots.py` (the registry and the other figures)
because they read the structured results' own shapes: latency settings with their noise, per-layer counts, and
the mask analysis's kept units.
"""
from __future__ import annotations

import itertools
import statistics
from typing import TYPE_CHECKING

from . import plot_style

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_BUDGET_MARKERS = "os^vDPX"  # one marker shape per FLOP budget


def latency_tags(results: dict) -> list[str]:
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
    plot_style.accuracy_axis(ax, results)
    ax.axvline(1.0, color="black", lw=1, ls="--", label="dense speed (1x)")
    speeds = [r[key] for r in rows]
    low, high = min(1.0, min(speeds) * (1 - noise)), max(1.0, max(speeds) * (1 + noise))
    pad = 0.06 * (high - low) or 0.05
    ax.set_xlim(low - pad, high + pad)  # from dense speed: a 1% difference stays 1% of the axis, not all of it
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}x")
    ax.set_xlabel(f"speedup over dense (dense / slim median latency)\ngrey band: {why}", fontsize=8)
    ax.set_title(plot_style.timing_caption(results, tag), fontsize=9)


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
    tags = latency_tags(results)
    s = results["settings"]
    fig = plot_style.figure(max(5 * len(tags), 8), 6.3)
    axes = fig.subplots(1, len(tags), sharey=True, squeeze=False)[0]
    colours = plot_style.colours(results)
    budgets = sorted({r["keep_flops"] for r in results["structured_mode"]}, reverse=True)
    markers = dict(zip(budgets, itertools.cycle(_BUDGET_MARKERS)))
    for ax, tag in zip(axes, tags):
        _speedup_panel(ax, results, tag, colours, markers)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle(f"Structured mode: test accuracy after reconstruction vs speedup\n(measured at batch "
                 f"{s['latency_batch']}, seq {s['seq_len_flops']}, on the machine and dtype above each panel)\n"
                 "speedups inside one grey band differ by less than the measurement noise: ties", fontsize=11)
    handles = [plot_style.proxy(c, color=colours[c]) for c in s["criteria"]]
    handles += [plot_style.proxy(f"keep {k:g} of FLOPs", color="black", marker=m, ls="") for k, m in markers.items()]
    handles += axes[0].get_legend_handles_labels()[0]
    handles += [plot_style.proxy(f"{r['criterion']} at keep {r['keep_flops']:g}, after {r['epochs']:g} epoch "
                                 "recovery fine-tune", color=colours[r["criterion"]], marker="*", ms=12, mec="black",
                                 ls="")
                for r in _recovered(results)]
    plot_style.legend(fig, handles, 4 if len(tags) > 1 else 3)
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
    colours = plot_style.colours(results)
    fig = plot_style.figure(12, 1.6 + 3.1 * len(budgets))
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
    plot_style.legend(fig, list(handles.values()), min(len(handles), 4))
    return fig
