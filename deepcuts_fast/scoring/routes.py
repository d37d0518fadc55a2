"""The five routes from probe statistics to a criterion's summed scores, one class each.

After every calibration batch the pass hands each route the probes of every encoder layer (`add`);
at the end the route returns its `Scores` (`finish`). The pass picks one route per criterion before
the first batch (`route_for`):

- `TorchScores`: per-weight scores `|W * G * scale * roww|` in PyTorch from the accumulated gradient G.
- `EpilogueScores`: the same from G by the backend's fused epilogue, once per batch.
- `FusedScores`: the weight score added in the backward hook straight from X and dY (kernel 1, no G
  kept); for a pass with one criterion whose noise samples run in one chunk per batch.
- `FirstOrderUnits`: unit scores `|sum_t A * dA|` (times the GradCAM weight) from the activation statistics.
- `FisherUnits`: the per-layer unit interactions and their diagonals, Fisher's unit scores (or the diagonals
  alone, for the loss estimate every pass with data adds).

At unit granularity the first three reduce each batch's weight scores to heads and neurons.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..arch import OUTPUT_ROLES, UNIT_AXIS
from ..errors import DeepCutsError
from ..kernels import weight_score, weight_score_epilogue
from .criteria import Criterion
from .layout import LayerLayout, reduce_sums_to_units, reduce_to_units
from .probes import LinearProbe
from .scores import Scores

LayerProbes = Mapping[str, LinearProbe]  # role -> probe, for one encoder layer


@dataclass(frozen=True)
class RouteSetup:
    """What every route of one pass shares."""

    layout: list[LayerLayout]
    samples: int  # noise samples per batch: scores are means over them
    shift: float  # added to the mean output by the shifted GradCAM criteria
    unit: bool  # unit granularity: sum heads and FFN neurons instead of keeping every weight's score
    backend: str
    device: torch.device


class Route:
    """Sums over batches of one criterion's scores: per parameter, or per layer's heads and neurons."""

    def __init__(self, crit: Criterion, setup: RouteSetup) -> None:
        self.crit, self.setup = crit, setup
        self.weights: dict[str, torch.Tensor] = {}
        self.units: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(setup.layout)

    def add(self, batch: int, layer: int, probes: LayerProbes) -> None:
        """Add calibration batch `batch`'s scores of encoder layer `layer`."""
        raise NotImplementedError

    def finish(self, meta: Mapping) -> Scores:
        """The summed scores, with `meta` and the criterion's name."""
        meta = {**meta, "criterion": self.crit.name}
        if not self.setup.unit and self.crit.per_weight:  # Fisher's scores are per unit at either granularity
            return Scores(self.weights, self.setup.layout, meta)
        return Scores({}, self.setup.layout, meta, heads=[u[0] for u in self.units],
                      neurons=[u[1] for u in self.units], interactions=self._interactions())

    def _interactions(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        return None

    def _row_weight(self, p: LinearProbe) -> torch.Tensor | None:
        return self.crit.row_weight(p.out_sum, p.tokens, self.setup.shift)

    def _add_weights(self, scores: Mapping[str, torch.Tensor]) -> None:
        for k, v in scores.items():
            if k in self.weights:
                self.weights[k].add_(v)
            else:
                self.weights[k] = v

    def _add_units(self, layer: int, heads: torch.Tensor, neurons: torch.Tensor) -> None:
        prev = self.units[layer]
        self.units[layer] = (heads, neurons) if prev is None else (prev[0] + heads, prev[1] + neurons)


class TorchScores(Route):
    """Per-weight scores in PyTorch from the accumulated weight gradients."""

    def add(self, batch: int, layer: int, probes: LayerProbes) -> None:
        scores: dict[str, torch.Tensor] = {}
        for p in probes.values():
            scores.update(self._linear_scores(p, batch))
        if self.setup.unit:
            self._add_units(layer, *reduce_to_units(self.setup.layout[layer], scores))
        else:
            self._add_weights(scores)

    def _linear_scores(self, p: LinearProbe, batch: int) -> dict[str, torch.Tensor]:
        _ensure_gradients(p, batch, self.setup.device, need_grad=True)
        scale = 1.0 / self.setup.samples
        w = p.module.weight.detach().float()
        out = {p.name + ".weight": w * p.grad * scale}
        if p.module.bias is not None:
            out[p.name + ".bias"] = p.module.bias.detach().float() * p.grad_bias * scale
        roww = self._row_weight(p)
        if roww is not None:
            out = {k: v * (roww[:, None] if v.dim() == 2 else roww) for k, v in out.items()}
        for v in out.values():
            v.abs_()
        return out


@dataclass
class _Target:
    """Where a kernel adds one Linear's weight score: the weight's running sum, or this batch's row or column sums."""

    s: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None

    def take(self) -> torch.Tensor | None:
        """This batch's row or column sums (zeroed for the next batch); None at weight granularity."""
        buffer = self.rows if self.rows is not None else self.cols
        if buffer is None:
            return None
        sums = buffer.clone()
        buffer.zero_()
        return sums


class EpilogueScores(Route):
    """Per-weight scores from the accumulated weight gradients by the backend's fused epilogue."""

    def __init__(self, crit: Criterion, setup: RouteSetup) -> None:
        super().__init__(crit, setup)
        self.scale = 1.0 / setup.samples
        self.targets: dict[str, _Target] = {}

    def add(self, batch: int, layer: int, probes: LayerProbes) -> None:
        sums = {role: self._add_linear(p, batch) for role, p in probes.items()}
        if self.setup.unit:
            self._add_units(layer, *reduce_sums_to_units(self.setup.layout[layer], sums))

    def _add_linear(self, p: LinearProbe, batch: int) -> torch.Tensor | None:
        """Add one Linear's batch score; at unit granularity return its row (bias included) or column sums."""
        _ensure_gradients(p, batch, self.setup.device, need_grad=p.score_in_backward is None)
        roww = self._row_weight(p)
        target = self._target(p)
        self._weight_score(p, target, roww)
        sums = target.take()
        if p.module.bias is not None:
            bias = p.module.bias.detach().float() * p.grad_bias * self.scale
            bias = (bias if roww is None else bias * roww).abs_()
            if not self.setup.unit:
                self._add_weights({p.name + ".bias": bias})
            elif UNIT_AXIS[p.role] == "rows":
                sums = sums + bias
        return sums

    def _weight_score(self, p: LinearProbe, target: _Target, roww: torch.Tensor | None) -> None:
        w = p.module.weight.detach()
        if w.numel():
            weight_score_epilogue(w, p.grad, roww, self.scale, target.s, target.rows, target.cols,
                                  backend=self.setup.backend)

    def _target(self, p: LinearProbe) -> _Target:
        if p.name not in self.targets:
            w, device = p.module.weight, self.setup.device
            if not self.setup.unit:
                target = _Target(s=self.weights.setdefault(p.name + ".weight", torch.zeros(w.shape, device=device)))
            elif UNIT_AXIS[p.role] == "rows":
                target = _Target(rows=torch.zeros(w.shape[0], device=device))
            else:
                target = _Target(cols=torch.zeros(w.shape[1], device=device))
            self.targets[p.name] = target
        return self.targets[p.name]


class FusedScores(EpilogueScores):
    """Per-weight scores added in the backward hook from X and dY: no weight gradient is kept."""

    def __init__(self, crit: Criterion, setup: RouteSetup, layers: list[LayerProbes]) -> None:
        super().__init__(crit, setup)
        for probes in layers:
            for p in probes.values():
                self._target(p)
                p.score_in_backward = self._score_in_backward

    def _score_in_backward(self, p: LinearProbe, x: torch.Tensor, dy: torch.Tensor) -> None:
        t = self._target(p)
        weight_score(x, dy, p.module.weight.detach(), self._row_weight(p), self.scale, t.s, t.rows, t.cols,
                     backend=self.setup.backend)

    def _weight_score(self, p: LinearProbe, target: _Target, roww: torch.Tensor | None) -> None:
        """Nothing left to do: the backward hook added it."""


class FirstOrderUnits(Route):
    """Unit scores `|sum_t A * dA|` over a unit's channels, times the GradCAM weight of the activation A."""

    def add(self, batch: int, layer: int, probes: LayerProbes) -> None:
        heads, neurons = (self._unit_scores(p) for p in _unit_inputs(probes, "act_stats", (4, 0), self.setup.device))
        self._add_units(layer, heads, neurons)

    def _unit_scores(self, p: LinearProbe) -> torch.Tensor:
        channel = p.act_dot / self.setup.samples
        roww = self.crit.row_weight(p.act_sum, p.tokens, self.setup.shift)
        if roww is not None:
            channel = channel * roww
        return channel.view(-1, p.unit_width).sum(1).abs()


class FisherUnits(Route):
    """Per layer, the sums over examples of g g^T (g: one example's mask gradients of the heads, of the
    neurons), and Fisher's unit scores, their diagonals."""

    def __init__(self, crit: Criterion, setup: RouteSetup) -> None:
        super().__init__(crit, setup)
        self.interactions: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(setup.layout)

    def add(self, batch: int, layer: int, probes: LayerProbes) -> None:
        if not self.crit.needs.interactions:  # the probes kept the diagonals only
            heads, neurons = (p.interactions for p in _unit_inputs(probes, "interactions", (0,), self.setup.device))
            self._add_units(layer, heads.clone(), neurons.clone())
            return
        heads, neurons = (p.interactions for p in _unit_inputs(probes, "interactions", (0, 0), self.setup.device))
        prev = self.interactions[layer]
        self.interactions[layer] = (heads, neurons) if prev is None else (prev[0] + heads, prev[1] + neurons)
        self._add_units(layer, heads.diagonal().clone(), neurons.diagonal().clone())

    def _interactions(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        return list(self.interactions) if self.crit.needs.interactions else None


def route_for(crit: Criterion, setup: RouteSetup, layers: list[LayerProbes], first_order: bool,
              fused: bool) -> Route:
    """The route that computes `crit`'s scores in a pass (`fused`: weight scores may go in the backward hook)."""
    if crit.needs.mask_gradients:
        return FisherUnits(crit, setup)
    if first_order:
        return FirstOrderUnits(crit, setup)
    if setup.backend == "torch":
        return TorchScores(crit, setup)
    if fused:
        return FusedScores(crit, setup, layers)
    return EpilogueScores(crit, setup)


def _ensure_gradients(p: LinearProbe, batch: int, device: torch.device, need_grad: bool) -> None:
    """Zero statistics for a pruned-away block (no heads) that never runs; an error if a used one got none."""
    if p.grad_bias is None and p.module.weight.numel() == 0:
        p.grad = torch.zeros_like(p.module.weight, dtype=torch.float32)
        p.grad_bias = torch.zeros(p.module.out_features, device=device)
        p.out_sum = torch.zeros(p.module.out_features, device=device)
    if p.grad_bias is None or (need_grad and p.grad is None):
        raise DeepCutsError(f"no gradient reached {p.name} on calibration batch {batch}; "
                            "is the layer used by the model's forward?")


def _unit_inputs(probes: LayerProbes, field: str, empty: tuple[int, ...], device: torch.device) -> list[LinearProbe]:
    """The attention-output and FFN-output probes, whose inputs are the heads and the neurons, each with its
    gathered `field`; one that kept no heads / neurons gets an empty `field` of shape `empty`."""
    out = []
    for role in OUTPUT_ROLES:
        p = probes[role]
        if getattr(p, field) is None and p.module.in_features == 0:
            setattr(p, field, torch.zeros(empty, device=device))
        if getattr(p, field) is None:
            raise DeepCutsError(f"no gradient reached the input of {p.name}")
        out.append(p)
    return out
