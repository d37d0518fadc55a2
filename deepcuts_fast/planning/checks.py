"""Checks that unit scores may be planned from: made for this model (same layout and shapes, and the weights
they were computed on), floating-point with float32's range, finite, and informative in every layer; scores that
cannot rank some units (constant there) or that no criterion gives are warned about."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError
from ..hashing import model_fingerprint
from ..scoring.scores import Scores, dtype_problem

IMPLAUSIBLE = 1e15
"""Unit scores beyond this magnitude are warned about: no criterion gives them on a model with finite weights. Real
ones stay far below: on MiniLM the largest magnitude score (a head's summed |weights|) is ~4e3, the largest gradient
score ~1.4 and Fisher's ~3e-3 after 4 batches of 16, and the data criteria grow linearly with the batches; 1e15 would
take ~1e15 batches, or weights ~1e11 times a trained model's. Values there are hand edits, sentinels (2**62) or a
diverged model's, and they would rank first."""


def check_scores(model: nn.Module, scores: Scores) -> None:
    """Fail, naming the first mismatching parameter or both models, when `scores` were not made for `model`."""
    check_layout(model, scores)
    recorded = scores.model_fingerprint
    if recorded is not None:
        current = model_fingerprint(model)
        if current != recorded:
            name = getattr(model.config, "_name_or_path", "") or model.config.model_type
            raise DeepCutsError(f"these {scores.criterion} scores were computed on {model_name(scores)}, not on "
                                f"this model, {name} (weights {current}); score the model you prune")


def check_layout(model: nn.Module, scores: Scores) -> None:
    """Fail, naming the first mismatching parameter, when `scores` do not cover `model`'s layers, units and
    parameters (the weights hash is `check_scores`' part)."""
    layers = encoder_layers(model)
    if len(scores.layout) != len(layers):
        raise DeepCutsError(f"scores cover {len(scores.layout)} encoder layers, the model has {len(layers)}")
    units = scores.unit_scores()
    if len(units["heads"]) != len(layers) or len(units["neurons"]) != len(layers):
        raise DeepCutsError(f"scores hold unit scores of {len(units['heads'])} / {len(units['neurons'])} layers (heads "
                            f"/ neurons), their layout and the model {len(layers)}; give one per encoder layer")
    params = dict(model.named_parameters())
    for i, (layer, lay) in enumerate(zip(layers, scores.layout)):
        for role, name in layer.names.items():
            if lay.names[role] != name:
                raise DeepCutsError(f"scores were made for another model: parameter {name}.weight is not in them "
                                    f"(they have {lay.names[role]}.weight)")
        if scores.heads(i).dim() != 1 or scores.neurons(i).dim() != 1:
            raise DeepCutsError(f"scores of layer {i} are shaped {tuple(scores.heads(i).shape)} (heads) and "
                                f"{tuple(scores.neurons(i).shape)} (FFN neurons); give one score per unit, a vector")
        if scores.heads(i).numel() != layer.num_heads or scores.neurons(i).numel() != layer.ffn_width:
            raise DeepCutsError(f"scores of layer {i} cover {scores.heads(i).numel()} heads / "
                                f"{scores.neurons(i).numel()} neurons, the model has {layer.num_heads} / "
                                f"{layer.ffn_width} (parameter {layer.names['query']}.weight)")
    for name, s in scores.items():
        if name not in params or tuple(params[name].shape) != tuple(s.shape):
            got = tuple(params[name].shape) if name in params else "missing"
            raise DeepCutsError(f"scores do not match the model at parameter {name}: "
                                f"scores {tuple(s.shape)}, model {got}")


def check_informative(scores: Scores, min_heads: int = 0, min_neurons: int = 0, what: str | None = None) -> None:
    """Refuse unit scores that are not floating-point with float32's range, NaN / inf (naming the layer and
    parameter), and a layer whose scores are all zero unless min_heads / min_neurons keep units in it: zeros there say
    nothing about which units matter, and a budget spent on them would drop the whole layer or pick its units by
    index. Warn, in one line, where scores are constant over a layer's heads or neurons or beyond IMPLAUSIBLE."""
    what = what or f"the {scores.criterion or 'given'} scores"
    for i, lay in enumerate(scores.layout):
        h, n = scores.heads(i), scores.neurons(i)
        for unit_type, s, role in (("heads", h, "query"), ("FFN neurons", n, "ffn_in")):
            problem = dtype_problem(s.dtype)
            if problem:
                raise DeepCutsError(f"{what} of layer {i} {unit_type} are {problem}; pass float32 scores (as dc.score "
                                    "and dc.Scores.load give them)")
            if not bool(torch.isfinite(s).all()):
                raise DeepCutsError(f"{what} of layer {i} {unit_type} hold NaN or inf values (parameter "
                                    f"{_bad_parameter(scores, i) or lay.names[role] + '.weight'}); NaN would rank "
                                    "above every number: score a model with finite weights again")
        forced = min(min_heads, h.numel()) + min(min_neurons, n.numel())
        if h.numel() + n.numel() and not forced and not bool(h.any()) and not bool(n.any()):
            raise DeepCutsError(f"{what} of layer {i} are all zero, so nothing says which of its units matter and "
                                f"the plan would drop the layer or pick units by index; check the scores (another "
                                "criterion, or more calibration data), or pass min_heads= / min_neurons= to keep "
                                "units in every layer")
    _warn_if_degenerate(scores, what)


def _warn_if_degenerate(scores: Scores, what: str) -> None:
    """One warning naming the layers whose heads or FFN neurons all score the same (ties the plan breaks by unit
    position, not importance) and the largest score beyond IMPLAUSIBLE, if any."""
    constant, largest = [], (0.0, "")
    for i in range(len(scores.layout)):
        for unit_type, s in (("heads", scores.heads(i)), ("FFN neurons", scores.neurons(i))):
            if s.numel() > 1 and bool((s == s.flatten()[0]).all()):
                constant.append(f"layer {i} {unit_type}")
            peak = float(s.abs().max()) if s.numel() else 0.0
            if peak > max(IMPLAUSIBLE, largest[0]):
                largest = (peak, f"layer {i} {unit_type}")
    problems = []
    if constant:
        problems.append(f"constant over {', '.join(constant)} (every unit there scores the same, so the plan breaks "
                        "their ties by unit position, not importance)")
    if largest[1]:
        problems.append(f"as large as {largest[0]:.3g} in {largest[1]}, beyond the {IMPLAUSIBLE:.0e} no criterion "
                        "gives on a model with finite weights (such units rank first)")
    if problems:
        warnings.warn(f"{what} are {' and '.join(problems)}; check how they were made, or score again with "
                      "`deepcuts score`", UserWarning, stacklevel=4)


def _bad_parameter(scores: Scores, layer: int) -> str | None:
    """The first parameter of `layer` whose per-weight scores are not finite (None for unit scores)."""
    for role, module in scores.layout[layer].names.items():
        for name in (f"{module}.weight", f"{module}.bias"):
            if name in scores and not bool(torch.isfinite(scores[name]).all()):
                return name
    return None


def model_name(scores: Scores) -> str:
    """How a message names the model scores were computed on: its name and weights hash."""
    return f"{scores.meta.get('model_name') or 'a model'} (weights {scores.model_fingerprint or 'unrecorded'})"
