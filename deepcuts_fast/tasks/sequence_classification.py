"""Sequence classification: one row of logits per example (one output: a regression head, MSE). Measured by
accuracy and macro-F1, or for a regression head by the MSE and the Pearson correlation."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepCutsError
from ..stats import macro_f1
from .base import Collected, Measured, Task, require_examples


def classification(batches: Iterable[Collected]) -> Measured:
    """Example-weighted mean cross-entropy, accuracy and macro-F1, with the predictions and labels kept."""
    total_loss, preds, targets = 0.0, [], []
    for logits, labels, _ in batches:
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
    require_examples(n)
    return Measured({"accuracy": int((pred == target).sum()) / n, "macro_f1": macro_f1(pred, target)}, "accuracy",
                    loss=total_loss / n, n=n, predictions=tuple(pred.tolist()), labels=tuple(target.tolist()))


def regression(batches: Iterable[Collected]) -> Measured:
    """MSE (also reported as the loss) and the Pearson correlation of predictions and targets (None when
    undefined: fewer than 2 examples or a constant series)."""
    preds, targets = [], []
    for logits, labels, _ in batches:
        preds.append(logits.reshape(-1).double().numpy())
        targets.append(labels.reshape(-1).double().numpy())
    pred = np.concatenate(preds) if preds else np.empty(0)
    target = np.concatenate(targets) if targets else np.empty(0)
    require_examples(len(pred))
    mse = float(np.mean((pred - target) ** 2))
    defined = len(pred) > 1 and np.std(pred) > 0 and np.std(target) > 0
    pearson = float(np.corrcoef(pred, target)[0, 1]) if defined else None
    return Measured({"mse": mse, "pearson": pearson}, "mse", loss=mse, n=len(pred))


def metric(batches: Iterable[Collected], config) -> Measured:
    """A model with one output (`num_labels == 1`) is measured as a regressor, otherwise as a classifier."""
    return regression(batches) if getattr(config, "num_labels", None) == 1 else classification(batches)


TASK = Task(name="sequence-classification", suffix="ForSequenceClassification",
            auto_class="AutoModelForSequenceClassification", outputs=("logits",), labels=("labels",),
            num_labels=True, metric=metric, position=0)
