"""`plan`: choose the heads and FFN neurons to keep from unit scores under a budget.

Fractions of heads / neurons keep the top-scored units; FLOP and parameter budgets keep units in
order of score per unit of cost (a greedy knapsack), so a cheap neuron and an expensive head
compete on equal terms. `scope="layer"` applies the target inside every layer, `"global"` over
the whole encoder. A speedup is a budget of time: units cost their marginal time in a per-layer latency
table measured on the target device (`latency_table.py`), which is not linear in the count (the first head
of a layer pays for running attention at all), so the knapsack steps along each layer's upper concave hull
of (time, score); with `scope="layer"` every layer keeps the same fraction of its unit time. Before that,
the scores are made comparable across layers and unit types (`allocation.py`), and checked (`checks.py`).
Every plan records the fraction of the dense encoder it keeps (`Plan.achieved`), with a warning where that
misses the asked budget.
"""
from __future__ import annotations

import math
import numbers
import warnings
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, short_repr
from ..flops import layer_costs
from ..scoring.options import Spelling, python_setting, whole_number
from ..scoring.scores import Scores
from . import latency_table
from .allocation import comparable
from .checks import check_informative, check_scores
from .latency_table import LatencyTable
from .plan import Plan

SCOPES = ("global", "layer")

BUDGETS = ("keep_flops", "keep_params", "keep_heads", "keep_neurons")

TOLERANCE = 0.02  # of the dense cost: how far a plan may miss its budget (whole units) before `plan` warns
# (for a speedup: of the dense model's predicted time)

SLACK = 1e-9  # float noise when comparing fractions (and times, relative to the budget)

FREE = 1e-12  # milliseconds: a step that costs no more than this counts as free in the time knapsack

SPEEDUP_MULTIPLE_OF = 16  # FFN widths of a speedup plan by default: a multiple of the SIMD / tensor-core width


def plan(
    model: nn.Module,
    scores: Scores,
    keep_flops: float | None = None,
    keep_params: float | None = None,
    keep_heads: float | None = None,
    keep_neurons: float | None = None,
    seq_len: int = 128,
    scope: str = "global",
    min_heads: int = 0,
    min_neurons: int = 0,
    multiple_of: int | None = None,
    reference: Scores | None = None,
    allocation: str = "auto",
    speedup: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = "auto",
) -> Plan:
    """A `Plan` keeping a fraction of encoder FLOPs (at `seq_len`), of unit parameters, or of heads /
    neurons. `min_heads` / `min_neurons` are kept in every layer; `multiple_of` rounds each layer's
    FFN width to a hardware-friendly multiple (e.g. 8 or 64; default 1, and SPEEDUP_MULTIPLE_OF for a speedup).

    `allocation` says how scores of different layers and unit types are made comparable:
    "fisher" rank-matches them to Fisher's loss estimate inside every layer and unit type
    (`rank_match`; `reference` if given, else `scores.fisher`), "normalized" divides them by their
    mean there, "raw" compares them as they are (a baseline); "auto" is "fisher" where Fisher's
    scores are at hand and "normalized" otherwise (with a warning).

    Scores must be floating-point with float32's range and finite (NaN would rank first), and a layer whose
    scores are all zero carries no information to choose its units by: `plan` refuses it unless `min_heads` /
    `min_neurons` keep units there. Scores constant over a layer's heads or neurons (ties, broken by unit
    position) or beyond `checks.IMPLAUSIBLE` are warned about. What the plan keeps is recorded in
    `plan.target["achieved"]` (`Plan.achieved`): the fraction of the dense encoder's FLOPs at `seq_len`, unit
    parameters, heads and neurons. `min_heads`, `min_neurons` and `multiple_of` are constraints that win over
    the budget, so `plan` never refuses a budget they override; it warns instead (a UserWarning with target, achieved and each constraint's share) whenever
    they push the plan above an asked budget by any amount, and whenever a plan misses an asked budget by
    more than `TOLERANCE` (2% of the dense cost) in either direction for any reason.

    `speedup` (a number >= 1, instead of the keep_* budgets) asks for a plan whose predicted latency at
    (`batch_size`, `seq_len`) on `device` in `dtype` ("auto": the fastest native dtype, `precision.choose`) is
    at most the dense model's over `speedup`. Time is priced by a per-layer latency table measured once on this
    machine and cached (`latency_table.py`): each unit costs its marginal time there, the rest of the model is
    fixed, and a layer left without heads drops its whole attention block. `plan.target` records the speedup
    asked, the `predicted_speedup`, the table's key (`latency_table`), and the dense and predicted milliseconds.
    FFN widths then default to multiples of SPEEDUP_MULTIPLE_OF: other widths run slower than the table's
    interpolation says (on an AVX-512 CPU, hidden 384 -> 1255 neurons took 12-29% longer than -> 1248)."""
    _check_inputs(model, scores, reference, scope)
    budget, asked = check_budget(keep_flops, keep_params, keep_heads, keep_neurons, speedup)
    speed = asked["speedup"] if budget == "time" else None
    seq_len = whole_number("seq_len", seq_len, minimum=1)
    min_heads = whole_number("min_heads", min_heads, minimum=0)
    min_neurons = whole_number("min_neurons", min_neurons, minimum=0)
    multiple_of = whole_number("multiple_of", _default_multiple(multiple_of, speed), minimum=1)
    check_scores(model, scores)
    check_informative(scores, min_heads, min_neurons)
    scores, allocation = comparable(model, scores, reference, allocation, (min_heads, min_neurons),
                                     warn=not (budget == "fraction" and scope == "layer"),
                                     unit_costs=_unit_costs(model, budget, seq_len))
    layers = encoder_layers(model)
    head_scores = [scores.heads(i).float().cpu() for i in range(len(layers))]
    neuron_scores = [scores.neurons(i).float().cpu() for i in range(len(layers))]
    if speed is not None:
        table = latency_table.table_for(model, seq_len, whole_number("batch_size", batch_size, minimum=1), device,
                                        dtype)
        heads, rounded, timing = _speedup_select(model, head_scores, neuron_scores, table, speed, scope,
                                                 (min_heads, min_neurons, multiple_of))
    else:
        select = partial(_select, model, head_scores, neuron_scores, asked, budget, seq_len, scope)
        heads, neurons = select(min_heads, min_neurons)
        rounded = [_round_width(s, k, multiple_of, min_neurons) for s, k in zip(neuron_scores, map(len, neurons))]
        stages = {"unrounded": _fractions(model, heads, neurons, seq_len)}
        stages["free"] = _fractions(model, *select(0, 0), seq_len) if min_heads or min_neurons else stages["unrounded"]
        _warn_if_missed(asked, _fractions(model, heads, rounded, seq_len), stages, seq_len, min_heads, min_neurons,
                        multiple_of)
        timing = {}
    target = {k: v for k, v in dict(**asked, seq_len=seq_len, scope=scope, min_heads=min_heads,
                                     min_neurons=min_neurons, multiple_of=multiple_of,
                                     criterion=scores.criterion, allocation=allocation,
                                     model_fingerprint=scores.model_fingerprint, **timing).items()
              if v is not None}
    target["achieved"] = _fractions(model, heads, rounded, seq_len)
    return Plan(heads=heads, neurons=rounded, num_heads=[layer.num_heads for layer in layers],
                ffn_widths=[layer.ffn_width for layer in layers], target=target)


def _check_inputs(model: nn.Module, scores: Scores, reference: Scores | None, scope: str) -> None:
    """Refuse arguments of the wrong kind before anything reads them."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"model must be the torch model the scores were made on, got {type(model).__name__}")
    for name, value in (("scores", scores), ("reference", reference)):
        if not isinstance(value, Scores) and not (name == "reference" and value is None):
            raise DeepCutsError(f"{name} must be a dc.Scores (from dc.score or dc.Scores.load), got "
                                f"{type(value).__name__}")
    if not isinstance(scope, str) or scope not in SCOPES:
        raise DeepCutsError(f"unknown scope {short_repr(scope)}; choose 'global' or 'layer'")


def _select(model, head_scores, neuron_scores, asked, budget, seq_len, scope, min_heads, min_neurons):
    """(kept heads, kept neurons) per layer under the budget, before FFN widths are rounded."""
    if budget == "fraction":
        return (_top_fraction(head_scores, asked.get("keep_heads"), scope, min_heads),
                _top_fraction(neuron_scores, asked.get("keep_neurons"), scope, min_neurons))
    return _knapsack(model, head_scores, neuron_scores, asked[f"keep_{budget}"], budget, seq_len, scope,
                     min_heads, min_neurons)


def _fractions(model: nn.Module, heads: list[list[int]], neurons: list[list[int]], seq_len: int) -> dict[str, float]:
    """The fraction of the dense encoder that keeping `heads` / `neurons` keeps, by budget kind."""
    layers, costs = encoder_layers(model), layer_costs(model)
    kept, dense = dict.fromkeys(BUDGETS, 0), dict.fromkeys(BUDGETS, 0)
    for layer, cost, h, n in zip(layers, costs, heads, neurons):
        for total, head_count, neuron_count in ((kept, len(h), len(n)), (dense, layer.num_heads, layer.ffn_width)):
            total["keep_flops"] += head_count * cost.head_flops(seq_len) + neuron_count * cost.neuron_flops(seq_len)
            total["keep_params"] += head_count * cost.head_params() + neuron_count * cost.neuron_params()
            total["keep_heads"] += head_count
            total["keep_neurons"] += neuron_count
    return {k: round(kept[k] / dense[k], 6) if dense[k] else 1.0 for k in BUDGETS}


def _warn_if_missed(asked: dict[str, float], achieved: dict[str, float], stages: dict[str, dict[str, float]],
                    seq_len: int, min_heads: int, min_neurons: int, multiple_of: int) -> None:
    """Warn, with the numbers and the constraints to blame, where the plan keeps more of an asked budget than the
    target because of min_heads / min_neurons / multiple_of, or misses it by more than TOLERANCE. `stages`: the
    fractions kept before multiple_of rounded the widths ("unrounded") and without the minimums too ("free")."""
    for kind, goal in asked.items():
        got = achieved[kind]
        minimum_share = stages["unrounded"][kind] - stages["free"][kind]
        rounding_share = got - stages["unrounded"][kind]
        causes = []
        if abs(minimum_share) > SLACK:
            minimums = " / ".join(f"{n}={v}" for n, v in (("min_heads", min_heads), ("min_neurons", min_neurons)) if v)
            causes.append(f"{minimums} keep units beyond it ({minimum_share:+.4f})")
        if abs(rounding_share) > SLACK:
            causes.append(f"multiple_of={multiple_of} rounds the FFN widths ({rounding_share:+.4f})")
        if (got > goal + SLACK and causes) or abs(got - goal) > TOLERANCE + SLACK:
            unit = f"encoder FLOPs at seq_len {seq_len}" if kind == "keep_flops" else kind[len("keep_"):]
            because = " and ".join(causes) or "heads and FFN neurons are kept whole (the next one would not fit)"
            warnings.warn(f"the plan misses its budget: {kind} target {goal:g}, achieved {got:.4f} of the dense "
                          f"{unit} ({got - goal:+.4f}), because {because}; change the target or those options if "
                          "that is not what you want (Plan.achieved records what the plan keeps)",
                          UserWarning, stacklevel=3)


def check_budget(keep_flops: float | None = None, keep_params: float | None = None, keep_heads: float | None = None,
                 keep_neurons: float | None = None, speedup: float | None = None,
                 spell: Spelling = python_setting) -> tuple[str, dict[str, float]]:
    """(kind, asked): the one budget of a plan, checked without a model, so a caller can refuse it before loading
    anything. kind is "time" (`speedup`, a finite number >= 1, alone), "flops" or "params" (that fraction alone) or
    "fraction" (keep_heads and / or keep_neurons); asked maps each given budget's name to its value. Every fraction
    is in [0, 1]. `spell` writes the options' names in the messages (`python_setting`: the keywords)."""
    budgets = {"keep_flops": keep_flops, "keep_params": keep_params, "keep_heads": keep_heads,
               "keep_neurons": keep_neurons}
    speed = _asked_speedup(speedup, spell, budgets)
    if speed is not None:
        return "time", {"speedup": speed}
    asked = _asked_budgets(budgets, spell)
    return _budget_kind(asked, spell), asked


def _asked_budgets(budgets: dict[str, float | None], spell: Spelling) -> dict[str, float]:
    """The budgets given, by name, each checked to be a fraction in [0, 1]."""
    given = {n: v for n, v in budgets.items() if v is not None}
    if not given:
        names = [spell(n) for n in BUDGETS]
        raise DeepCutsError(f"give a target: {', '.join(names[:-1])} and/or {names[-1]} (or {spell('speedup')}, a "
                            "budget of time)")
    for n, v in given.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise DeepCutsError(f"{spell(n)} is a fraction in [0, 1], got {short_repr(v)}; pass a float such as 0.5")
        if not 0 <= v <= 1:
            raise DeepCutsError(f"{spell(n)} is a fraction in [0, 1], got {v:g}")
    return {n: float(v) for n, v in given.items()}


def _budget_kind(asked: dict[str, float], spell: Spelling) -> str:
    """"flops", "params" or "fraction" (heads and / or neurons), refusing a mix of cost budgets."""
    costs = [n for n in ("keep_flops", "keep_params") if n in asked]
    if costs:
        if len(asked) > 1:
            raise DeepCutsError(f"give one budget, not {' and '.join(spell(n) for n in asked)}")
        return costs[0][len("keep_"):]
    return "fraction"


def _default_multiple(multiple_of: int | None, speed: float | None) -> int:
    """`multiple_of` as given, else 1, or SPEEDUP_MULTIPLE_OF for a speedup budget (aligned widths are the fast ones,
    and the ones the latency table's grid measures)."""
    if multiple_of is not None:
        return multiple_of
    return SPEEDUP_MULTIPLE_OF if speed is not None else 1


def _asked_speedup(speedup, spell: Spelling, budgets: dict[str, float | None]) -> float | None:
    """`speedup` checked to be a finite number >= 1 and the only budget asked; None when it is not asked."""
    if speedup is None:
        return None
    given = [spell(name) for name, value in budgets.items() if value is not None]
    if given:
        raise DeepCutsError(f"give one budget, not {spell('speedup')} and {' and '.join(given)}: a speedup is itself "
                            "a budget (of time); drop the others or the speedup")
    if (isinstance(speedup, bool) or not isinstance(speedup, numbers.Real) or not math.isfinite(speedup)
            or speedup < 1):
        raise DeepCutsError(f"{spell('speedup')} is how many times faster than the dense model the slim one should "
                            f"run, a finite number >= 1; got {short_repr(speedup)}; pass e.g. {spell('speedup', 2.0)}")
    return float(speedup)


class _Steps(NamedTuple):
    """The counts one layer's heads (or FFN neurons) may keep, with the summed top scores and the table time of
    each: the options the time knapsack chooses from."""

    layer: int
    unit_type: int  # 0: heads, 1: FFN neurons
    counts: list[int]  # ascending; counts[0] is the forced minimum
    value: list[float]  # sum of the top `count` scores
    cost: list[float]  # milliseconds the table gives that many units


def _speedup_select(model: nn.Module, head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor],
                    table: LatencyTable, speed: float, scope: str, constraints: tuple[int, int, int]):
    """(kept heads, kept neurons, timing record) per layer whose predicted time is at most the dense model's over
    `speed`; `constraints`: min_heads, min_neurons, multiple_of (which win over the budget)."""
    layers = encoder_layers(model)
    dense = table.model_ms([layer.num_heads for layer in layers], [layer.ffn_width for layer in layers])
    fixed = table.fixed_ms + len(layers) * table.layer_ms
    groups = _time_steps(head_scores, neuron_scores, table, constraints)
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
    predicted = table.model_ms([h for h, _ in counts], [n for _, n in counts])
    _warn_if_slow(speed, dense, predicted, constraints)
    heads = [_top(s, h) for s, (h, _) in zip(head_scores, counts)]
    neurons = [_top(s, n) for s, (_, n) in zip(neuron_scores, counts)]
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
    minimum rounded up to a multiple as `_round_width` rounds it."""
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


def _top_fraction(scores: list[torch.Tensor], fraction: float | None, scope: str, minimum: int) -> list[list[int]]:
    """Keep the top `fraction` of units (all when None), per layer or over all layers."""
    if fraction is None:
        return [list(range(s.numel())) for s in scores]
    if scope == "layer":
        counts = [round(fraction * s.numel()) for s in scores]
    else:
        flat = torch.cat(scores)
        k = round(fraction * flat.numel())
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[_ranked(flat)[:k]] = True
        counts = [int(c.sum()) for c in keep.split([s.numel() for s in scores])]
    return [_top(s, max(c, min(minimum, s.numel()))) for s, c in zip(scores, counts)]


class _Unit(NamedTuple):
    """A head or an FFN neuron as the knapsack weighs it."""

    layer: int
    unit_type: int  # 0: head, 1: FFN neuron
    index: int
    value: float  # score per unit of cost
    cost: float
    forced: bool  # kept whatever the budget (min_heads / min_neurons)


def _unit_costs(model: nn.Module, budget_kind: str, seq_len: int) -> list[tuple[float, float]]:
    """Per layer, what one head and one FFN neuron cost in the budget's unit: FLOPs at `seq_len` (also standing in
    for time), parameters, or 1 each for fractions of heads / neurons."""
    if budget_kind == "fraction":
        return [(1.0, 1.0)] * len(encoder_layers(model))
    if budget_kind == "params":
        return [(c.head_params(), c.neuron_params()) for c in layer_costs(model)]
    return [(c.head_flops(seq_len), c.neuron_flops(seq_len)) for c in layer_costs(model)]


def _knapsack(model, head_scores, neuron_scores, fraction, budget_kind, seq_len, scope, min_heads, min_neurons):
    """Greedy by score per cost: keep units until `fraction` of the cost is spent."""
    costs = layer_costs(model)
    unit_cost = _unit_costs(model, budget_kind, seq_len)
    units: list[_Unit] = []
    for i, (hs, ns) in enumerate(zip(head_scores, neuron_scores)):
        for unit_type, s, minimum in ((0, hs, min_heads), (1, ns, min_neurons)):
            forced = set(_top(s, min(minimum, s.numel())))
            c = unit_cost[i][unit_type]
            units += [_Unit(i, unit_type, j, float(s[j]) / c, c, j in forced) for j in range(s.numel())]
    groups = [units] if scope == "global" else [[u for u in units if u.layer == i] for i in range(len(costs))]
    kept = [([], []) for _ in costs]
    for group in groups:
        budget = fraction * sum(u.cost for u in group)
        spent = sum(u.cost for u in group if u.forced)
        for u in sorted(group, key=lambda u: (not u.forced, -u.value)):
            if u.forced or spent + u.cost <= budget:
                kept[u.layer][u.unit_type].append(u.index)
                spent += 0 if u.forced else u.cost
    return [k[0] for k in kept], [k[1] for k in kept]


def _ranked(scores: torch.Tensor) -> torch.Tensor:
    """Unit indices from the highest score down, equal scores by position (the lower index first), so that ties,
    which a warning reports for constant scores, are broken the same way on every machine."""
    return torch.sort(scores, descending=True, stable=True).indices


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """The sorted indices of the `k` highest scores (`_ranked`)."""
    return sorted(_ranked(scores)[:k].tolist()) if k else []


def _round_width(scores: torch.Tensor, k: int, multiple: int, minimum: int = 0) -> list[int]:
    """The top units of a layer with their count rounded to the nearest multiple (0 stays 0), and
    rounded up instead where rounding down would go below `minimum`."""
    if multiple > 1 and k:
        rounded = max(multiple, multiple * round(k / multiple))
        if rounded < minimum:
            rounded = multiple * math.ceil(minimum / multiple)
        k = min(scores.numel(), rounded)
    return _top(scores, k)
