"""The retraining-free pipeline over calibration draws: per (FLOP budget, criterion) the mean accuracy
and its range over the draws, and per budget the criterion with the best mean (the winner)."""
from __future__ import annotations

import statistics


def pipeline_summary(rows: list[dict], dense: float) -> list[dict]:
    """One entry per (keep_flops, criterion) in row order: draws, seeds, mean / min / max accuracy, the mean
    drop from `dense` in points, and `winner` (best mean at that budget; ties go to the first criterion)."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["keep_flops"], r["criterion"]), []).append(r)
    out = []
    for (keep, crit), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        mean = statistics.fmean(accs)
        out.append({"keep_flops": keep, "criterion": crit, "draws": len(rs), "seeds": [r.get("seed") for r in rs],
                    "accuracy_mean": round(mean, 6), "accuracy_min": min(accs), "accuracy_max": max(accs),
                    "drop_points_mean": round(100 * (dense - mean), 4), "winner": False})
    for keep in dict.fromkeys(e["keep_flops"] for e in out):
        at = [e for e in out if e["keep_flops"] == keep]
        max(at, key=lambda e: (e["accuracy_mean"], -at.index(e)))["winner"] = True
    return out
