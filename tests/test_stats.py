"""Paired statistics (deepcuts_fast.stats) on hand-checkable cases: the compact id encoding, macro-F1, the exact
McNemar test, the paired bootstrap and `compare`'s verdicts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from deepcuts_fast import stats

# The portable pass (make test-portable) skips this file: paired statistics on hand-checkable integer cases
pytestmark = pytest.mark.isa_independent


def test_ids_round_trip_compactly():
    ids = [0, 1, 2, 9, 10, 35, 61]
    encoded = stats.encode_ids(ids)
    assert encoded == "0129azZ" and stats.decode_ids(encoded).tolist() == ids
    assert stats.encode_ids([3, 62]) == [3, 62] and stats.decode_ids([3, 62]).tolist() == [3, 62]
    assert stats.decode_ids("").size == 0
    with pytest.raises(ValueError, match="class id"):
        stats.decode_ids("01-")


def test_macro_f1_by_hand():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 1 -> 2/4; class 2: tp 1, fp 1, fn 0 -> 2/3
    assert stats.macro_f1(preds, labels) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert stats.macro_f1(labels, labels) == 1.0
    assert stats.macro_f1([1, 1], [0, 0]) == 0.0  # both classes seen, neither right
    # binary: the mean of both classes' F1, not the positive class's alone
    assert stats.macro_f1([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx((2 / 3 + 0.8) / 2)


def test_binomial_and_mcnemar_by_hand():
    assert stats.binomial_two_sided(0, 0) == 1.0
    assert stats.binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert stats.binomial_two_sided(1, 5) == pytest.approx(2 * 6 / 32)
    assert stats.binomial_two_sided(3, 6) == 1.0  # capped
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 1], bool)  # discordant: a right 3 times, b right once
    assert stats.mcnemar(a, b) == pytest.approx(2 * (1 + 4) / 16)
    assert stats.mcnemar(a, a) == 1.0
    # several draws: the sign test on the draw-averaged correctness
    assert stats.mcnemar(np.stack([a, b]), b) == stats.mcnemar(a, b)


def test_identical_predictions_are_a_tie_with_p_1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    preds = np.where(rng.random(500) < 0.7, labels, (labels + 1) % 3)
    c = stats.compare(preds, preds.copy(), labels, names=("x", "y"))
    assert (c.p, c.diff, c.ci_low, c.ci_high, c.verdict) == (1.0, 0.0, 0.0, 0.0, "tie") and not c.significant


def test_one_model_right_on_every_discordant_pair_wins():
    labels = np.zeros(2000, int)
    a = np.zeros(2000, int)
    b = a.copy()
    b[:100] = 1  # b wrong on 100 examples a gets right; they agree on the rest
    c = stats.compare(a, b, labels, names=("a", "b"))
    assert c.p == pytest.approx(2 * 0.5 ** 100) and c.verdict == "a" and c.diff == pytest.approx(0.05)
    assert 0 < c.ci_low < 0.05 < c.ci_high
    assert stats.compare(b, a, labels, names=("b", "a")).verdict == "a"  # the better one, either way round
    small = stats.compare(a[:10], np.r_[1, a[1:10]], labels[:10], names=("a", "b"))
    assert small.p == 1.0 and small.verdict == "tie"  # one discordant pair proves nothing


def test_bootstrap_interval_covers_the_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 800)
    a = np.where(rng.random(800) < 0.80, labels, 1 - labels)
    b = np.where(rng.random(800) < 0.75, labels, 1 - labels)
    for metric in stats.METRICS:
        low, high = stats.bootstrap_ci(a, b, labels, metric, seed=3)
        diff = stats.metric_of(a, labels, metric) - stats.metric_of(b, labels, metric)
        assert low < diff < high and high - low < 0.15
        assert (low, high) == stats.bootstrap_ci(a, b, labels, metric, seed=3)
        assert (low, high) != stats.bootstrap_ci(a, b, labels, metric, seed=4)
    assert stats.compare(a, b, labels) == stats.compare(a, b, labels)
    # the unweighted bootstrap replicate of the accuracy difference is the plain difference of means
    reps = stats.bootstrap_diff(a, b, labels, resamples=50, seed=0)
    assert reps.shape == (50,) and abs(reps.mean() - (np.mean(a == labels) - np.mean(b == labels))) < 0.02


def test_compare_takes_eval_results_and_draws():
    from deepcuts_fast.train import EvalResult

    labels = (0, 1, 2, 2, 1, 0)
    r1 = EvalResult(loss=0.0, accuracy=1.0, mse=None, pearson=None, n=6, macro_f1=1.0, predictions=labels,
                    labels=labels)
    r2 = EvalResult(loss=0.0, accuracy=0.5, mse=None, pearson=None, n=6, macro_f1=0.5,
                    predictions=(0, 1, 2, 0, 0, 1), labels=labels)
    c = stats.compare(r1, r2, names=("dense", "slim"))
    assert c.value_a == 1.0 and c.value_b == 0.5 and c.n == 6 and c.draws == (1, 1) and c.test == "mcnemar"
    assert c.verdict == "tie" and c.p == pytest.approx(2 * 0.5 ** 3)  # 3 discordant pairs: p = 0.25
    draws = np.stack([r1.predictions, r2.predictions])
    pooled = stats.compare(draws, r2.predictions, labels)
    assert pooled.draws == (2, 1) and pooled.value_a == pytest.approx(0.75) and pooled.diff == pytest.approx(0.25)
    f1 = stats.compare(r1, r2, metric="macro_f1")
    assert f1.test == "bootstrap" and f1.value_a == 1.0 and math.isclose(f1.diff, 1.0 - stats.macro_f1(
        r2.predictions, labels))
    d = c.to_dict()
    assert d["draws"] == [1, 1] and set(d) >= {"diff", "ci_low", "ci_high", "p", "verdict"}
    with pytest.raises(ValueError, match="different labels"):
        stats.compare(r1, EvalResult(0.0, 1.0, None, None, 6, 1.0, labels, (0,) * 6))
    with pytest.raises(ValueError, match="predictions"):
        stats.compare(EvalResult(0.0, None, 0.1, 0.5, 6), r2)
