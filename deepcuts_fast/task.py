"""Task models: a classifier ready to score, fine-tuned (and cached) first when it has no task head.

The embedded default `minilm-rt` is the packaged MiniLM-L6 fine-tuned on the packaged Rotten
Tomatoes reviews. Any bare encoder gets the same recipe on the given data (AdamW, lr 1e-4
decaying linearly over one epoch, batch 32, length 64, examples grouped by length within pools
of 50 batches so little compute goes to padding, seed 0, bf16 autocast only where the machine
runs bf16 natively), so the pre-fine-tuning weights can be rebuilt exactly for lottery-ticket
rewinding.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import DeepCutsError, first_line
from .data import EMBEDDED, TextDataset, load_dataset, make_batches
from .models import has_classifier_head, load_model, load_tokenizer, resolve_model_path
from .train import finetuned_model

TASK_MODEL_ALIAS = "minilm-rt"
FINETUNE = dict(epochs=1.0, lr=1e-4, batch_size=32, max_length=64, length_pool=50, seed=0)


@dataclass
class TaskModel:
    """A fine-tuned classifier, its tokenizer, and how it was made (`base` None: given ready-made)."""

    model: nn.Module
    tokenizer: object
    base: str | None = None  # the encoder it was fine-tuned from, when this package fine-tuned it
    data: str | None = None
    cached: bool = False
    finetune_info: dict | None = None  # the fine-tune's cache metadata: precision, seconds, steps

    @property
    def can_rewind(self) -> bool:
        """Whether the weights from before fine-tuning can be rebuilt (lottery-ticket rewinding)."""
        return self.base is not None

    def initial_model(self) -> nn.Module:
        """The exact model fine-tuning started from: the base encoder with its seeded fresh head."""
        return load_model(self.base, num_labels=self.model.config.num_labels, seed=FINETUNE["seed"])

    def finetune_settings(self) -> dict:
        """How `finetune` trained this model (epochs, lr, seed, dtype): rerunning it from `initial_model()`
        on `train_batches()` rebuilds the model exactly, on the same machine and thread count."""
        dtype = (self.finetune_info or {}).get("precision", {}).get("dtype", "fp32")
        return {"epochs": FINETUNE["epochs"], "lr": FINETUNE["lr"], "seed": FINETUNE["seed"], "dtype": dtype}

    def train_batches(self) -> Sequence[dict]:
        """The fine-tuning batches (shuffled, seeded), reused for recovery fine-tuning."""
        return _train_batches(self.data, self.tokenizer)


_BATCHING = ("batch_size", "max_length", "length_pool")


def _train_batches(data: str, tokenizer) -> list[dict]:
    return make_batches(load_dataset(data, "train"), tokenizer, shuffle=True, seed=FINETUNE["seed"],
                        **{k: FINETUNE[k] for k in _BATCHING})


def finetuned_task_model(base: str, data: str, num_labels: int, progress: bool = True,
                         dtype: str | torch.dtype | None = "auto") -> TaskModel:
    """`base` fine-tuned on the train split of `data` with the recipe above, from the cache when possible."""
    tokenizer = load_tokenizer(base)
    settings = {k: v for k, v in FINETUNE.items() if k not in _BATCHING}
    batching = {k: FINETUNE[k] for k in _BATCHING}
    tuned = finetuned_model(
        base, tokenizer, lambda tok: _train_batches(data, tok), num_labels=num_labels,
        key_fields={"data": data, "split": "train", **batching}, dtype=dtype, progress=progress, **settings,
    )
    return TaskModel(tuned.model, tokenizer, base=base, data=data, cached=tuned.cached, finetune_info=tuned.metadata)


def embedded_task_model(progress: bool = True, dtype: str | torch.dtype | None = "auto"
                        ) -> tuple[nn.Module, object, bool]:
    """(fine-tuned MiniLM classifier, its tokenizer, whether it came from the cache)."""
    task = finetuned_task_model("minilm", EMBEDDED, num_labels=2, progress=progress, dtype=dtype)
    return task.model, task.tokenizer, task.cached


def task_model(name: str, data: str, dataset: TextDataset, progress: bool = True,
               dtype: str | torch.dtype | None = "auto") -> TaskModel:
    """The classifier the main job prunes: `minilm-rt`, a saved classifier as is, or a bare encoder
    (`minilm`, any BERT-family folder or hub name) fine-tuned on `data` first (in `dtype`: "auto"
    is bf16 only where the machine runs it natively)."""
    from transformers import AutoConfig

    from .pruning import from_pretrained

    if name == TASK_MODEL_ALIAS:
        return finetuned_task_model("minilm", EMBEDDED, num_labels=2, progress=progress, dtype=dtype)
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"cannot load model {name!r}: {first_line(e)}") from e
    if not has_classifier_head(config):
        return finetuned_task_model(name, data, num_labels=dataset.num_labels, progress=progress, dtype=dtype)
    return TaskModel(from_pretrained(name), load_tokenizer(name), data=data)
