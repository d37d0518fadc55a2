"""The retraining-free pipeline over calibration draws: per (FLOP budget, criterion) the mean test accuracy
and its range over the draws, and per budget the winner: the criterion with the best mean validation
accuracy (the test mean where the data has no validation split)."""
from __future__ import annotations

import statistics

from .held_out import PREFIX, best


def pipeline_summary(rows: list[dict], dense: float) -> list[dict]:
    """One entry per (keep_flops, criterion) in row order: draws, seeds, mean / min / max test accuracy, the mean
    drop from `dense` in points, the mean validation accuracy, and `winner` (chosen on validation; ties: first)."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["keep_flops"], r["criterion"]), []).append(r)
    out = []
    for (keep, crit), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        mean = statistics.fmean(accs)
        entry = {"keep_flops": keep, "criterion": crit, "draws": len(rs), "seeds": [r.get("seed") for r in rs],
                 "accuracy_mean": round(mean, 6), "accuracy_min": min(accs), "accuracy_max": max(accs),
                 "drop_points_mean": round(100 * (dense - mean), 4), "winner": False}
        if all(PREFIX + "accuracy" in r for r in rs):
            entry[PREFIX + "accuracy_mean"] = round(statistics.fmean(r[PREFIX + "accuracy"] for r in rs), 6)
        out.append(entry)
    for keep in dict.fromkeys(e["keep_flops"] for e in out):
        best([e for e in out if e["keep_flops"] == keep], "accuracy_mean")["winner"] = True
    return out
