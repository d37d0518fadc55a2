"""Which units a plan keeps under a speedup: a budget of time, priced by a latency table (`latency_table.py`).

Units cost their marginal time in a per-layer table measured on the target device, which is not linear in the count
(the first head of a layer pays for running attention at all), so this knapsack steps along each layer's upper
concave hull of (time, score) instead of weighing units one by one as `selection.py`'s does; with `scope="layer"`
every layer keeps the same fraction of its unit time. Here too: refusing a speedup out of reach, and the warning
where the predicted time misses the asked one.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError
from .budget import SLACK, TOLERANCE
from .latency_table import LatencyTable
from .selection import top

FREE = 1e-12  # milliseconds: a step that costs no more than this counts as free in the time knapsack

SPEEDUP_MULTIPLE_OF = 16  # FFN widths of a speedup plan by default: a multiple of the SIMD / tensor-core width


class _Steps(NamedTuple):
    """The counts one layer's heads (or FFN neurons) may keep, with the summed top scores and the table time of
    each: the options the time knapsack chooses from."""

    layer: int
    unit_type: int  # 0: heads, 1: FFN neurons
    counts: list[int]  # ascending; counts[0] is the forced minimum
    value: list[float]  # sum of the top `count` scores
    cost: list[float]  # milliseconds the table gives that many units


def speedup_select(model: nn.Module, head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor],
                   table: LatencyTable, speed: float, scope: str, constraints: tuple[int, int, int],
                   dropped: frozenset[int] = frozenset()):
    """(kept heads, kept neurons, timing record) per layer whose predicted time is at most the dense model's over
    `speed`; `constraints`: min_heads, min_neurons, multiple_of (which win over the budget). The layers in `dropped`
    are removed whole: no units, and no per-layer time (LayerNorms, residual adds) either."""
    layers = encoder_layers(model)
    dense = table.model_ms([layer.num_heads for layer in layers], [layer.ffn_width for layer in layers])
    fixed = table.fixed_ms + (len(layers) - len(dropped)) * table.layer_ms
    groups = [g for g in _time_steps(head_scores, neuron_scores, table, constraints) if g.layer not in dropped]
    _check_reachable(speed, dense, fixed, table)
    if scope == "global":
        positions = _spend_time(groups, dense / speed - fixed)
    else:  # every layer keeps the same fraction of its unit time
        positions = _spend_per_layer(groups, 1 - (dense - dense / speed) / (dense - fixed) if dense > fixed else 1.0)
    counts = [[0, 0] for _ in layers]
    for g, p in zip(groups, positions):
        counts[g.layer][g.unit_type] = g.counts[p]
    if not any(h or n for h, n in counts):
        raise DeepCutsError(f"speedup {speed:g} leaves no time for any head or FFN neuron on this device "
                            f"({_where(table)}); ask for a smaller speedup")
    kept = [c for i, c in enumerate(counts) if i not in dropped]
    predicted = table.model_ms([h for h, _ in kept], [n for _, n in kept])
    _warn_if_slow(speed, dense, predicted, constraints)
    heads = [top(s, h) for s, (h, _) in zip(head_scores, counts)]
    neurons = [top(s, n) for s, (_, n) in zip(neuron_scores, counts)]
    return heads, neurons, _timing_record(table, dense, predicted)


def _timing_record(table: LatencyTable, dense: float, predicted: float) -> dict:
    """What `plan.target` records of a speedup plan: the prediction and the table it was made on."""
    s = table.settings
    return {"predicted_speedup": round(dense / predicted, 4), "batch_size": s.get("batch_size"),
            "device": s.get("device"), "dtype": s.get("dtype"), "latency_table": table.key,
            "dense_ms": round(dense, 4), "predicted_ms": round(predicted, 4)}


def _spend_per_layer(groups: list[_Steps], keep: float) -> list[int]:
    """`_spend_time` inside every layer, on `keep` times the layer's dense unit time."""
    positions = [0] * len(groups)
    for layer in sorted({g.layer for g in groups}):
        mine = [i for i, g in enumerate(groups) if g.layer == layer]
        spent = _spend_time([groups[i] for i in mine], keep * sum(groups[i].cost[-1] for i in mine))
        for i, position in zip(mine, spent):
            positions[i] = position
    return positions


def _time_steps(head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor], table: LatencyTable,
                constraints: tuple[int, int, int]) -> list[_Steps]:
    """The options of every layer's heads and FFN neurons: counts from the forced minimum up (FFN widths in
    multiples of `multiple_of`, or the whole width), each with its summed top scores and table time."""
    min_heads, min_neurons, multiple_of = constraints
    groups = []
    for i, (hs, ns) in enumerate(zip(head_scores, neuron_scores)):
        for unit_type, s in ((0, hs), (1, ns)):
            width = s.numel()
            if unit_type == 0:
                counts = list(range(min(min_heads, width), width + 1))
                cost = [table.attention_ms(k) for k in counts]
            else:
                counts = _neuron_counts(width, min_neurons, multiple_of)
                cost = [float(c) for c in table.ffn_time_ms(np.asarray(counts))]
            total = [0.0, *torch.sort(s.double(), descending=True).values.cumsum(0).tolist()]
            groups.append(_Steps(i, unit_type, counts, [total[c] for c in counts], cost))
    return groups


def _neuron_counts(width: int, minimum: int, multiple: int) -> list[int]:
    """FFN widths a layer may keep: 0 or the minimum, then multiples of `multiple`, and the whole width; the
    minimum rounded up to a multiple as `selection.round_width` rounds it."""
    start = min(minimum, width)
    if multiple > 1 and start:
        start = min(width, multiple * math.ceil(start / multiple))
    return sorted({c for c in range(0, width + 1, multiple) if c > start} | {start, width})


def _spend_time(groups: list[_Steps], budget: float) -> list[int]:
    """Per group, the index of the count to keep so that the summed time fits `budget` (ms): greedy by score per
    marginal time along each group's upper concave hull, so that a costly first unit which makes the next ones
    cheap (a step in the table) is weighed together with them; then the time left is filled by whatever step
    fits best. A group starts at its forced minimum, which is kept whatever the budget."""
    position = [0] * len(groups)
    spent = sum(g.cost[0] for g in groups)
    segments = sorted((seg for gi, g in enumerate(groups) for seg in _hull(gi, g)), key=lambda seg: -seg[0])
    for _, gi, start, stop in segments:
        step = groups[gi].cost[stop] - groups[gi].cost[start]
        if position[gi] == start and _fits(spent + step, budget):
            position[gi], spent = stop, spent + step
    while (best := _best_fitting_step(groups, position, budget - spent)) is not None:
        gi, stop = best
        spent += groups[gi].cost[stop] - groups[gi].cost[position[gi]]
        position[gi] = stop
    return position


def _hull(gi: int, g: _Steps) -> list[tuple[float, int, int, int]]:
    """(score per ms, group, from, to) of the segments of the upper concave hull of group `gi`'s (time, score)
    points from its first count on: the steps a greedy by marginal value should take, best first."""
    chain = [0]
    for j in range(1, len(g.counts)):
        while len(chain) > 1 and _slope(g, chain[-2], chain[-1]) <= _slope(g, chain[-1], j):
            chain.pop()
        chain.append(j)
    return [(_slope(g, a, b), gi, a, b) for a, b in zip(chain, chain[1:])]


def _slope(g: _Steps, a: int, b: int) -> float:
    """Score gained per millisecond from option a to option b (a step that costs no time is all but free)."""
    return (g.value[b] - g.value[a]) / max(g.cost[b] - g.cost[a], FREE)


def _best_fitting_step(groups: list[_Steps], position: list[int], left: float) -> tuple[int, int] | None:
    """(group, option) of the step with the most score per millisecond among those that fit in `left` ms."""
    best, where = -math.inf, None
    for gi, g in enumerate(groups):
        here = position[gi]
        for j in range(here + 1, len(g.counts)):
            if not _fits(g.cost[j] - g.cost[here], left):
                break  # times only grow with the count
            if (slope := _slope(g, here, j)) > best:
                best, where = slope, (gi, j)
    return where


def _fits(time_ms: float, budget: float) -> bool:
    return time_ms <= budget + SLACK * max(1.0, abs(budget))


def _check_reachable(speed: float, dense: float, fixed: float, table: LatencyTable) -> None:
    """Refuse a speedup that even removing every head and neuron would not reach."""
    if dense / speed < fixed * (1 + SLACK):
        raise DeepCutsError(f"speedup {speed:g} is out of reach ({_where(table)}): what pruning cannot remove "
                            f"(embeddings, classifier, and each layer's LayerNorms, residual adds and biases) takes "
                            f"{fixed:.4g} of the dense model's {dense:.4g} ms, so the predicted speedup stays below "
                            f"{dense / fixed:.3g}x even with every head and neuron removed; ask for less")


def _where(table: LatencyTable) -> str:
    """Where the table was measured, for messages: batch, sequence length, device and dtype."""
    s = table.settings
    return f"batch {s.get('batch_size')}, seq {s.get('seq_len')}, {s.get('device')} {s.get('dtype')}"


def _warn_if_slow(speed: float, dense: float, predicted: float, constraints: tuple[int, int, int]) -> None:
    """Warn where the plan's predicted time is above the dense time over `speed` (min_heads / min_neurons keep
    more), or below it by more than TOLERANCE of the dense time (whole units and steps of the table)."""
    goal = dense / speed
    min_heads, min_neurons, multiple_of = constraints
    if predicted > goal * (1 + SLACK):
        minimums = " / ".join(f"{n}={v}" for n, v in (("min_heads", min_heads), ("min_neurons", min_neurons)) if v)
        because = f"{minimums} keep units beyond it"
    elif goal - predicted > TOLERANCE * dense:
        whole = f"FFN widths in multiples of multiple_of={multiple_of}" if multiple_of > 1 else "whole units"
        because = f"the plan keeps {whole} and the table's times rise in steps: the next one would not fit"
    else:
        return
    warnings.warn(f"the plan misses its speedup: asked {speed:g}x, predicted {dense / predicted:.3f}x on the "
                  f"latency table ({predicted:.4g} ms against the dense {dense:.4g} ms), because {because}; change "
                  "the speedup or those options if that is not what you want (plan.target records the prediction)",
                  UserWarning, stacklevel=4)
