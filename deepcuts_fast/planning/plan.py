"""Plans: `Plan` records which attention heads and FFN neurons of each encoder layer to keep, and
`plan` chooses them from unit scores under a budget.

Fractions of heads / neurons keep the top-scored units; FLOP and parameter budgets keep units in
order of score per unit of cost (a greedy knapsack), so a cheap neuron and an expensive head
compete on equal terms. `scope="layer"` applies the target inside every layer, `"global"` over
the whole encoder.

A criterion's raw scores are not comparable across layers and unit types, so by default
(`allocation="auto"`) they are first rank-matched to Fisher's loss estimate from the same
calibration pass (`Scores.fisher`): Fisher decides how many units each layer keeps, the criterion
which ones. Scores made without data have no Fisher scores; they are normalised to mean 1 inside
every layer and unit type instead. `allocation="raw"` keeps the raw summed scores, as a baseline.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError
from ..flops import layer_costs
from ..hashing import model_fingerprint
from ..scoring.scores import Scores
from .rank_match import rank_match

FORMAT = "deepcuts-plan/1"
SCOPES = ("global", "layer")
ALLOCATIONS = ("auto", "fisher", "normalized", "raw")


@dataclass
class Plan:
    """Kept head and neuron indices per encoder layer, with the widths they were chosen from."""

    heads: list[list[int]]
    neurons: list[list[int]]
    num_heads: list[int]  # heads per layer of the model the plan was made for
    ffn_widths: list[int]  # FFN width per layer of that model
    target: dict = field(default_factory=dict)  # what was asked (for the record)

    def __post_init__(self) -> None:
        self.heads = [sorted(int(h) for h in layer) for layer in self.heads]
        self.neurons = [sorted(int(n) for n in layer) for layer in self.neurons]
        if not (len(self.heads) == len(self.neurons) == len(self.num_heads) == len(self.ffn_widths)):
            raise DeepCutsError("plan lists have different numbers of layers")
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            _check_indices(h, self.num_heads[i], f"layer {i} heads")
            _check_indices(n, self.ffn_widths[i], f"layer {i} neurons")
        if not any(self.heads) and not any(self.neurons):
            raise DeepCutsError("this plan removes every head and every FFN neuron; ask for a larger target")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"format": FORMAT, "heads": self.heads, "neurons": self.neurons, "num_heads": self.num_heads,
                "ffn_widths": self.ffn_widths, "target": self.target}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        """Rebuild a plan written by `to_dict`."""
        if d.get("format") != FORMAT:
            raise DeepCutsError(f"not a deepcuts plan (format {d.get('format')!r})")
        try:
            return cls(heads=d["heads"], neurons=d["neurons"], num_heads=list(d["num_heads"]),
                       ffn_widths=list(d["ffn_widths"]), target=dict(d.get("target", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise DeepCutsError(f"malformed plan: {e}") from e

    def check_model(self, model: nn.Module) -> None:
        """Fail clearly when `model` does not have the widths this plan was made for."""
        layers = encoder_layers(model)
        if len(layers) != len(self.heads):
            raise DeepCutsError(f"plan has {len(self.heads)} layers, the model {len(layers)}")
        for i, layer in enumerate(layers):
            if (layer.num_heads, layer.ffn_width) != (self.num_heads[i], self.ffn_widths[i]):
                raise DeepCutsError(
                    f"layer {i} of the model has {layer.num_heads} heads / {layer.ffn_width} FFN neurons, the plan "
                    f"expects {self.num_heads[i]} / {self.ffn_widths[i]}; plan and prune the same model"
                )

    def summary(self) -> str:
        """Per-layer table of kept heads and neurons."""
        lines = ["layer  heads kept        FFN neurons kept"]
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            lines.append(f"{i:>5}  {len(h):>3}/{self.num_heads[i]:<3} ({len(h) / max(1, self.num_heads[i]):5.1%})"
                         f"  {len(n):>5}/{self.ffn_widths[i]:<5} ({len(n) / max(1, self.ffn_widths[i]):5.1%})")
        total_h, total_n = sum(map(len, self.heads)), sum(map(len, self.neurons))
        lines.append(f"total  {total_h:>3}/{sum(self.num_heads):<3}          {total_n:>5}/{sum(self.ffn_widths)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_indices(indices: list[int], width: int, what: str) -> None:
    if len(set(indices)) != len(indices):
        raise DeepCutsError(f"{what}: repeated indices")
    if indices and (indices[0] < 0 or indices[-1] >= width):
        raise DeepCutsError(f"{what}: indices must lie in [0, {width})")


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
    scores are at hand and "normalized" otherwise (with a warning)."""
    check_scores(model, scores)
    budget = _budget_kind(keep_flops, keep_params, keep_heads, keep_neurons)
    if scope not in SCOPES:
        raise DeepCutsError(f"unknown scope {scope!r}; choose 'global' or 'layer'")
    if seq_len < 1 or min_heads < 0 or min_neurons < 0 or multiple_of < 1:
        raise DeepCutsError("seq_len and multiple_of must be >= 1, min_heads and min_neurons >= 0")
    scores, allocation = _comparable(model, scores, reference, allocation,
                                     warn=not (budget == "fraction" and scope == "layer"))
    layers = encoder_layers(model)
    head_scores = [scores.heads(i).float().cpu() for i in range(len(layers))]
    neuron_scores = [scores.neurons(i).float().cpu() for i in range(len(layers))]
    if budget == "fraction":
        heads = _top_fraction(head_scores, keep_heads, scope, min_heads)
        neurons = _top_fraction(neuron_scores, keep_neurons, scope, min_neurons)
    else:
        fraction = keep_flops if budget == "flops" else keep_params
        heads, neurons = _knapsack(model, head_scores, neuron_scores, fraction, budget, seq_len, scope,
                                   min_heads, min_neurons)
    neurons = [_round_width(s, k, multiple_of, min_neurons) for s, k in zip(neuron_scores, map(len, neurons))]
    target = {k: v for k, v in dict(keep_flops=keep_flops, keep_params=keep_params, keep_heads=keep_heads,
                                     keep_neurons=keep_neurons, seq_len=seq_len, scope=scope, min_heads=min_heads,
                                     min_neurons=min_neurons, multiple_of=multiple_of,
                                     criterion=scores.criterion, allocation=allocation,
                                     model_fingerprint=scores.model_fingerprint).items()
              if v is not None}
    return Plan(heads=heads, neurons=neurons, num_heads=[layer.num_heads for layer in layers],
                ffn_widths=[layer.ffn_width for layer in layers], target=target)


def _comparable(model: nn.Module, scores: Scores, reference: Scores | None, allocation: str,
                warn: bool) -> tuple[Scores, str]:
    """(scores made comparable across layers and unit types, the allocation that did it); `warn`: when "auto"
    falls back to "normalized" where comparing layers matters."""
    if allocation not in ALLOCATIONS:
        raise DeepCutsError(f"unknown allocation {allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
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
            if loss.model_fingerprint != scores.model_fingerprint:
                raise DeepCutsError(f"the Fisher reference was computed on another model than the scores "
                                    f"({_model_name(loss)} vs {_model_name(scores)}); score both on one model")
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


def _model_name(scores: Scores) -> str:
    """How a message names the model scores were computed on: its name and weights hash."""
    return f"{scores.meta.get('model_name') or 'a model'} (weights {scores.model_fingerprint or 'unrecorded'})"


def check_scores(model: nn.Module, scores: Scores) -> None:
    """Fail, naming the first mismatching parameter or both models, when `scores` were not made for `model`."""
    layers = encoder_layers(model)
    if len(scores.layout) != len(layers):
        raise DeepCutsError(f"scores cover {len(scores.layout)} encoder layers, the model has {len(layers)}")
    params = dict(model.named_parameters())
    for i, (layer, lay) in enumerate(zip(layers, scores.layout)):
        for role, name in layer.names.items():
            if lay.names[role] != name:
                raise DeepCutsError(f"scores were made for another model: parameter {name}.weight is not in them "
                                    f"(they have {lay.names[role]}.weight)")
        if scores.heads(i).numel() != layer.num_heads or scores.neurons(i).numel() != layer.ffn_width:
            raise DeepCutsError(f"scores of layer {i} cover {scores.heads(i).numel()} heads / "
                                f"{scores.neurons(i).numel()} neurons, the model has {layer.num_heads} / "
                                f"{layer.ffn_width} (parameter {layer.names['query']}.weight)")
    for name, s in scores.items():
        if name not in params or tuple(params[name].shape) != tuple(s.shape):
            got = tuple(params[name].shape) if name in params else "missing"
            raise DeepCutsError(f"scores do not match the model at parameter {name}: "
                                f"scores {tuple(s.shape)}, model {got}")
    recorded = scores.model_fingerprint
    if recorded is not None:
        current = model_fingerprint(model)
        if current != recorded:
            name = getattr(model.config, "_name_or_path", "") or model.config.model_type
            raise DeepCutsError(f"these {scores.criterion} scores were computed on {_model_name(scores)}, not on "
                                f"this model, {name} (weights {current}); score the model you prune")


def _budget_kind(flops, params, heads, neurons) -> str:
    given = [n for n, v in (("keep_flops", flops), ("keep_params", params), ("keep_heads", heads),
                            ("keep_neurons", neurons)) if v is not None]
    if not given:
        raise DeepCutsError("give a target: keep_flops=, keep_params=, keep_heads= and/or keep_neurons=")
    for n, v in (("keep_flops", flops), ("keep_params", params), ("keep_heads", heads), ("keep_neurons", neurons)):
        if v is not None and not 0 <= v <= 1:
            raise DeepCutsError(f"{n} is a fraction in [0, 1], got {v}")
    if flops is not None or params is not None:
        if len(given) > 1:
            raise DeepCutsError(f"give one budget, not {' and '.join(given)}")
        return "flops" if flops is not None else "params"
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
