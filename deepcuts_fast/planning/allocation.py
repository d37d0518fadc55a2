"""How `plan` makes unit scores of different layers and unit types comparable before it spends one budget
on them (`allocation`): rank-matched to Fisher's loss estimate ("fisher"), normalised per layer and unit
type ("normalized"), or as they are ("raw", the baseline); "auto" picks "fisher" where Fisher's scores
are at hand (every scoring pass with data computes them: `Scores.fisher`), else "normalized".
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import DeepCutsError, short_repr
from ..scoring.scores import Scores
from .checks import check_informative, check_scores, model_name
from .rank_match import rank_match

ALLOCATIONS = ("auto", "fisher", "normalized", "raw")


def comparable(model: nn.Module, scores: Scores, reference: Scores | None, allocation: str,
                minimums: tuple[int, int], warn: bool) -> tuple[Scores, str]:
    """(scores made comparable across layers and unit types, the allocation that did it); `minimums`: min_heads and
    min_neurons, for the check of the Fisher scores; `warn`: when "auto" falls back to "normalized" where comparing
    layers matters."""
    if not isinstance(allocation, str) or allocation not in ALLOCATIONS:
        raise DeepCutsError(f"unknown allocation {short_repr(allocation)}; choose one of {', '.join(ALLOCATIONS)}")
    if reference is not None and allocation not in ("auto", "fisher"):
        raise DeepCutsError(f"reference= is the loss estimate of allocation 'fisher'; drop it or the "
                            f"allocation={allocation!r}")
    loss = _loss_estimate(scores, reference)
    if allocation == "fisher" and loss is None:
        raise DeepCutsError("allocation='fisher' needs Fisher's scores: score with calibration data (every "
                            "scoring pass with data computes them), or pass reference=dc.score(model, batches, "
                            "'fisher', granularity='unit')")
    if allocation == "auto":
        allocation = "fisher" if loss is not None else "normalized"
        if loss is None and warn:
            warnings.warn(f"{scores.criterion or 'these'} scores carry no Fisher loss estimate (scored without "
                          "data), so each layer's scores are normalised to mean 1 to compare layers; score with "
                          "calibration data for the Fisher-referenced allocation", UserWarning, stacklevel=3)
    if allocation == "fisher":
        if loss is not scores:
            check_scores(model, loss)
            check_informative(loss, *minimums, what="the Fisher scores (allocation reference)")
            if loss.model_fingerprint != scores.model_fingerprint:
                raise DeepCutsError(f"the Fisher reference was computed on another model than the scores "
                                    f"({model_name(loss)} vs {model_name(scores)}); score both on one model")
            scores = rank_match(scores, loss)
    elif allocation == "normalized":
        scores = _normalised(scores)
    return scores, allocation


def _loss_estimate(scores: Scores, reference: Scores | None) -> Scores | None:
    """The Fisher scores to rank-match to: `reference`, else those the scores carry, else the scores themselves
    when they are Fisher's (a `Scores` is a mapping, so it is never tested for truth)."""
    if reference is not None:
        return reference
    if scores.fisher is not None:
        return scores.fisher
    return scores if scores.criterion == "fisher" else None


def _normalised(scores: Scores) -> Scores:
    """Unit scores divided by their mean inside every layer and unit type (all-zero groups stay zero)."""
    def unit_mean(t: torch.Tensor) -> torch.Tensor:
        t = t.float().cpu()
        mean = t.mean() if t.numel() else torch.tensor(0.0)
        return t / mean if mean > 0 else t

    units = scores.unit_scores()
    return Scores({}, scores.layout, {**scores.meta, "normalized": True},
                  heads=[unit_mean(h) for h in units["heads"]], neurons=[unit_mean(n) for n in units["neurons"]])
