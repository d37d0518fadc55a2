"""Fine-tune and evaluate sequence classifiers.

Training is seeded and leaves the caller's RNG untouched, so the same settings on the same data
give the same model (which is what lets `finetune_cache` reuse a fine-tune, and rewinding replay one).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import DeepCutsError
from .models import check_token_ids, model_device, to_device
from .precision import autocast, choose
from .stats import encode_ids, macro_f1

Batch = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Shared helpers


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def num_steps(n_batches: int, epochs: float) -> int:
    """Optimizer steps for `epochs` passes over `n_batches` (fractional epochs use a prefix of a pass)."""
    if n_batches == 0:
        raise DeepCutsError("no training batches: the training data is empty")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise DeepCutsError(f"epochs must be a positive number, got {epochs}")
    return max(1, round(epochs * n_batches))


def _batch_order(n_batches: int, steps: int, seed: int) -> Iterator[int]:
    """Batch indices for `steps` steps: a fresh seeded shuffle of all batches for every epoch."""
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        for i in torch.randperm(n_batches, generator=g)[: steps - done].tolist():
            yield i
            done += 1


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW that, as usual for transformers, does not decay biases and LayerNorm weights (1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _linear_schedule(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear ramp over `warmup_steps`, then linear decay reaching 0 after the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (steps - step) / (steps - warmup_steps))

    return factor


def _training_loss(model: nn.Module, batch: Batch, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """The model's own loss (CE or MSE from its `labels` handling) on one batch."""
    if "labels" not in batch:
        raise DeepCutsError("training batches need 'labels'")
    with autocast(device, dtype):
        return model(**to_device(batch, device)).loss


@dataclass(frozen=True)
class TrainSettings:
    """How `finetune` trains (its keyword arguments besides the data, progress and masks), as one value
    that callers can pass on and hash: the fine-tune cache keys its entries by it."""

    epochs: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.0
    seed: int = 0
    dtype: str | torch.dtype | None = "auto"


def finetune(
    model: nn.Module,
    batches: Sequence[Batch],
    epochs: float = 1.0,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.0,
    seed: int = 0,
    dtype: str | torch.dtype | None = "auto",
    progress: bool = True,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Fine-tune `model` in place with AdamW and a linear schedule; returns it in eval mode.

    `epochs` may be fractional (0.5 = half the batches, in a seeded shuffled order); `warmup` is the
    fraction of steps spent ramping the LR up. Dropout and batch order are seeded by `seed`, inside
    a forked RNG so the caller's random state is unchanged. `masks` (parameter name -> bool keep
    mask) are applied before training and after every step, so pruned weights stay zero. `dtype`
    "auto" autocasts to bf16 where the device runs it natively, else trains in fp32 (as
    `deepcuts_fast.precision` decides).
    """
    if not 0.0 <= warmup < 1.0:
        raise DeepCutsError(f"warmup is a fraction of the training steps in [0, 1), got {warmup}")
    steps = num_steps(len(batches), epochs)
    device = model_device(model)
    autocast_dtype = choose("train", device, dtype).autocast_dtype
    pruned = _pruned_entries(model, masks or {})
    _zero_pruned(pruned)
    optimizer = _optimizer(model, lr, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(steps, round(warmup * steps)))
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), tqdm(total=steps, desc="fine-tune", disable=not progress) as bar:
        torch.manual_seed(seed)
        model.train()
        try:
            for step, i in enumerate(_batch_order(len(batches), steps, seed)):
                loss = _training_loss(model, batches[i], device, autocast_dtype)
                value = loss.item()
                if not math.isfinite(value):
                    raise DeepCutsError(
                        f"fine-tuning diverged: the loss is {value} at step {step + 1} of {steps}; "
                        f"try a lower learning rate than lr={lr:g}"
                    )
                loss.backward()
                optimizer.step()
                _zero_pruned(pruned)
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{value:.4f}")
                bar.update()
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.eval()
    return model


def _pruned_entries(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, bool mask of its pruned entries) for every masked parameter, checked once."""
    params = dict(model.named_parameters())
    entries = []
    for name, mask in masks.items():
        if name not in params or tuple(mask.shape) != tuple(params[name].shape):
            raise DeepCutsError(f"mask {name!r} does not match a parameter of the model being fine-tuned")
        entries.append((params[name], ~mask.to(device=params[name].device, dtype=torch.bool)))
    return entries


@torch.no_grad()
def _zero_pruned(entries: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for param, pruned in entries:
        param.masked_fill_(pruned, 0)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    """Metrics over all examples: classification fills `accuracy` and `macro_f1`, regression `mse` and `pearson`.

    A classification result also keeps the predicted class ids and the labels, in data order, so two models
    evaluated on the same batches can be compared example by example (`deepcuts_fast.stats.compare`)."""

    loss: float  # mean cross-entropy per example, or the MSE for regression
    accuracy: float | None
    mse: float | None
    pearson: float | None  # None when undefined (fewer than 2 examples or a constant series)
    n: int  # number of examples
    macro_f1: float | None = None  # unweighted mean of the per-class F1 (classes seen in labels or predictions)
    predictions: tuple[int, ...] | None = field(default=None, repr=False)  # predicted class ids, data order
    labels: tuple[int, ...] | None = field(default=None, repr=False)  # the labels, same order

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metrics; `predictions` and `labels` as compact strings of one character per example
        (`deepcuts_fast.stats.encode_ids`; `decode_ids` reads them back), None for regression."""
        out = {k: getattr(self, k) for k in ("loss", "accuracy", "mse", "pearson", "n", "macro_f1")}
        for key in ("predictions", "labels"):
            value = getattr(self, key)
            out[key] = None if value is None else encode_ids(value)
        return out


def _logits_and_labels(
    model: nn.Module, batches: Iterable[Batch], dtype: torch.dtype | None, progress: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: fp32 logits (B, C) and labels on the CPU, computed without gradients; token ids the model
    cannot embed are an error, not an IndexError from inside it."""
    device = model_device(model)
    for i, batch in enumerate(tqdm(batches, desc="evaluate", disable=not progress)):
        if "labels" not in batch:
            raise DeepCutsError("evaluation batches need 'labels'")
        check_token_ids(model, batch, f"evaluation batch {i}")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with autocast(device, dtype):
            logits = model(**to_device(inputs, device)).logits
        yield logits.float().cpu(), batch["labels"].cpu()


def _classification_result(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
    """Example-weighted mean cross-entropy, accuracy and macro-F1, with the predictions and labels kept."""
    total_loss, preds, targets = 0.0, [], []
    for logits, labels in pairs:
        if labels.is_floating_point():  # .long() would silently truncate 2.5 to class 2
            raise DeepCutsError("the evaluation labels are real numbers but the model is a classifier; evaluate "
                                "a regression model (num_labels=1) on them, or write class ids as integers")
        labels = labels.long().reshape(-1)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        preds.append(logits.argmax(-1).reshape(-1))
        targets.append(labels)
    pred = torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)
    target = torch.cat(targets).numpy() if targets else np.empty(0, dtype=np.int64)
    n = len(target)
    _require_examples(n)
    return EvalResult(loss=total_loss / n, accuracy=int((pred == target).sum()) / n, mse=None, pearson=None, n=n,
                      macro_f1=macro_f1(pred, target), predictions=tuple(pred.tolist()),
                      labels=tuple(target.tolist()))


def _regression_result(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
    """MSE (also reported as the loss) and the Pearson correlation of predictions and targets."""
    preds, targets = [], []
    for logits, labels in pairs:
        preds.append(logits.reshape(-1).double().numpy())
        targets.append(labels.reshape(-1).double().numpy())
    pred = np.concatenate(preds) if preds else np.empty(0)
    target = np.concatenate(targets) if targets else np.empty(0)
    _require_examples(len(pred))
    mse = float(np.mean((pred - target) ** 2))
    defined = len(pred) > 1 and np.std(pred) > 0 and np.std(target) > 0
    pearson = float(np.corrcoef(pred, target)[0, 1]) if defined else None
    return EvalResult(loss=mse, accuracy=None, mse=mse, pearson=pearson, n=len(pred))


def _require_examples(n: int) -> None:
    if n == 0:
        raise DeepCutsError("no evaluation batches: the evaluation data is empty")


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    dtype: str | torch.dtype | None = torch.float32,
    progress: bool = False,
) -> EvalResult:
    """Metrics of `model` on labelled `batches` (eval mode, no gradients; the model's mode is restored).

    A model with one output (`num_labels == 1`) is scored as a regressor, otherwise as a classifier.
    `dtype` is fp32 by default, so accuracies compare across machines; "auto" (the fastest dtype the
    device runs natively, as `deepcuts_fast.precision` decides) or an explicit bf16 / fp16 autocasts the forwards.
    """
    autocast_dtype = choose("infer", model_device(model), dtype).autocast_dtype
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pairs = _logits_and_labels(model, batches, autocast_dtype, progress)
            if getattr(model.config, "num_labels", None) == 1:
                return _regression_result(pairs)
            return _classification_result(pairs)
    finally:
        model.train(was_training)


def evaluate_logits(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], regression: bool = False) -> EvalResult:
    """Metrics of (logits, labels) batches computed elsewhere (an ONNX file under onnxruntime), reported as
    `evaluate` reports a torch model's, so the two compare."""
    return _regression_result(pairs) if regression else _classification_result(pairs)
