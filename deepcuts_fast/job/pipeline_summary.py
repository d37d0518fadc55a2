"""The retraining-free pipeline over calibration draws: per (FLOP budget, criterion, method) the mean test
accuracy and its range over the draws, the drop from dense, the difference from Fisher (one-shot for one-shot
rows, Fisher's iterative row for iterative ones) and, for iterative rows, from the one-shot method with the same
criterion, each with its 95% interval and p-value
(pooled over the draws), and per budget the winner: the row with the best mean validation accuracy (the test mean
where the data has no validation split)."""
from __future__ import annotations

import statistics

from .held_out import PREFIX, best
from .significance import DENSE, compare_rows


def pipeline_summary(rows: list[dict], dense: dict | float) -> list[dict]:
    """One entry per (keep_flops, criterion) in row order: draws, seeds, mean / min / max test accuracy, the mean
    drop from dense in points, the mean validation accuracy, and `winner` (chosen on validation; ties: first).

    `dense`: the dense evaluation (with its per-example predictions and labels, the drop also gets its 95%
    paired-bootstrap interval `drop_points_ci` and McNemar p `p_vs_dense`, pooled over the draws), or just its
    accuracy (then those are None). `vs_fisher` (other criteria) and `vs_one_shot` (iterative rows): the comparison
    with that row on the draws both ran (`stats.Comparison.to_dict`), None where there is none to test."""
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
                 "accuracy_mean": round(mean, 6), "accuracy_min": round(min(accs), 6),
                 "accuracy_max": round(max(accs), 6),  # rounded alike, so the range holds its mean
                 "drop_points_mean": round(100 * (dense_row["accuracy"] - mean), 4),
                 "drop_points_ci": None if drop is None else [round(100 * drop["ci_low"], 4),
                                                              round(100 * drop["ci_high"], 4)],
                 "p_vs_dense": None if drop is None else drop["p"],
                 "macro_f1_mean": None if None in f1 else round(statistics.fmean(f1), 6), "winner": False}
        if all(PREFIX + "accuracy" in r for r in rs):
            entry[PREFIX + "accuracy_mean"] = round(statistics.fmean(r[PREFIX + "accuracy"] for r in rs), 6)
        method = rs[0].get("method", "one-shot")
        base = crit.removesuffix(f" ({method})")
        fisher = "fisher" if method == "one-shot" else "fisher (iterative)"  # the iterative baseline of both kinds
        entry["vs_fisher"] = None if base == "fisher" else _versus(results, rs, groups.get((keep, fisher)), crit, fisher)
        entry["vs_one_shot"] = None if method == "one-shot" else _versus(results, rs, groups.get((keep, base)), crit,
                                                                          base)
        out.append(entry)
    for keep in dict.fromkeys(e["keep_flops"] for e in out):
        best([e for e in out if e["keep_flops"] == keep], "accuracy_mean")["winner"] = True
    return out


def _versus(results: dict, rows: list[dict], others: list[dict] | None, name: str, other: str) -> dict | None:
    """`rows` against `others` on the calibration draws both ran, pooled; None without such draws or predictions."""
    if not others:
        return None
    seeds = {r.get("seed") for r in rows} & {r.get("seed") for r in others}
    pick = lambda group: sorted((r for r in group if r.get("seed") in seeds), key=lambda r: str(r.get("seed")))  # noqa: E731
    return compare_rows(results, pick(rows), pick(others), (name, other)) if seeds else None
