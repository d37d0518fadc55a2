"""The record a task module declares: what a model of that task is called, outputs, reads as labels and is
measured by."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..errors import DeepCutsError

IGNORED = -100
"""The label value a loss skips (transformers' convention): padding tokens, sub-word pieces left unlabelled."""


class Collected(NamedTuple):
    """One evaluation batch as a task's metric reads it: the model's `scored` outputs (fp32, CPU), the batch's
    `batch_labels`, and its attention mask (batch, tokens), None when the batch has none."""

    outputs: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class Measured:
    """What a task's metric makes of a model's outputs on labelled batches: the named `metrics`, `headline` the one
    the task is judged by; the mean `loss` the task's head computes; `n` examples; a `note` where the metric is not
    the task's usual one; for classification the predicted class ids and the labels in data order (so two models
    compare example by example)."""

    metrics: dict[str, float | None]
    headline: str
    loss: float
    n: int
    note: str | None = None
    predictions: tuple[int, ...] | None = field(default=None, repr=False)
    labels: tuple[int, ...] | None = field(default=None, repr=False)


Metric = Callable[[Iterable[Collected], Any], Measured]
"""A task's metric: its evaluation batches' `Collected` outputs and the model's config -> `Measured`."""


def require_examples(n: int) -> None:
    """Refuse to measure nothing: an empty evaluation set has no metric."""
    if n == 0:
        raise DeepCutsError("no evaluation batches: the evaluation data is empty")


@dataclass(frozen=True)
class Task:
    """One task a model can be saved for.

    `name`: how the API and messages call it. `suffix`: the end of its transformers class names
    (`<Stem><suffix>`, e.g. `BertForTokenClassification`), which is also how a folder's config `architectures`
    says it holds this task. `auto_class`: the transformers auto class a saved folder's `auto_map` names for it.
    `outputs`: the names of the model output's tensors the task reads (one row per example for `logits`, per token
    for token logits, start and end logits for extractive QA; the pooled output for an embedding). `labels`: the
    batch keys holding its labels. `per_token`: whether its targets are per token, so padding tokens take no
    target. `head`: whether it has a task head on top of the encoder (an embedding model has none). `num_labels`:
    whether its head's width is the config's `num_labels` chosen by the data (sequence and token classification).
    `token_axis`: whether its outputs have a tokens axis (dim 1: token logits, start / end logits), so they are
    compared at real tokens only and exported with a dynamic sequence axis. `exported`: the ONNX graph's output
    names when they are not `outputs` (an embedding model's graph outputs its pooled embedding). `metric`: what
    `evaluate` reports for a model of this task (`Metric`); None when there is none, `unmeasured` then says why and
    what measures such a model instead.
    """

    name: str
    suffix: str
    auto_class: str
    outputs: tuple[str, ...]
    labels: tuple[str, ...]
    per_token: bool = False
    head: bool = True
    num_labels: bool = False
    token_axis: bool = False
    exported: tuple[str, ...] | None = None
    metric: Metric | None = field(default=None, compare=False)
    unmeasured: str | None = None
    position: int = 0  # the task's place in listings and in the match of `architectures` (longer suffixes first)

    def check_measurable(self) -> None:
        """Refuse to evaluate a model of a task that has no metric, saying what measures it instead."""
        if self.metric is None:
            raise DeepCutsError(f"evaluate has no metric for {self.name} models"
                                + (f": {self.unmeasured}" if self.unmeasured else ""))

    def matches(self, architecture: str) -> bool:
        """Whether a config `architectures` entry names a model of this task."""
        return architecture.endswith(self.suffix)

    @property
    def graph_outputs(self) -> tuple[str, ...]:
        """The names of an exported graph's outputs."""
        return self.exported or self.outputs

    def scored(self, output) -> torch.Tensor:
        """The tensor a scoring loss reads from a model output: the `outputs` tensors stacked along a new dim 1
        when there are several (QA: (batch, 2, tokens)), so the last dim is always what a target picks from."""
        tensors = [output[name] if isinstance(output, Mapping) else getattr(output, name) for name in self.outputs]
        return tensors[0] if len(tensors) == 1 else torch.stack(tensors, dim=1)

    def batch_labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The batch's labels shaped like a target of `scored` (QA: (batch, 2) start and end), or None when the
        batch lacks any of them or they are not this task's: one per example, or per token (batch, tokens) for a
        `per_token` task (a text classifier's labels are no token labels)."""
        ids = batch.get("input_ids")
        if ids is None or not all(torch.is_tensor(batch.get(key)) for key in self.labels):
            return None
        shape = tuple(ids.shape) if self.per_token else (ids.shape[0],)
        tensors = [batch[key] for key in self.labels]
        if any(tuple(t.shape) != shape for t in tensors):
            return None
        return tensors[0] if len(tensors) == 1 else torch.stack(tensors, dim=1)
