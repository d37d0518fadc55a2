"""The report's PNG plots, drawn with matplotlib (skipped with a note where it is not installed)."""
from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    return path


def paper_accuracy(results: dict, path: Path) -> Path:
    """Accuracy vs compression per criterion (single shot solid, recovered dashed), dense as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for crit in results["settings"]["criteria"]:
        rows = [r for r in results["paper_mode"] if r["criterion"] == crit]
        line, = ax.plot([r["compression"] for r in rows], [r["accuracy"] for r in rows], "o-", label=crit)
        rec = [r for r in results["paper_recovery"] if r["criterion"] == crit]
        if rec:
            ax.plot([r["compression"] for r in rec], [r["accuracy"] for r in rec], "s--", color=line.get_color(),
                    label=f"{crit} + recovery")
    ax.axhline(results["dense"]["accuracy"], color="black", lw=1, ls=":", label="dense")
    ax.set(xlabel="compression (encoder params / remaining)", ylabel="test accuracy",
           title="Paper mode: unstructured masks per layer")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def structured_speedup(results: dict, path: Path) -> Path:
    """Accuracy (reconstructed) vs measured CPU fp32 speedup, one marker per (criterion, FLOP budget)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for crit in results["settings"]["criteria"]:
        rows = [r for r in results["structured_mode"] if r["criterion"] == crit and r.get("speedup_fp32")]
        if rows:
            ax.plot([r["speedup_fp32"] for r in rows], [r["accuracy_reconstructed"] for r in rows], "o-", label=crit)
    for r in results.get("structured_recovery", []):
        ax.plot([r["speedup_fp32"]], [r["accuracy"]], "k*", ms=10)
    ax.axhline(results["dense"]["accuracy"], color="black", lw=1, ls=":", label="dense")
    ax.set(xlabel="measured speedup over dense (CPU fp32)", ylabel="test accuracy",
           title="Structured mode: reconstructed slim models (* = after recovery fine-tune)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def kept_units(results: dict, path: Path) -> Path:
    """Kept heads and FFN neurons per layer for each criterion at the analysed FLOP budget."""
    plt = _pyplot()
    keep = results["settings"]["iou_keep_flops"]
    rows = [r for r in results["structured_mode"] if r["keep_flops"] == keep]
    fig, (ax_h, ax_n) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(rows), 1)
    layers = range(len(rows[0]["heads"])) if rows else range(0)
    for i, r in enumerate(rows):
        x = [layer - 0.4 + (i + 0.5) * width for layer in layers]
        ax_h.bar(x, r["heads"], width, label=r["criterion"])
        ax_n.bar(x, r["ffn"], width)
    for ax in (ax_h, ax_n):
        ax.set_xticks(list(layers))
    ax_h.yaxis.get_major_locator().set_params(integer=True)
    ax_h.set(xlabel="encoder layer", ylabel="heads kept", title=f"Heads kept at keep_flops {keep:g}")
    ax_n.set(xlabel="encoder layer", ylabel="FFN neurons kept", title=f"FFN neurons kept at keep_flops {keep:g}")
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _save(fig, path)


def iou_matrix(matrix: list[list[float]], labels: list[str], title: str, path: Path) -> Path:
    """Heatmap of layer-averaged mask IoU between criteria."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="IoU")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def write_plots(results: dict, out: Path) -> list[Path]:
    """All plots of a run into `out`; an empty list (the report says why) without matplotlib."""
    if _pyplot() is None:
        return []
    paths = [paper_accuracy(results, out / "paper_accuracy.png")]
    if results["structured_mode"]:
        paths += [structured_speedup(results, out / "structured_speedup.png"), kept_units(results, out / "kept_units.png")]
    analysis = results["mask_analysis"]
    labels = analysis["criteria"]
    paths.append(iou_matrix(analysis["weight_iou_matrix"], labels,
                            f"Paper-mode mask IoU at c={analysis['compression']:g} (mean over layers)",
                            out / "mask_iou.png"))
    if analysis.get("plan_iou_matrix"):
        paths.append(iou_matrix(analysis["plan_iou_matrix"], labels,
                                f"Structured plan IoU at keep_flops {analysis['keep_flops']:g} (heads + neurons)",
                                out / "plan_iou.png"))
    return paths
