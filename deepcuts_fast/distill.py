"""Label-free recovery: fine-tune a slim model to reproduce its dense model's outputs (knowledge distillation).

A retraining-free slim model keeps most of what the dense one does; a short distillation on the same unlabelled
calibration texts recovers much of the rest without a single label. The loss reads what the model is for, as the
distillation objective of the scores does (`scoring.objective`): the KL divergence from a trained head's softmax
(per example, per real token, or over start and end positions), the squared error of a regressor's output, or the
squared error of a bare encoder's pooled embedding (as sentence-transformers distils an embedding model; on a
normalized embedding that is 2 (1 - cosine)). `hidden_weight` adds the mean squared error of every slim layer's
output against the dense layer it was cut from (at real tokens, over the dense states' variance), as TinyBERT and
K-prune match hidden states. Both models run in eval mode: the targets are deterministic, and the dropout noise of a
training-mode student swamps the small gap a refit slim model leaves (measured on tiny models: the gap grew).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .arch import encoder_layers
from .errors import DeepCutsError
from .models import model_device, to_device
from .pruning.reconstruct import _counterparts, check_source
from .scoring.objective import Objective, resolve_objective
from .train import finetune


def distill(slim: nn.Module, dense: nn.Module, batches: Sequence[Mapping[str, Any]], epochs: float = 1.0,
            lr: float = 1e-4, weight_decay: float = 0.01, warmup: float = 0.1, hidden_weight: float = 1.0,
            seed: int = 0, dtype: str | torch.dtype | None = "auto", progress: bool = True) -> nn.Module:
    """A copy of `slim` fine-tuned to reproduce `dense`'s outputs on `batches` (labels, if any, are ignored).

    `dense` must be the model `slim` was pruned from (its layers are matched by where each slim layer came from).
    Training is `train.finetune`'s loop (AdamW, linear schedule with `warmup`, seeded, `dtype` as the precision
    policy decides); `hidden_weight` 0 matches the outputs alone."""
    if hidden_weight < 0:
        raise DeepCutsError(f"hidden_weight weighs the hidden-state loss, at least 0; got {hidden_weight}")
    check_source(slim, dense)
    if model_device(slim) != model_device(dense):
        raise DeepCutsError(f"the slim model is on {model_device(slim)} and the dense one on {model_device(dense)}; "
                            "move both to one device first")
    objective = resolve_objective(dense, None, "distill", announce=False)
    student = copy.deepcopy(slim)
    pairs = _layer_pairs(student, dense) if hidden_weight > 0 else []
    dense.eval()

    def loss(model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        inputs, _ = objective.split(to_device(batch, device))
        mask = inputs.get("attention_mask")
        with torch.no_grad(), _layer_outputs(dense, [d for _, d in pairs]) as dense_states:
            target = objective.outputs(dense, inputs).float()
        with _layer_outputs(model, [s for s, _ in pairs]) as slim_states:
            value = output_loss(objective, objective.outputs(model, inputs).float(), target, mask)
        for s, d in zip(slim_states, dense_states):
            value = value + hidden_weight * _hidden_loss(s, d, mask) / len(pairs)
        return value

    return finetune(student, batches, epochs=epochs, lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
                    dtype=dtype, progress=progress, loss=loss, dropout=False)


def output_loss(objective: Objective, outputs: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """The distillation loss of `outputs` against the dense model's `target` outputs, averaged over the examples
    (per-token tasks: over the real tokens of `mask`)."""
    if objective.output == "embedding" or outputs.shape[-1] == 1:  # pooled embedding, or a regressor's output
        return (outputs - target).square().sum(-1).mean()
    log_p, log_q = F.log_softmax(target, -1), F.log_softmax(outputs, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # per row: example, token, or start / end
    if objective.head_task.per_token and mask is not None:
        real = mask.bool()
        return kl[real].mean() if bool(real.any()) else kl.sum() * 0
    return kl.mean()


def _hidden_loss(slim: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error of one layer's output at the real tokens, over the dense states' variance."""
    if mask is not None:
        real = mask.bool()
        slim, dense = slim[real], dense[real]
    dense = dense.float()
    return (slim.float() - dense).square().mean() / dense.var().clamp_min(1e-12)


def _layer_pairs(slim: nn.Module, dense: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(slim layer module, the dense layer module it was cut from) for every slim layer (`reconstruct`'s matching)."""
    dense_layers = encoder_layers(dense)
    return [(slim.get_submodule(s.prefix), dense.get_submodule(dense_layers[i].prefix))
            for s, i in zip(encoder_layers(slim), _counterparts(slim, dense))]


@contextlib.contextmanager
def _layer_outputs(model: nn.Module, modules: list[nn.Module]):
    """A list that fills with each of `modules`' output hidden states, in order, during a forward in this block."""
    states: list[torch.Tensor] = [None] * len(modules)  # type: ignore[list-item]

    def keep(i: int):
        return lambda m, args, out: states.__setitem__(i, out[0] if isinstance(out, tuple) else out)

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()

