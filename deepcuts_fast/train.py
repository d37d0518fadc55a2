"""Fine-tune sequence classifiers, and evaluate a model of any task with a metric (`deepcuts_fast.tasks`).

Training is seeded and leaves the caller's RNG untouched, so the same settings on the same data
give the same model (which is what lets `finetune_cache` reuse a fine-tune, and rewinding replay one).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import DeepCutsError
from .models import check_token_ids, model_device, to_device
from .precision import autocast, choose
from .stats import encode_ids
from .tasks import SEQUENCE, Task, task_of_head
from .tasks.base import Collected, Measured
from .tasks.sequence_classification import classification as classification_metric
from .tasks.sequence_classification import regression as regression_metric

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
    loss: Callable[[nn.Module, Batch, torch.device], torch.Tensor] | None = None,
    dropout: bool = True,
) -> nn.Module:
    """Fine-tune `model` in place with AdamW and a linear schedule; returns it in eval mode.

    `epochs` may be fractional (0.5 = half the batches, in a seeded shuffled order); `warmup` is the
    fraction of steps spent ramping the LR up. Dropout and batch order are seeded by `seed`, inside
    a forked RNG so the caller's random state is unchanged. `masks` (parameter name -> bool keep
    mask) are applied before training and after every step, so pruned weights stay zero. `dtype`
    "auto" autocasts to bf16 where the device runs it natively, else trains in fp32 (as
    `deepcuts_fast.precision` decides). `loss(model, batch, device)` replaces the model's own loss on its labels
    (`distill` passes the distillation loss); it runs under the autocast. `dropout` False trains in eval mode.
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
        model.train(dropout)
        try:
            for step, i in enumerate(_batch_order(len(batches), steps, seed)):
                if loss is None:
                    batch_loss = _training_loss(model, batches[i], device, autocast_dtype)
                else:
                    with autocast(device, autocast_dtype):
                        batch_loss = loss(model, batches[i], device)
                value = batch_loss.item()
                if not math.isfinite(value):
                    raise DeepCutsError(
                        f"fine-tuning diverged: the loss is {value} at step {step + 1} of {steps}; "
                        f"try a lower learning rate than lr={lr:g}"
                    )
                batch_loss.backward()
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


LEGACY = ("loss", "accuracy", "mse", "pearson", "n", "macro_f1")
"""The metric fields every `EvalResult.to_dict` has, in this order, whatever the task."""


@dataclass
class EvalResult:
    """Metrics over all examples, as the model's task measures them (`deepcuts_fast.tasks`).

    `metrics` names them all and `headline` the one the task is judged by (`score` is its value): a sequence
    classifier's `accuracy` and `macro_f1`, a regressor's `mse` and `pearson`; a token classifier's entity `f1`,
    `precision` and `recall` and token `accuracy` (or token accuracy alone, with a `note`, when its labels are not
    BIO tags); an extractive QA model's token-span `exact_match` and `f1`. The fields `accuracy`, `mse`, `pearson`
    and `macro_f1` repeat the metrics of those names (None where the task has none). A classification result also
    keeps the predicted class ids and the labels, in data order, so two models evaluated on the same batches can be
    compared example by example (`deepcuts_fast.stats.compare`)."""

    loss: float  # the task head's mean loss: cross-entropy per example (per labelled token, per answer), or the MSE
    accuracy: float | None
    mse: float | None
    pearson: float | None  # None when undefined (fewer than 2 examples or a constant series)
    n: int  # number of examples
    macro_f1: float | None = None  # unweighted mean of the per-class F1 (classes seen in labels or predictions)
    predictions: tuple[int, ...] | None = field(default=None, repr=False)  # predicted class ids, data order
    labels: tuple[int, ...] | None = field(default=None, repr=False)  # the labels, same order
    metrics: dict[str, float | None] = field(default_factory=dict)  # every metric by name (default: the fields')
    headline: str | None = None  # the name of the task's main metric (default: accuracy, else mse)
    task: str = SEQUENCE
    note: str | None = None  # where the metric is not the task's usual one, why

    def __post_init__(self) -> None:
        if not self.metrics:  # made from the fields alone: a sequence classifier's or regressor's result
            self.metrics = ({"accuracy": self.accuracy, "macro_f1": self.macro_f1} if self.accuracy is not None
                            else {"mse": self.mse, "pearson": self.pearson})
        if self.headline is None:
            self.headline = "accuracy" if self.accuracy is not None else "mse"

    @classmethod
    def measured(cls, result: Measured, task: str) -> EvalResult:
        """The result of a task's metric (`Task.metric`), its metrics also in the fields of the same names."""
        m = result.metrics
        return cls(loss=result.loss, accuracy=m.get("accuracy"), mse=m.get("mse"), pearson=m.get("pearson"),
                   n=result.n, macro_f1=m.get("macro_f1"), predictions=result.predictions, labels=result.labels,
                   metrics=dict(m), headline=result.headline, task=task, note=result.note)

    @property
    def score(self) -> float | None:
        """The value of the headline metric."""
        return self.metrics.get(self.headline)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metrics: the `LEGACY` fields, `predictions` and `labels` as compact strings of one
        character per example (`deepcuts_fast.stats.encode_ids`; `decode_ids` reads them back; None but for
        classification), then the task's other metrics by name, and the `note` where there is one."""
        out = {k: getattr(self, k) for k in LEGACY}
        for key in ("predictions", "labels"):
            value = getattr(self, key)
            out[key] = None if value is None else encode_ids(value)
        out.update((k, v) for k, v in self.metrics.items() if k not in out)
        if self.note is not None:
            out["note"] = self.note
        return out


def _collected(model: nn.Module, task: Task, batches: Iterable[Batch], dtype: torch.dtype | None,
               progress: bool) -> Iterator[Collected]:
    """Per batch: the task's fp32 outputs and its labels on the CPU, computed without gradients; a batch without
    the task's labels, or with labels of the wrong shape, and token ids the model cannot embed are errors, not
    failures from inside the model."""
    device = model_device(model)
    for i, batch in enumerate(tqdm(batches, desc="evaluate", disable=not progress)):
        labels = task.batch_labels(batch)
        if labels is None:
            raise DeepCutsError(_missing_labels(task, batch, i))
        check_token_ids(model, batch, f"evaluation batch {i}")
        inputs = {k: v for k, v in batch.items() if k not in task.labels}
        with autocast(device, dtype):
            outputs = task.scored(model(**to_device(inputs, device)))
        mask = batch.get("attention_mask")
        yield Collected(outputs.float().cpu(), labels.cpu(), None if mask is None else mask.cpu())


def _missing_labels(task: Task, batch: Batch, index: int) -> str:
    """Why evaluation batch `index` has no labels `task` can read: missing keys, or labels of another shape."""
    keys = " and ".join(f"'{k}'" for k in task.labels)
    shape = "(batch, tokens)" if task.per_token else "(batch,)"
    if any(k not in batch for k in task.labels):
        return f"evaluation batches need {keys} for a {task.name} model; batch {index} has none"
    return f"evaluation batch {index}'s {keys} are not shaped {shape}, as a {task.name} model's labels are"


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    dtype: str | torch.dtype | None = torch.float32,
    progress: bool = False,
) -> EvalResult:
    """Metrics of `model` on labelled `batches` (eval mode, no gradients; the model's mode is restored), as the
    model's task measures them (`Task.metric`; see `EvalResult`).

    A sequence classifier reads `labels` (batch,), and one with one output (`num_labels == 1`) is scored as a
    regressor; a token classifier `labels` (batch, tokens), -100 where a token has none; an extractive QA model
    `start_positions` and `end_positions` (batch,), its exact match and F1 being over token positions (the batches
    carry no answer text). An embedding model is refused: `dc.evaluate_embeddings` measures it against its dense
    model. `dtype` is fp32 by default, so metrics compare across machines; "auto" (the fastest dtype the device
    runs natively, as `deepcuts_fast.precision` decides) or an explicit bf16 / fp16 autocasts the forwards.
    """
    task = task_of_head(model)
    task.check_measurable()
    autocast_dtype = choose("infer", model_device(model), dtype).autocast_dtype
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            measured = task.metric(_collected(model, task, batches, autocast_dtype, progress), model.config)
        return EvalResult.measured(measured, task.name)
    finally:
        model.train(was_training)


def evaluate_logits(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], regression: bool = False) -> EvalResult:
    """Metrics of sequence-classifier (logits, labels) batches computed elsewhere (an ONNX file under onnxruntime),
    reported as `evaluate` reports a torch model's, so the two compare."""
    collected = (Collected(logits, labels) for logits, labels in pairs)
    measured = regression_metric(collected) if regression else classification_metric(collected)
    return EvalResult.measured(measured, SEQUENCE)
