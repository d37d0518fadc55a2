"""`plan`: choose the heads and FFN neurons to keep from unit scores under a budget.

This module is the entry point and the record: it checks the inputs and the budget (`budget.py`), checks the scores
(`checks.py`) and makes them comparable across layers and unit types (`allocation.py`), hands them to the knapsack
of the budget's kind (`selection.py` for fractions of heads / neurons, FLOPs and parameters; `speedup.py` for a
speedup, priced by the latency table of `latency_table.py`), rounds the FFN widths, and records in the `Plan` what
was asked and the fraction of the dense encoder it keeps (`Plan.achieved`), with a warning where that misses the
asked budget.
"""
from __future__ import annotations

import warnings
from functools import partial

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError
from ..flops import layer_costs
from ..scoring.options import whole_number
from ..scoring.scores import Scores
from . import latency_table
from .allocation import comparable
from .budget import BUDGETS, SLACK, TOLERANCE, check_budget, check_scope
from .checks import check_informative, check_scores
from .depth import dropped_layers
from .plan import Plan
from .selection import round_width, select, unit_costs
from .speedup import SPEEDUP_MULTIPLE_OF, speedup_select


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
    drop_layers: int | list[int] | None = None,
    layer_scores: list[float] | None = None,
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
    interpolation says (on an AVX-512 CPU, hidden 384 -> 1255 neurons took 12-29% longer than -> 1248).

    `drop_layers` removes whole encoder layers (global scope): a list of layer indices, or a count N that removes the
    N least important by `layer_scores` (`dc.layer_importance(model, batches)`). Their units count as removed, so
    the budget left is spent on the other layers; a removed layer also takes its LayerNorms, residual adds and
    launches with it, which width pruning cannot (the latency table prices them in a speedup plan). Plans record
    them in `plan.dropped`."""
    _check_inputs(model, scores, reference, scope)
    budget, asked = check_budget(keep_flops, keep_params, keep_heads, keep_neurons, speedup)
    speed = asked["speedup"] if budget == "time" else None
    seq_len = whole_number("seq_len", seq_len, minimum=1)
    min_heads = whole_number("min_heads", min_heads, minimum=0)
    min_neurons = whole_number("min_neurons", min_neurons, minimum=0)
    multiple_of = whole_number("multiple_of", _default_multiple(multiple_of, speed), minimum=1)
    dropped = dropped_layers(model, drop_layers, layer_scores, scope)
    check_scores(model, scores)
    check_informative(scores, min_heads, min_neurons)
    scores, allocation = comparable(model, scores, reference, allocation, (min_heads, min_neurons),
                                     warn=not (budget == "fraction" and scope == "layer"),
                                     unit_costs=unit_costs(model, budget, seq_len))
    layers = encoder_layers(model)
    head_scores = [scores.heads(i).float().cpu() for i in range(len(layers))]
    neuron_scores = [scores.neurons(i).float().cpu() for i in range(len(layers))]
    if speed is not None:
        table = latency_table.table_for(model, seq_len, whole_number("batch_size", batch_size, minimum=1), device,
                                        dtype)
        heads, rounded, timing = speedup_select(model, head_scores, neuron_scores, table, speed, scope,
                                                (min_heads, min_neurons, multiple_of), frozenset(dropped))
    else:
        pick = partial(select, model, head_scores, neuron_scores, asked, budget, seq_len, scope,
                       dropped=frozenset(dropped))
        heads, neurons = pick(min_heads, min_neurons)
        rounded = [round_width(s, k, multiple_of, min_neurons) for s, k in zip(neuron_scores, map(len, neurons))]
        stages = {"unrounded": _fractions(model, heads, neurons, seq_len)}
        stages["free"] = _fractions(model, *pick(0, 0), seq_len) if min_heads or min_neurons else stages["unrounded"]
        _warn_if_missed(asked, _fractions(model, heads, rounded, seq_len), stages, seq_len, min_heads, min_neurons,
                        multiple_of)
        timing = {}
    target = {k: v for k, v in dict(**asked, seq_len=seq_len, scope=scope, min_heads=min_heads,
                                     min_neurons=min_neurons, multiple_of=multiple_of,
                                     criterion=scores.criterion, allocation=allocation,
                                     model_fingerprint=scores.model_fingerprint, **timing).items()
              if v is not None}
    if dropped:
        target["drop_layers"] = drop_layers if isinstance(drop_layers, int) else list(dropped)
    target["achieved"] = _fractions(model, heads, rounded, seq_len)
    return Plan(heads=heads, neurons=rounded, num_heads=[layer.num_heads for layer in layers],
                ffn_widths=[layer.ffn_width for layer in layers], target=target, dropped=dropped)


def _check_inputs(model: nn.Module, scores: Scores, reference: Scores | None, scope: str) -> None:
    """Refuse arguments of the wrong kind before anything reads them."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"model must be the torch model the scores were made on, got {type(model).__name__}")
    for name, value in (("scores", scores), ("reference", reference)):
        if not isinstance(value, Scores) and not (name == "reference" and value is None):
            raise DeepCutsError(f"{name} must be a dc.Scores (from dc.score or dc.Scores.load), got "
                                f"{type(value).__name__}")
    check_scope(scope)


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


def _default_multiple(multiple_of: int | None, speed: float | None) -> int:
    """`multiple_of` as given, else 1, or SPEEDUP_MULTIPLE_OF for a speedup budget (aligned widths are the fast ones,
    and the ones the latency table's grid measures)."""
    if multiple_of is not None:
        return multiple_of
    return SPEEDUP_MULTIPLE_OF if speed is not None else 1
