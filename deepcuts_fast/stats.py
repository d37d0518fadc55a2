"""Paired statistics of two classifiers on the same examples: macro-F1, the exact McNemar test, the paired
bootstrap confidence interval of a metric difference, and `compare`, which turns them into a verdict.

Outcomes are predicted class ids in data order, one row per model, or one row per calibration draw of a
model (shape (draws, n)). With several draws each example's correctness is averaged over the draws first, so
the example stays the unit of resampling and testing ("pooled over draws"): McNemar becomes the exact sign
test on the examples where the averaged correctness differs, which is McNemar's test itself for one draw.

Per-example ids travel in JSON as one character per example (`encode_ids`), so a 2,000-example test split
costs 2,000 bytes per evaluated row.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # class id -> one character
ALPHA = 0.05  # significance level of a verdict
LEVEL = 0.95  # confidence level of an interval
RESAMPLES = 2000
METRICS = ("accuracy", "macro_f1")


# ---------------------------------------------------------------------------------------------
# Compact per-example ids


def encode_ids(ids: Sequence[int] | np.ndarray) -> str | list[int]:
    """Class ids as one character each ('0'-'9', 'a'-'z', 'A'-'Z'), or a plain list where an id exceeds 61."""
    values = [int(i) for i in np.asarray(ids).reshape(-1)]
    if all(0 <= v < len(ALPHABET) for v in values):
        return "".join(ALPHABET[v] for v in values)
    return values


def decode_ids(value: str | Sequence[int] | np.ndarray) -> np.ndarray:
    """The int64 ids `encode_ids` wrote (a string or a list)."""
    if isinstance(value, str):
        lookup = {c: i for i, c in enumerate(ALPHABET)}
        try:
            return np.fromiter((lookup[c] for c in value), dtype=np.int64, count=len(value))
        except KeyError as err:
            raise ValueError(f"not an encoded class id: {err.args[0]!r}") from None
    return np.asarray(value, dtype=np.int64).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Metrics


def macro_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes that occur in `labels` or
    `predictions` (as scikit-learn's `f1_score(average="macro")`)."""
    pred, lab = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if pred.shape != lab.shape or pred.size == 0:
        raise ValueError(f"macro_f1 needs as many predictions as labels, at least one (got {pred.size}, {lab.size})")
    scores = []
    for k in np.union1d(pred, lab):
        tp = np.sum((pred == k) & (lab == k))
        wrong = np.sum(pred != lab, where=(pred == k) | (lab == k))
        scores.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(scores))


def _outcomes(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    """(predictions as (draws, n), labels as (n,)), checked to pair up."""
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    pred = np.asarray(predictions, dtype=np.int64)
    pred = pred.reshape(1, -1) if pred.ndim == 1 else pred
    if pred.ndim != 2 or pred.shape[1] != lab.size or lab.size == 0:
        raise ValueError(f"predictions of shape {np.shape(predictions)} do not pair with {lab.size} labels")
    return pred, lab


def metric_of(predictions, labels, name: str = "accuracy") -> float:
    """`accuracy` or `macro_f1` of predictions (n,) or (draws, n), averaged over the draws."""
    pred, lab = _outcomes(predictions, labels)
    if name == "accuracy":
        return float(np.mean(pred == lab))
    if name == "macro_f1":
        return float(np.mean([macro_f1(p, lab) for p in pred]))
    raise ValueError(f"metric is one of {', '.join(METRICS)}, got {name!r}")


# ---------------------------------------------------------------------------------------------
# Tests


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of `k` successes in `n` fair coin flips: 2 P(X <= min(k, n - k)), at most 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n)


def mcnemar(correct_a, correct_b) -> float:
    """Exact McNemar p-value (binomial on the discordant pairs) of paired 0/1 correctness, shape (n,) or
    (draws, n); with draws, the exact sign test on the per-example correctness averaged over the draws."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    a = a.mean(axis=0) if a.ndim == 2 else a
    b = b.mean(axis=0) if b.ndim == 2 else b
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.shape} vs {b.shape}")
    d = a - b
    return binomial_two_sided(int(np.sum(d > 0)), int(np.sum(d != 0)))


def _resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts: how often each example is drawn in each bootstrap resample of size n."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(idx.reshape(-1), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _weighted_metric(pred: np.ndarray, lab: np.ndarray, weights: np.ndarray, name: str) -> np.ndarray:
    """The metric of (draws, n) predictions under each row of example `weights`, averaged over draws: (R,)."""
    if name == "accuracy":
        return weights @ (pred == lab).mean(axis=0) / weights.sum(axis=1)
    if name != "macro_f1":
        raise ValueError(f"metric is one of {', '.join(METRICS)}, got {name!r}")
    classes = np.union1d(np.unique(pred), lab)
    per_draw = []
    for p in pred:
        tp = weights @ np.stack([(p == k) & (lab == k) for k in classes], axis=1)
        wrong = weights @ np.stack([(p != lab) & ((p == k) | (lab == k)) for k in classes], axis=1)
        denom = 2 * tp + wrong
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)  # absent class: not counted
        per_draw.append(np.nanmean(f1, axis=1))
    return np.mean(per_draw, axis=0)


def bootstrap_diff(pred_a, pred_b, labels, name: str = "accuracy", resamples: int = RESAMPLES, seed: int = 0
                   ) -> np.ndarray:
    """Paired bootstrap replicates (resamples,) of metric(a) - metric(b): the same resampled examples for both
    (and for every draw of either)."""
    a, lab = _outcomes(pred_a, labels)
    b, _ = _outcomes(pred_b, labels)
    w = _resample_weights(lab.size, resamples, seed)
    return _weighted_metric(a, lab, w, name) - _weighted_metric(b, lab, w, name)


def bootstrap_ci(pred_a, pred_b, labels, name: str = "accuracy", resamples: int = RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile paired-bootstrap interval of metric(a) - metric(b) (seeded, so repeatable)."""
    reps = bootstrap_diff(pred_a, pred_b, labels, name, resamples, seed)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Comparison:
    """metric(a) - metric(b) with its paired-bootstrap interval and p-value, and the verdict: the better one's name
    where p < `alpha` and the interval excludes 0 (both pointing its way), else "tie"."""

    a: str
    b: str
    metric: str
    value_a: float
    value_b: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    test: str  # "mcnemar" (exact; a sign test on draw-averaged correctness for several draws) or "bootstrap"
    verdict: str
    n: int  # examples
    draws: tuple[int, int]  # draws of a and of b

    @property
    def significant(self) -> bool:
        return self.verdict != "tie"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["draws"] = list(self.draws)
        for key in ("value_a", "value_b", "diff", "ci_low", "ci_high"):
            out[key] = round(out[key], 6)
        out["p"] = float(f"{self.p:.4g}")
        return out


def _predictions_and_labels(x, labels) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of an `EvalResult`-like object (`.predictions`, `.labels`) or of a plain array."""
    pred = getattr(x, "predictions", x)
    lab = getattr(x, "labels", None) if labels is None else labels
    if pred is None or lab is None:
        raise ValueError("a paired comparison needs per-example predictions and the labels")
    return _outcomes(pred, lab)


def compare(a, b, labels=None, names: tuple[str, str] = ("a", "b"), metric: str = "accuracy",
            alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> Comparison:
    """Compare two models on the same examples: `a` and `b` are `EvalResult`s (which carry their predictions and
    labels) or predicted ids (n,) / (draws, n) with `labels`. The p-value is McNemar's exact test for accuracy
    and the two-sided paired-bootstrap p for macro-F1."""
    pa, lab = _predictions_and_labels(a, labels)
    pb, lab_b = _predictions_and_labels(b, labels)
    if not np.array_equal(lab, lab_b):
        raise ValueError("the two results were measured on different labels; compare them on the same examples")
    reps = bootstrap_diff(pa, pb, lab, metric, resamples, seed)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    va, vb = metric_of(pa, lab, metric), metric_of(pb, lab, metric)
    diff = va - vb
    if metric == "accuracy":
        ca, cb = (pa == lab).mean(axis=0), (pb == lab).mean(axis=0)
        p, test = mcnemar(ca, cb), "mcnemar"
        direction = int(np.sum(ca > cb)) - int(np.sum(ca < cb))  # the test's own direction must agree with diff
    else:
        p, test = min(1.0, 2 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0)))), "bootstrap"
        direction = diff
    significant = p < alpha and not low <= 0 <= high  # the test and the interval must agree
    if significant and diff > 0 and direction > 0:
        verdict = names[0]
    elif significant and diff < 0 and direction < 0:
        verdict = names[1]
    else:
        verdict = "tie"
    return Comparison(a=names[0], b=names[1], metric=metric, value_a=va, value_b=vb, diff=diff, ci_low=float(low),
                      ci_high=float(high), p=p, test=test, verdict=verdict, n=int(lab.size),
                      draws=(int(pa.shape[0]), int(pb.shape[0])))


# -- text of a comparison (`Comparison.to_dict()`), as reports and benchmark tables print it -----------------


def points(c: dict | None) -> str:
    """'+1.20 [+0.35, +2.05] points, p=0.006' (the difference a - b); '' without a test."""
    if c is None:
        return ""
    return f"{100 * c['diff']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}] points, {p_text(c['p'])}"


def format_p(p: float) -> str:
    """A p-value for a table cell: '0.012', or '<0.001'."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    """A p-value in a sentence: 'p=0.012', or 'p<0.001'."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
