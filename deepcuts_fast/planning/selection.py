"""Which units a plan keeps under a fraction, FLOP or parameter budget, from scores already made comparable.

Fractions of heads / neurons keep the top-scored units; FLOP and parameter budgets keep units in order of score per
unit of cost (a greedy knapsack), so a cheap neuron and an expensive head compete on equal terms; `scope="layer"`
applies the target inside every layer, `"global"` over the whole encoder. Also the ranking every plan shares (ties
by position) and the rounding of FFN widths to a multiple. The time budget's knapsack is `speedup.py`'s.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..arch import encoder_layers
from ..flops import layer_costs


def select(model: nn.Module, head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor],
           asked: dict[str, float], budget: str, seq_len: int, scope: str, min_heads: int,
           min_neurons: int, dropped: frozenset[int] = frozenset()) -> tuple[list[list[int]], list[list[int]]]:
    """(kept heads, kept neurons) per layer under the budget, before FFN widths are rounded; the layers in
    `dropped` (removed whole, global scope only) keep nothing, and what they cost counts as spent."""
    if budget == "fraction":
        return (top_fraction(head_scores, asked.get("keep_heads"), scope, min_heads, dropped),
                top_fraction(neuron_scores, asked.get("keep_neurons"), scope, min_neurons, dropped))
    return knapsack(model, head_scores, neuron_scores, asked[f"keep_{budget}"], budget, seq_len, scope,
                    min_heads, min_neurons, dropped)


def top_fraction(scores: list[torch.Tensor], fraction: float | None, scope: str, minimum: int,
                 dropped: frozenset[int] = frozenset()) -> list[list[int]]:
    """Keep the top `fraction` of units (all when None), per layer or over all layers (those of `dropped` layers
    count in the total but are never kept)."""
    if fraction is None:
        counts = [s.numel() for s in scores]
    elif scope == "layer":
        counts = [round(fraction * s.numel()) for s in scores]
    else:
        flat = torch.cat([s if i not in dropped else torch.full_like(s, -torch.inf) for i, s in enumerate(scores)])
        k = min(round(fraction * flat.numel()), sum(s.numel() for i, s in enumerate(scores) if i not in dropped))
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[ranked(flat)[:k]] = True
        counts = [int(c.sum()) for c in keep.split([s.numel() for s in scores])]
    return [[] if i in dropped else top(s, max(c, min(minimum, s.numel())))
            for i, (s, c) in enumerate(zip(scores, counts))]


class _Unit(NamedTuple):
    """A head or an FFN neuron as the knapsack weighs it."""

    layer: int
    unit_type: int  # 0: head, 1: FFN neuron
    index: int
    value: float  # score per unit of cost
    cost: float
    forced: bool  # kept whatever the budget (min_heads / min_neurons)


def unit_costs(model: nn.Module, budget_kind: str, seq_len: int) -> list[tuple[float, float]]:
    """Per layer, what one head and one FFN neuron cost in the budget's unit: FLOPs at `seq_len` (also standing in
    for time), parameters, or 1 each for fractions of heads / neurons."""
    if budget_kind == "fraction":
        return [(1.0, 1.0)] * len(encoder_layers(model))
    if budget_kind == "params":
        return [(c.head_params(), c.neuron_params()) for c in layer_costs(model)]
    return [(c.head_flops(seq_len), c.neuron_flops(seq_len)) for c in layer_costs(model)]


def knapsack(model, head_scores, neuron_scores, fraction, budget_kind, seq_len, scope, min_heads, min_neurons,
             dropped: frozenset[int] = frozenset()):
    """Greedy by score per cost: keep units until `fraction` of the cost is spent; units of `dropped` layers count
    in the total cost but are never kept."""
    costs = layer_costs(model)
    unit_cost = unit_costs(model, budget_kind, seq_len)
    units: list[_Unit] = []
    for i, (hs, ns) in enumerate(zip(head_scores, neuron_scores)):
        for unit_type, s, minimum in ((0, hs, min_heads), (1, ns, min_neurons)):
            forced = set() if i in dropped else set(top(s, min(minimum, s.numel())))
            c = unit_cost[i][unit_type]
            units += [_Unit(i, unit_type, j, float(s[j]) / c, c, j in forced) for j in range(s.numel())]
    groups = [units] if scope == "global" else [[u for u in units if u.layer == i] for i in range(len(costs))]
    kept = [([], []) for _ in costs]
    for group in groups:
        budget = fraction * sum(u.cost for u in group)
        spent = sum(u.cost for u in group if u.forced)
        for u in sorted(group, key=lambda u: (not u.forced, -u.value)):
            if u.layer in dropped:
                continue
            if u.forced or spent + u.cost <= budget:
                kept[u.layer][u.unit_type].append(u.index)
                spent += 0 if u.forced else u.cost
    return [k[0] for k in kept], [k[1] for k in kept]


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """Unit indices from the highest score down, equal scores by position (the lower index first), so that ties,
    which a warning reports for constant scores, are broken the same way on every machine."""
    return torch.sort(scores, descending=True, stable=True).indices


def top(scores: torch.Tensor, k: int) -> list[int]:
    """The sorted indices of the `k` highest scores (`ranked`)."""
    return sorted(ranked(scores)[:k].tolist()) if k else []


def round_width(scores: torch.Tensor, k: int, multiple: int, minimum: int = 0) -> list[int]:
    """The top units of a layer with their count rounded to the nearest multiple (0 stays 0), and
    rounded up instead where rounding down would go below `minimum`."""
    if multiple > 1 and k:
        rounded = max(multiple, multiple * round(k / multiple))
        if rounded < minimum:
            rounded = multiple * math.ceil(minimum / multiple)
        k = min(scores.numel(), rounded)
    return top(scores, k)
