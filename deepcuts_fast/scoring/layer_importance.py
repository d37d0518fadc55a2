"""How much each encoder layer matters as a whole: what the model outputs with that one layer removed
(`families.depth.remove_layers`, the slim model's own code), compared with the intact model's on calibration
batches, as ZipLM and ShortGPT rank layers for removal. What is compared is what the model is for, read as the
label-free objective reads it (`scoring.objective`): a trained head's outputs (the KL divergence of its softmax
from the intact model's, per example, per real token for token tasks, per start / end for QA; the squared error
over the outputs' variance for a regression head), else the pooled embedding (1 - cosine), so no labels are needed.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import base_model, encoder_layers
from ..errors import DeepCutsError
from ..families import family
from ..families.depth import remove_layers
from ..models import model_device, to_device
from ..tasks import without_labels
from .objective import Objective, pool, resolve_objective


def layer_importance(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> list[float]:
    """Per encoder layer, how far `model`'s outputs on `batches` move when that layer is removed (0: not at all): the
    mean KL divergence of a trained head's softmax (or its squared error over the outputs' variance, for a
    regressor), else the mean 1 - cosine of the pooled embeddings. A layer the family cannot remove
    (`Family.removable_layers`) gets infinity, so a plan never picks it."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"layer_importance takes a torch model, got {type(model).__name__}")
    device = model_device(model)
    inputs = [to_device(without_labels(b), device) for b in batches]
    if not inputs or not all("input_ids" in b for b in inputs):
        raise DeepCutsError("layer_importance needs calibration batches with input_ids; the data is empty")
    objective = resolve_objective(model, None, "distill", announce=False)
    removable = set(family(model).removable_layers(model.config))
    was_training = model.training
    model.eval()
    try:
        intact = _outputs(model, inputs, objective)
        out = []
        for i in range(len(encoder_layers(model))):
            if i not in removable:
                out.append(float("inf"))
                continue
            without = copy.deepcopy(model)
            remove_layers(without, [i])
            out.append(_distance(intact, _outputs(without, inputs, objective), inputs, objective))
            del without
        return out
    finally:
        model.train(was_training)


def _outputs(model: nn.Module, inputs: list[dict], objective: Objective) -> list[torch.Tensor]:
    """What the objective reads on every batch, in float32: the head's outputs, or the pooled embedding."""
    with torch.no_grad():
        if objective.output == "embedding":
            return [pool(base_model(model)(**b).last_hidden_state.float(), _mask(b), objective.pooling)
                    for b in inputs]
        return [objective.head_task.scored(model(**b)).float() for b in inputs]


def _mask(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"]) if mask is None else mask


def _distance(intact: list[torch.Tensor], other: list[torch.Tensor], inputs: list[dict],
              objective: Objective) -> float:
    """The mean over examples (real tokens for a per-token head) of the outputs' divergence."""
    per_token = objective.output == "logits" and objective.head_task.per_token
    total, count = 0.0, 0
    for a, b, batch in zip(intact, other, inputs):
        a, b = a.double(), b.double()  # small divergences are differences of nearly equal logs
        if objective.output == "embedding":
            d = 1 - F.cosine_similarity(a, b, dim=-1)
        elif a.shape[-1] > 1:  # a softmax over classes (or positions): KL(intact || without the layer)
            d = (a.softmax(-1) * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1)
        else:  # a regression head
            d = ((a - b) ** 2).squeeze(-1) / a.var().clamp_min(1e-12)
        if per_token:
            d = d[_mask(batch).bool()]
        total += float(d.sum())
        count += d.numel()
    if not count:
        raise DeepCutsError("the calibration batches hold no real token (every attention_mask is 0)")
    return total / count
