"""`plan`: choose the heads and FFN neurons to keep from unit scores under a budget.

Fractions of heads / neurons keep the top-scored units; FLOP and parameter budgets keep units in
order of score per unit of cost (a greedy knapsack), so a cheap neuron and an expensive head
compete on equal terms. `scope="layer"` applies the target inside every layer, `"global"` over
the whole encoder. Before that, the scores are made comparable across layers and unit types
(`allocation.py`), and checked (`checks.py`). Every plan records the fraction of the dense encoder
it keeps (`Plan.achieved`), with a warning where that misses the asked budget.
"""
from __future__ import annotations

import math
import numbers
import warnings
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, short_repr
from ..flops import layer_costs
from ..scoring.options import real_number, whole_number
from ..scoring.scores import Scores
from .allocation import comparable
from .checks import check_informative, check_scores
from .plan import Plan

SCOPES = ("global", "layer")

BUDGETS = ("keep_flops", "keep_params", "keep_heads", "keep_neurons")

TOLERANCE = 0.02  # of the dense cost: how far a plan may miss its budget (whole units) before `plan` warns

SLACK = 1e-9  # float noise when comparing fractions


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
    multiple_of: int = 1,
    reference: Scores | None = None,
    allocation: str = "auto",
) -> Plan:
    """A `Plan` keeping a fraction of encoder FLOPs (at `seq_len`), of unit parameters, or of heads /
    neurons. `min_heads` / `min_neurons` are kept in every layer; `multiple_of` rounds each layer's
    FFN width to a hardware-friendly multiple (e.g. 8 or 64).

    `allocation` says how scores of different layers and unit types are made comparable:
    "fisher" rank-matches them to Fisher's loss estimate inside every layer and unit type
    (`rank_match`; `reference` if given, else `scores.fisher`), "normalized" divides them by their
    mean there, "raw" compares them as they are (a baseline); "auto" is "fisher" where Fisher's
    scores are at hand and "normalized" otherwise (with a warning).

    Scores must be finite (NaN would rank first), and a layer whose scores are all zero carries no
    information to choose its units by: `plan` refuses it unless `min_heads` / `min_neurons` keep units
    there. What the plan keeps is recorded in `plan.target["achieved"]` (`Plan.achieved`): the fraction of
    the dense encoder's FLOPs at `seq_len`, unit parameters, heads and neurons. `min_heads`, `min_neurons`
    and `multiple_of` are constraints that win over the budget, so `plan` never refuses a budget they
    override; it warns instead (a UserWarning with target, achieved and each constraint's share) whenever
    they push the plan above an asked budget by any amount, and whenever a plan misses an asked budget by
    more than `TOLERANCE` (2% of the dense cost) in either direction for any reason."""
    _check_inputs(model, scores, reference, scope)
    asked = _asked_budgets(keep_flops, keep_params, keep_heads, keep_neurons)
    budget = _budget_kind(asked)
    seq_len = whole_number("seq_len", seq_len, minimum=1)
    min_heads = whole_number("min_heads", min_heads, minimum=0)
    min_neurons = whole_number("min_neurons", min_neurons, minimum=0)
    multiple_of = whole_number("multiple_of", multiple_of, minimum=1)
    check_scores(model, scores)
    check_informative(scores, min_heads, min_neurons)
    scores, allocation = comparable(model, scores, reference, allocation, (min_heads, min_neurons),
                                     warn=not (budget == "fraction" and scope == "layer"))
    layers = encoder_layers(model)
    head_scores = [scores.heads(i).float().cpu() for i in range(len(layers))]
    neuron_scores = [scores.neurons(i).float().cpu() for i in range(len(layers))]
    select = partial(_select, model, head_scores, neuron_scores, asked, budget, seq_len, scope)
    heads, neurons = select(min_heads, min_neurons)
    rounded = [_round_width(s, k, multiple_of, min_neurons) for s, k in zip(neuron_scores, map(len, neurons))]
    achieved = _fractions(model, heads, rounded, seq_len)
    stages = {"unrounded": _fractions(model, heads, neurons, seq_len)}
    stages["free"] = _fractions(model, *select(0, 0), seq_len) if min_heads or min_neurons else stages["unrounded"]
    _warn_if_missed(asked, achieved, stages, seq_len, min_heads, min_neurons, multiple_of)
    target = {k: v for k, v in dict(**asked, seq_len=seq_len, scope=scope, min_heads=min_heads,
                                     min_neurons=min_neurons, multiple_of=multiple_of,
                                     criterion=scores.criterion, allocation=allocation,
                                     model_fingerprint=scores.model_fingerprint).items()
              if v is not None}
    target["achieved"] = achieved
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


def _asked_budgets(flops, params, heads, neurons) -> dict[str, float]:
    """The budgets given, by name, each checked to be a fraction in [0, 1]."""
    given = {n: v for n, v in zip(BUDGETS, (flops, params, heads, neurons)) if v is not None}
    if not given:
        raise DeepCutsError("give a target: keep_flops=, keep_params=, keep_heads= and/or keep_neurons=")
    for n, v in given.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
            raise DeepCutsError(f"{n} is a fraction in [0, 1], got {short_repr(v)}; pass a float such as 0.5")
    return {n: real_number(n, v, 0.0, 1.0) for n, v in given.items()}


def _budget_kind(asked: dict[str, float]) -> str:
    """"flops", "params" or "fraction" (heads and / or neurons), refusing a mix of cost budgets."""
    costs = [n for n in ("keep_flops", "keep_params") if n in asked]
    if costs:
        if len(asked) > 1:
            raise DeepCutsError(f"give one budget, not {' and '.join(asked)}")
        return costs[0][len("keep_"):]
    return "fraction"


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
        keep[torch.topk(flat, k).indices] = True
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


def _knapsack(model, head_scores, neuron_scores, fraction, budget_kind, seq_len, scope, min_heads, min_neurons):
    """Greedy by score per cost: keep units until `fraction` of the cost is spent."""
    costs = layer_costs(model)
    unit_cost = [(c.head_flops(seq_len), c.neuron_flops(seq_len)) if budget_kind == "flops"
                 else (c.head_params(), c.neuron_params()) for c in costs]
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


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores, k).indices.tolist()) if k else []


def _round_width(scores: torch.Tensor, k: int, multiple: int, minimum: int = 0) -> list[int]:
    """The top units of a layer with their count rounded to the nearest multiple (0 stays 0), and
    rounded up instead where rounding down would go below `minimum`."""
    if multiple > 1 and k:
        rounded = max(multiple, multiple * round(k / multiple))
        if rounded < minimum:
            rounded = multiple * math.ceil(minimum / multiple)
        k = min(scores.numel(), rounded)
    return _top(scores, k)
