"""The loss a scoring pass differentiates: cross-entropy (or MSE) to the data's labels, or distillation to the dense
model's own outputs, which needs no labels and no trained head.

Scores are taken at the dense model, where a distillation loss to its own outputs is at its minimum, so its exact
gradient is zero and every first-order criterion would score zero. The distillation objective therefore
differentiates the model's negative log-likelihood of a target SAMPLED from the dense model's own predictive
distribution: a class drawn from its softmax (a classifier; a class per real token for token classification; a start
and an end position for extractive QA), or its output plus N(0, I) noise (a pooled embedding, a regression head);
what a task's model outputs and which batch keys hold its labels come from its module in `deepcuts_fast.tasks`. In
expectation over the draws this gradient is the distillation loss's gradient at any point (zero at the dense model),
and its second moment at the dense model is that loss's Hessian there, the true Fisher (KL to the dense softmax) or
the Gauss-Newton matrix J^T J (half the squared error to the dense embedding). Draws are seeded by (seed, batch
index), so scores reproduce and shards of a run draw what the whole run draws.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeepCutsError, check_choice
from ..tasks import IGNORED, SEQUENCE, TASKS, Task, saved_task, task_named, task_of_head

OBJECTIVES = ("auto", "labels", "distill")
"""`objective=` values: labels when the data has them and the model a trained head (auto), or always / never."""
UNTRAINED_HEAD = "deepcuts_untrained_head"
"""The config attribute that marks a classifier head as randomly initialized; saved with the config, so a model
pruned from such a one (and its saved folder) is never taken for a trained classifier."""
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
"""How a bare encoder's token states become one embedding (sentence-transformers' names, without `pooling_mode_`)."""


@dataclass(frozen=True)
class Objective:
    """A resolved objective: `kind` "labels" or "distill"; `output` "logits" (the model's head: the tensors its
    `task` names) or "embedding" (the encoder's pooled output, no head); `pooling` and `normalize` say how an
    embedding is made."""

    kind: str
    output: str = "logits"
    pooling: str = "mean"
    normalize: bool = False
    task: str = SEQUENCE

    @property
    def head_task(self) -> Task:
        """The task whose head's outputs and labels the objective reads."""
        return task_named(self.task)

    @property
    def distill(self) -> bool:
        """Whether the targets come from the dense model rather than from the data."""
        return self.kind == "distill"

    def describe(self) -> str:
        """The objective in a few words, as scores' meta and messages name it."""
        if not self.distill:
            return "labels"
        if self.output == "logits":
            return f"distill (dense model's {' and '.join(self.head_task.outputs)})"
        return f"distill ({self.pooling}-pooled{', normalized' if self.normalize else ''} embeddings)"

    def split(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """(the model's inputs: `batch` without any task's labels, this task's labels or None)."""
        label_keys = {key for task in TASKS.values() for key in task.labels}
        return ({k: v for k, v in batch.items() if k not in label_keys},
                self.head_task.batch_labels(batch) if self.output == "logits" else None)

    def outputs(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The tensor the loss reads: the head's logits (the task's: one row per example, per token, or start and
        end logits stacked as (batch, 2, tokens)), or the pooled embedding of the encoder (its head, if any, never
        runs)."""
        if self.output == "logits":
            return self.head_task.scored(model(**inputs))
        encoder = getattr(model, "base_model", model)
        accepted = inspect.signature(encoder.forward).parameters
        hidden = encoder(**{k: v for k, v in inputs.items() if k in accepted})[0]
        mask = inputs.get("attention_mask")
        mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask
        pooled = pool(hidden, mask, self.pooling)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def targets(self, dense: torch.Tensor, labels: torch.Tensor | None, seed: int, batch: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each example's target: its label, or a draw from the dense model's predictive distribution given its
        `dense` outputs (a class from the softmax of each row: per example, per real token of `mask` (the others
        get IGNORED), a start and an end position; the output plus N(0, I) noise), seeded by (`seed`, `batch`)."""
        if not self.distill:
            return labels
        generator = torch.Generator().manual_seed(_draw_seed(seed, batch))
        dense = dense.detach().float().cpu()
        if self._categorical(dense):
            rows = torch.softmax(dense.reshape(-1, dense.shape[-1]), dim=-1)
            drawn = torch.multinomial(rows, 1, generator=generator).view(dense.shape[:-1])
            if self.head_task.per_token and mask is not None:
                drawn = drawn.masked_fill(mask.cpu() == 0, IGNORED)
        else:
            drawn = dense + torch.randn(dense.shape, generator=generator)
        return drawn.to(labels.device if labels is not None else "cpu")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The sum over stacked copies of each copy's mean loss: cross-entropy to a class target (the mean over the
        copy's targets that are not IGNORED: its examples, labelled tokens, or start and end positions), else the
        squared error (halved for distillation: the Gaussian negative log-likelihood of unit variance)."""
        outputs = outputs.float()
        targets = targets.to(outputs.device)
        if self._categorical(outputs):
            targets = targets.long().reshape(-1)
            copies = max(1, outputs.shape[0] // batch_size)
            per_copy = ((targets != IGNORED).sum() / copies).clamp_min(1.0)
            return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets, ignore_index=IGNORED,
                                   reduction="sum") / per_copy
        if not self.distill:
            return F.mse_loss(outputs.view(-1), targets.float().view(-1), reduction="sum") / batch_size
        return 0.5 * (outputs - targets.float().view_as(outputs)).square().sum() / batch_size

    def _categorical(self, outputs: torch.Tensor) -> bool:
        """Whether the outputs are a classifier's logits over two or more classes (or token positions)."""
        return self.output == "logits" and outputs.shape[-1] > 1


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One embedding per sequence from the token states `hidden` (batch, tokens, width) over the real tokens of
    `mask`, as sentence-transformers pools (`mode` one of POOLING_MODES)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    summed, count = (hidden * weights).sum(dim=1), weights.sum(dim=1).clamp_min(1.0)
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


def head_state(model: nn.Module) -> str:
    """"none" for a bare encoder (no task head), "random" for a head marked `UNTRAINED_HEAD` or whose saved folder
    had no head of the model's task (its head was initialised when loaded), else "trained" (a saved model of its
    task, or one built in memory)."""
    if getattr(model, "base_model", model) is model:
        return "none"
    saved_as = getattr(model.config, "architectures", None) or []
    if getattr(model.config, UNTRAINED_HEAD, False) or (saved_as and saved_task(model.config) != task_of_head(model)):
        return "random"
    return "trained"


def mark_untrained_head(model: nn.Module) -> nn.Module:
    """Mark `model`'s classifier head as randomly initialized (`UNTRAINED_HEAD`), so that no objective scores
    through it, and return the model."""
    setattr(model.config, UNTRAINED_HEAD, True)
    return model


def resolve_objective(model: nn.Module, batches: Sequence[Mapping] | None, requested: str = "auto",
                      announce: bool = True) -> Objective:
    """The objective `requested` ("auto", "labels" or "distill") means for `model` and `batches`: auto takes the
    labels when every batch has them and the model has a trained head, else distillation, and says so in one line
    on stderr (`announce`); "labels" is refused where it would need a head or labels that are not there."""
    check_choice("objective", requested, OBJECTIVES)
    head = head_state(model)
    task = task_of_head(model) if head != "none" else task_named(SEQUENCE)
    missing = next((i for i, b in enumerate(batches or []) if task.batch_labels(b) is None), None)
    if requested == "labels":
        if head != "trained":
            raise DeepCutsError(_no_head(model, head) + "; its labels loss would go through a randomly initialized "
                                "(or no) head: pass objective='distill' (or 'auto') to score it by distillation")
        if missing is not None:
            raise DeepCutsError(f"calibration batch {missing} has no {_labels_of(task, quoted=True)}; pass "
                                "objective='distill' (or 'auto') to score by distillation to the dense model's own "
                                "outputs")
        return Objective("labels", task=task.name)
    chosen = _distillation(model, head)
    if requested == "auto":
        if head == "trained" and missing is None:
            return Objective("labels", task=task.name)
        if announce:
            unlabelled = all(task.batch_labels(b) is None for b in batches or [])
            why = (_no_head(model, head) if head != "trained" else f"the calibration data has no {_labels_of(task)}"
                   if unlabelled else f"calibration batch {missing} has no {_labels_of(task)}")
            print(f"deepcuts: note: {why}, so the gradients come from distillation to the dense model's own outputs: "
                  f"{chosen.describe()}", file=sys.stderr)
    return chosen


def _distillation(model: nn.Module, head: str) -> Objective:
    """Distillation through the trained head's logits, else through the encoder's pooled embedding (the pooling
    of the model folder's sentence-transformers config when it has one, else the mean over real tokens)."""
    if head == "trained":
        return Objective("distill", task=task_of_head(model).name)
    pooling, normalize = sentence_pooling(getattr(model.config, "_name_or_path", "") or "")
    return Objective("distill", output="embedding", pooling=pooling, normalize=normalize)


def sentence_pooling(folder: str) -> tuple[str, bool]:
    """(pooling mode, whether embeddings are normalized) of a sentence-transformers model folder: its
    `1_Pooling/config.json` and `modules.json`; ("mean", False) for any other folder or name."""
    root = Path(folder)
    config = root / "1_Pooling" / "config.json"
    if not folder or not config.is_file():
        return "mean", False
    try:
        settings = json.loads(config.read_text())
        modules = json.loads((root / "modules.json").read_text()) if (root / "modules.json").is_file() else []
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"{config} (or modules.json beside it) is not readable JSON ({e}); fix or remove it") from e
    on = [name[len("pooling_mode_"):].removesuffix("_tokens").removesuffix("_token")
          for name, value in settings.items() if name.startswith("pooling_mode_") and value is True]
    if len(on) != 1 or on[0] not in POOLING_MODES:
        raise DeepCutsError(f"{config} asks for pooling {', '.join(on) or 'none'}; distillation scoring pools with "
                            f"one of {', '.join(POOLING_MODES)}: set exactly one of those modes")
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict))
    return on[0], normalize


def _labels_of(task: Task, quoted: bool = False) -> str:
    """What a task's labels are, for a message (a sequence classifier's: "labels", as the data files call them, or
    its batch key, `quoted`)."""
    if task.name == SEQUENCE:
        return "'labels'" if quoted else "labels"
    shape = "(batch, tokens)" if task.per_token else "(batch,)"
    return f"{task.name} labels ({' and '.join(map(repr, task.labels))} of shape {shape})"


def _no_head(model: nn.Module, head: str) -> str:
    """Why the model has no head to score through, for a message."""
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    if head == "none":
        return f"model {name!r} is a bare encoder with no task head"
    return f"model {name!r} has no trained task head (its classifier was randomly initialized when loaded)"


def _draw_seed(seed: int, batch: int) -> int:
    """The seed of one batch's target draws, from the run's seed and the batch's global index."""
    digest = hashlib.blake2b(f"objective/{seed}/{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
