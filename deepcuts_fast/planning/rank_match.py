"""Make unit scores of any criterion comparable across layers and unit types.

A criterion's raw scores have a different scale in every layer and for heads vs neurons, so a
global budget spent on them lands wherever that scale happens to be large. Rank matching against a
reference criterion whose scores estimate the loss increase of removing a unit (Fisher: the
diagonal of the empirical Fisher of the unit masks) fixes that: inside each layer and unit type,
the unit ranked k-th by the criterion gets the reference score ranked k-th there. How many units a
layer keeps then follows the reference's loss estimate; which ones, the criterion.
"""
from __future__ import annotations

import torch

from ..errors import DeepCutsError
from ..scoring.scores import Scores


def rank_match(scores: Scores, reference: Scores) -> Scores:
    """Unit scores with `scores`' order inside every (layer, unit type) and `reference`'s values."""
    if len(scores.layout) != len(reference.layout):
        raise DeepCutsError(f"reference scores cover {len(reference.layout)} layers, the scores "
                            f"{len(scores.layout)}; score both on the same model")
    heads, neurons = [], []
    for i in range(len(scores.layout)):
        heads.append(_match(scores.heads(i), reference.heads(i), f"layer {i} heads"))
        neurons.append(_match(scores.neurons(i), reference.neurons(i), f"layer {i} neurons"))
    meta = {**scores.meta, "rank_matched_to": reference.criterion}
    return Scores({}, scores.layout, meta, heads=heads, neurons=neurons)


def _match(order_by: torch.Tensor, values: torch.Tensor, what: str) -> torch.Tensor:
    """`values` sorted and placed where `order_by` has the same rank (ties keep index order)."""
    if order_by.numel() != values.numel():
        raise DeepCutsError(f"{what}: {order_by.numel()} scores but {values.numel()} reference scores")
    out = torch.empty_like(values, dtype=torch.float32).cpu()
    ranks = torch.sort(order_by.float().cpu(), stable=True).indices
    out[ranks] = torch.sort(values.float().cpu(), stable=True).values
    return out
