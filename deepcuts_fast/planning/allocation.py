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
from .checks import check_informative, check_layout, model_name
from .rank_match import rank_match

ALLOCATIONS = ("auto", "fisher", "normalized", "raw")


def comparable(model: nn.Module, scores: Scores, reference: Scores | None, allocation: str,
                minimums: tuple[int, int], warn: bool,
                unit_costs: list[tuple[float, float]] | None = None) -> tuple[Scores, str]:
    """(scores made comparable across layers and unit types, the allocation that did it); `minimums`: min_heads and
    min_neurons, for the check of the Fisher scores; `warn`: when "auto" falls back to "normalized" where comparing
    layers matters; `unit_costs`: per layer (a head's, a neuron's) cost in the budget's unit (None: 1 each)."""
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
                          "data), so each layer's heads and neurons are normalised to the same mean score per unit "
                          "of cost, which spreads the budget about evenly; score with calibration data for the "
                          "Fisher-referenced allocation", UserWarning, stacklevel=3)
    if allocation == "fisher":
        if loss is not scores:
            # The scores' weights hash was checked against the model; an equal one needs no second hashing.
            check_layout(model, loss)
            if loss.model_fingerprint != scores.model_fingerprint:
                raise DeepCutsError(f"the Fisher reference was computed on another model than the scores "
                                    f"({model_name(loss)} vs {model_name(scores)}); score both on one model")
            check_informative(loss, *minimums, what="the Fisher scores (allocation reference)")
            scores = rank_match(scores, loss)
    elif allocation == "normalized":
        scores = _normalised(scores, unit_costs)
    return scores, allocation


def _loss_estimate(scores: Scores, reference: Scores | None) -> Scores | None:
    """The Fisher scores to rank-match to: `reference`, else those the scores carry, else the scores themselves
    when they are Fisher's (a `Scores` is a mapping, so it is never tested for truth)."""
    if reference is not None:
        return reference
    if scores.fisher is not None:
        return scores.fisher
    return scores if scores.estimates_loss else None


def _normalised(scores: Scores, unit_costs: list[tuple[float, float]] | None) -> Scores:
    """Unit scores scaled inside every layer and unit type to a mean equal to that unit's cost, so every group
    offers the same score per cost on average and only the spread inside a group decides (all-zero groups stay
    zero). Without this, a head, which costs as much as dozens of neurons, would never win a unit of budget."""
    def scaled(t: torch.Tensor, cost: float) -> torch.Tensor:
        t = t.float().cpu()
        mean = t.mean() if t.numel() else torch.tensor(0.0)
        return t * (cost / mean) if mean > 0 else t

    units = scores.unit_scores()
    costs = unit_costs or [(1.0, 1.0)] * len(units["heads"])
    return Scores({}, scores.layout, {**scores.meta, "normalized": True},
                  heads=[scaled(h, c[0]) for h, c in zip(units["heads"], costs)],
                  neurons=[scaled(n, c[1]) for n, c in zip(units["neurons"], costs)])
