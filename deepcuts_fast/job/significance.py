"""The run's comparisons with their uncertainty: every "A beats B" of the report (best DeepCuts criterion vs best
baseline, a slim model vs dense, the retraining-free pipeline's chosen criterion vs the runner-up and vs dense)
as the test-accuracy difference with its 95% paired-bootstrap interval and McNemar's exact p-value, from the
per-example predictions every evaluated row keeps (`predictions`; the labels once, in `dense`).

A winner is named only where the difference is significant at 0.05 (`deepcuts_fast.stats.compare`); otherwise
the verdict is "tie". Rows over several calibration draws are pooled: each example's correctness is averaged over
the draws, then compared. Results without per-example predictions (written by older versions) get no test:
their comparisons are None and the report falls back to the bare difference.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..stats import compare, decode_ids
from .config import BASELINE_CRITERIA, DEEPCUTS_CRITERIA
from .held_out import best

DENSE = "dense"


def labels_of(results: dict) -> np.ndarray | None:
    """The test labels in evaluation order (from the dense evaluation), None where not recorded."""
    labels = results.get("dense", {}).get("labels")
    return None if labels is None else decode_ids(labels)


def num_classes(results: dict) -> int | None:
    """Classes in the test labels (None where they were not recorded)."""
    labels = results.get("dense", {}).get("labels")
    return None if labels is None else len(set(labels))


def multi_class(results: dict) -> bool:
    """Whether macro-F1 is worth showing next to accuracy: more than two classes."""
    return (num_classes(results) or 0) > 2


def _predictions(rows: dict | Sequence[dict], key: str) -> np.ndarray | None:
    """(draws, n) predicted ids of one row or of several draws' rows; None where any is missing."""
    rows = [rows] if isinstance(rows, dict) else list(rows)
    values = [r.get(key) for r in rows]
    if not values or any(v is None for v in values):
        return None
    decoded = [decode_ids(v) for v in values]
    if len({len(d) for d in decoded}) != 1:
        return None
    return np.stack(decoded)


def compare_rows(results: dict, a: dict | Sequence[dict], b: dict | Sequence[dict], names: tuple[str, str],
                 key_a: str = "predictions", key_b: str = "predictions") -> dict | None:
    """`stats.compare` of two rows (or lists of draws' rows) on the test split, as a dict; None without
    per-example predictions. `key_*`: which predictions of a row (`predictions_reconstructed` for refits)."""
    labels = labels_of(results)
    pa, pb = _predictions(a, key_a), _predictions(b, key_b)
    if labels is None or pa is None or pb is None or pa.shape[1] != labels.size or pb.shape[1] != labels.size:
        return None
    return compare(pa, pb, labels, names=names).to_dict()


def _entry(section: str, setting: str, what: str, c: dict | None) -> dict | None:
    return None if c is None else {"section": section, "setting": setting, "what": what, **c}


def _best_pair(rows: list[dict], key: str) -> tuple[dict | None, dict | None]:
    """(best DeepCuts row, best baseline row) by the validation value of `key` (the verdicts' margins)."""
    with_key = [r for r in rows if r.get(key) is not None]
    return (best([r for r in with_key if r["criterion"] in DEEPCUTS_CRITERIA], key),
            best([r for r in with_key if r["criterion"] in BASELINE_CRITERIA], key))


def claim_comparison(results: dict, rows: list[dict], key: str) -> dict | None:
    """Best DeepCuts criterion vs best of magnitude and gradient among `rows` (one grid point) on `key`."""
    dc_row, base_row = _best_pair(rows, key)
    if dc_row is None or base_row is None:
        return None
    pred = key.replace("accuracy", "predictions")
    return compare_rows(results, dc_row, base_row, (dc_row["criterion"], base_row["criterion"]), pred, pred)


def pipeline_groups(results: dict, keep: float) -> dict[str, list[dict]]:
    """The retraining-free rows at `keep`, per criterion (one row per calibration draw)."""
    out: dict[str, list[dict]] = {}
    for r in results.get("retraining_free") or []:
        if r["keep_flops"] == keep:
            out.setdefault(r["criterion"], []).append(r)
    return out


def comparisons(results: dict) -> list[dict]:
    """Every comparison the report states, in report order: paper mode and structured mode (best DeepCuts vs best
    baseline, single shot and reconstructed), slim models vs dense, and per budget the retraining-free pipeline's
    chosen criterion vs the runner-up and vs dense (pooled over draws). Empty without per-example predictions."""
    dense = results["dense"]
    out = []
    for c in sorted({r["compression"] for r in results.get("paper_mode", [])}):
        at = [r for r in results["paper_mode"] if r["compression"] == c]
        out.append(_entry("paper_mode", f"c={c:g}", "best DeepCuts vs best baseline",
                          claim_comparison(results, at, "accuracy")))
    structured = results.get("structured_mode") or []
    for keep in sorted({r["keep_flops"] for r in structured}, reverse=True):
        at = [r for r in structured if r["keep_flops"] == keep]
        setting = f"keep_flops {keep:g}"
        out.append(_entry("structured_mode", setting, "best DeepCuts vs best baseline, single shot",
                          claim_comparison(results, at, "accuracy")))
        out.append(_entry("structured_mode", setting, "best DeepCuts vs best baseline, reconstructed",
                          claim_comparison(results, at, "accuracy_reconstructed")))
        chosen = best(at, "accuracy_reconstructed")
        out.append(_entry("structured_mode", setting, f"{chosen['criterion']} reconstructed vs dense",
                          compare_rows(results, chosen, dense, (chosen["criterion"], DENSE),
                                       "predictions_reconstructed")))
    for r in results.get("structured_recovery") or []:
        if r.get("epochs"):
            out.append(_entry("structured_recovery", f"keep_flops {r['keep_flops']:g}",
                              f"{r['criterion']} after {r['epochs']:g} epoch(s) of recovery vs dense",
                              compare_rows(results, r, dense, (r["criterion"], DENSE))))
    for e in (e for e in results.get("retraining_free_summary") or [] if e["winner"]):
        keep, groups = e["keep_flops"], pipeline_groups(results, e["keep_flops"])
        setting = f"keep_flops {keep:g}"
        others = [x for x in results["retraining_free_summary"] if x["keep_flops"] == keep and not x["winner"]]
        runner = best(others, "accuracy_mean")
        if runner is not None:
            out.append(_entry("retraining_free", setting, "chosen criterion vs runner-up (pooled over draws)",
                              compare_rows(results, groups[e["criterion"]], groups[runner["criterion"]],
                                           (e["criterion"], runner["criterion"]))))
        out.append(_entry("retraining_free", setting, "chosen criterion vs dense (pooled over draws)",
                          compare_rows(results, groups[e["criterion"]], dense, (e["criterion"], DENSE))))
    return [c for c in out if c is not None]
