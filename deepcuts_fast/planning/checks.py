"""Checks that unit scores may be planned from: made for this model (same layout and shapes, and the weights
they were computed on), finite, and informative in every layer."""
from __future__ import annotations

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError
from ..hashing import model_fingerprint
from ..scoring.scores import Scores


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


def check_informative(scores: Scores, min_heads: int = 0, min_neurons: int = 0, what: str = "the scores") -> None:
    """Refuse NaN / inf unit scores (naming the layer and parameter), and a layer whose scores are all zero unless
    min_heads / min_neurons keep units in it: zeros there say nothing about which units matter, and a budget
    spent on them would drop the whole layer or pick its units by index."""
    for i, lay in enumerate(scores.layout):
        h, n = scores.heads(i), scores.neurons(i)
        for unit_type, s, role in (("heads", h, "query"), ("FFN neurons", n, "ffn_in")):
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
