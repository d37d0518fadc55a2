"""The retraining-free pipeline over calibration draws: per (FLOP budget, criterion) the mean test accuracy
and its range over the draws, the drop from dense with its 95% interval and p-value (pooled over the draws), and
per budget the winner: the criterion with the best mean validation accuracy (the test mean where the data has no
validation split)."""
from __future__ import annotations

import statistics

from .held_out import PREFIX, best
from .significance import DENSE, compare_rows


def pipeline_summary(rows: list[dict], dense: dict | float) -> list[dict]:
    """One entry per (keep_flops, criterion) in row order: draws, seeds, mean / min / max test accuracy, the mean
    drop from dense in points, the mean validation accuracy, and `winner` (chosen on validation; ties: first).

    `dense`: the dense evaluation (with its per-example predictions and labels, the drop also gets its 95%
    paired-bootstrap interval `drop_points_ci` and McNemar p `p_vs_dense`, pooled over the draws), or just its
    accuracy (then those are None)."""
    dense_row = dense if isinstance(dense, dict) else {"accuracy": dense}
    results = {"dense": dense_row}
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["keep_flops"], r["criterion"]), []).append(r)
    out = []
    for (keep, crit), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        mean = statistics.fmean(accs)
        f1 = [r.get("macro_f1") for r in rs]
        drop = compare_rows(results, dense_row, rs, (DENSE, crit))
        entry = {"keep_flops": keep, "criterion": crit, "draws": len(rs), "seeds": [r.get("seed") for r in rs],
                 "accuracy_mean": round(mean, 6), "accuracy_min": min(accs), "accuracy_max": max(accs),
                 "drop_points_mean": round(100 * (dense_row["accuracy"] - mean), 4),
                 "drop_points_ci": None if drop is None else [round(100 * drop["ci_low"], 4),
                                                              round(100 * drop["ci_high"], 4)],
                 "p_vs_dense": None if drop is None else drop["p"],
                 "macro_f1_mean": None if None in f1 else round(statistics.fmean(f1), 6), "winner": False}
        if all(PREFIX + "accuracy" in r for r in rs):
            entry[PREFIX + "accuracy_mean"] = round(statistics.fmean(r[PREFIX + "accuracy"] for r in rs), 6)
        out.append(entry)
    for keep in dict.fromkeys(e["keep_flops"] for e in out):
        best([e for e in out if e["keep_flops"] == keep], "accuracy_mean")["winner"] = True
    return out
