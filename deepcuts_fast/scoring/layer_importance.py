"""How much each encoder layer matters as a whole: the model's final hidden states with that one layer removed
(`families.depth.remove_layers`, the slim model's own code), compared with the intact model's on calibration batches
(1 - cosine, averaged over the real tokens), as ShortGPT and ZipLM rank layers for removal. Task-agnostic: it reads
the encoder's output, not a head, so it needs no labels and serves embedding models as well as classifiers.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..arch import base_model, encoder_layers
from ..errors import DeepCutsError
from ..families import family
from ..families.depth import remove_layers
from ..models import model_device, to_device

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def layer_importance(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> list[float]:
    """Per encoder layer, the mean over the real tokens of `batches` of 1 - cosine between the final hidden states
    of `model` and of `model` without that layer: 0 for a layer whose removal changes nothing, up to 2. A layer the
    family cannot remove (`Family.removable_layers`) gets infinity, so a plan never picks it."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"layer_importance takes a torch model, got {type(model).__name__}")
    device = model_device(model)
    inputs = [to_device({k: v for k, v in b.items() if k in MODEL_INPUTS}, device) for b in batches]
    if not inputs or not any("input_ids" in b for b in inputs):
        raise DeepCutsError("layer_importance needs calibration batches with input_ids; the data is empty")
    removable = set(family(model).removable_layers(model.config))
    was_training = model.training
    model.eval()
    try:
        dense = _final_hidden(model, inputs)
        out = []
        for i in range(len(encoder_layers(model))):
            if i not in removable:
                out.append(float("inf"))
                continue
            without = copy.deepcopy(model)
            remove_layers(without, [i])
            out.append(_distance(dense, _final_hidden(without, inputs), inputs))
            del without
        return out
    finally:
        model.train(was_training)


def _final_hidden(model: nn.Module, inputs: list[dict]) -> list[torch.Tensor]:
    """The encoder's last hidden states on every batch, in float32."""
    encoder = base_model(model)
    with torch.no_grad():
        return [encoder(**b).last_hidden_state.float() for b in inputs]


def _distance(dense: list[torch.Tensor], other: list[torch.Tensor], inputs: list[dict]) -> float:
    """Mean over real tokens (attention mask 1, or every token without a mask) of 1 - cosine."""
    total, count = 0.0, 0
    for a, b, batch in zip(dense, other, inputs):
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        mask = batch.get("attention_mask")
        real = cos if mask is None else cos[mask.bool()]
        total += float((1 - real).double().sum())
        count += real.numel()
    if not count:
        raise DeepCutsError("the calibration batches hold no real token (every attention_mask is 0)")
    return total / count
