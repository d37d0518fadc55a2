"""Task models: the classifier a `--model` value names, ready to score.

The embedded default `minilm-rt` is the packaged MiniLM-L6 fine-tuned on the packaged Rotten
Tomatoes reviews. A bare encoder (no task head) is fine-tuned first with the same recipe
on the given data (AdamW, lr 1e-4 decaying linearly over one epoch, batch 32, length 64 tokens unless
the caller asks for another, examples grouped by length within pools of 50 batches so little compute
goes to padding, seed 0, precision as `deepcuts_fast.precision` decides), so the pre-fine-tuning
weights can be rebuilt exactly for lottery-ticket rewinding; or refused, where scores with data, pruning or
evaluation would go through an untrained head; or given a fresh seeded head, for what reads no head (data-free
scores): the caller chooses (`on_bare`).

Class-name labels are numbered in sorted order over all splits of the data for such a fine-tune, and
the fine-tuned model carries those names (`config.id2label`), so every later use maps them alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .data import EMBEDDED, TextDataset, encode_labels, load_dataset, make_batches
from .data.sources import EMBEDDED_CLASSES
from .errors import DeepCutsError
from .finetune_cache import finetuned_model
from .hashing import content_hash
from .scoring.objective import mark_untrained_head
from .train import TrainSettings
from .models import (MODEL_ALIASES, check_task_head, check_vocabulary, has_task_head, load_config, load_model,
                     load_tokenizer, max_positions)

TASK_MODEL_ALIAS = "minilm-rt"
OnBare = Literal["fine-tune", "refuse", "random-head"]
ON_BARE: tuple[OnBare, ...] = ("fine-tune", "refuse", "random-head")
FINETUNE = dict(epochs=1.0, lr=1e-4, batch_size=32, max_length=64, length_pool=50, seed=0)


@dataclass
class TaskModel:
    """A classifier, its tokenizer, and how it was made (`base` None: not fine-tuned by this package)."""

    model: nn.Module
    tokenizer: object
    base: str | None = None  # the encoder it was fine-tuned from, when this package fine-tuned it
    data: str | None = None
    cached: bool = False
    finetune_info: dict | None = None  # the fine-tune's cache metadata: precision, seconds, steps
    max_length: int = FINETUNE["max_length"]  # tokens per example of the fine-tune (and of `train_batches`)

    @property
    def can_rewind(self) -> bool:
        """Whether the weights from before fine-tuning can be rebuilt (lottery-ticket rewinding)."""
        return self.base is not None

    def initial_model(self) -> nn.Module:
        """The exact model fine-tuning started from: the base encoder with its seeded fresh head (and the
        fine-tuned model's label names)."""
        model = load_model(self.base, num_labels=self.model.config.num_labels, seed=FINETUNE["seed"])
        model.config.id2label = dict(self.model.config.id2label)
        model.config.label2id = dict(self.model.config.label2id)
        return model

    @property
    def finetune_dtype(self) -> str | None:
        """The dtype the fine-tune ran in (None when the model was given fine-tuned)."""
        return (self.finetune_info or {}).get("precision", {}).get("dtype")

    def finetune_settings(self) -> dict:
        """`finetune`'s settings that made this model, as its cache entry recorded them (dtype resolved):
        rerunning it from `initial_model()` on `train_batches()` rebuilds the model exactly, on the same
        machine and thread count."""
        if self.finetune_info is None:
            raise DeepCutsError("this model was given fine-tuned, so how it was trained is unknown")
        return dict(self.finetune_info["fields"]["train"])

    def train_batches(self) -> Sequence[dict]:
        """The fine-tuning batches (shuffled, seeded, labels as this model numbers them), reused for
        recovery fine-tuning."""
        return _train_batches(encode_labels(load_dataset(self.data, "train"), self.model.config), self.tokenizer,
                              self.max_length)


_BATCHING = ("batch_size", "max_length", "length_pool")


def _train_batches(dataset: TextDataset, tokenizer, max_length: int = FINETUNE["max_length"]) -> list[dict]:
    """The recipe's shuffled, length-pooled batches of an encoded train split, texts cut to `max_length` tokens."""
    return make_batches(dataset, tokenizer, shuffle=True, seed=FINETUNE["seed"],
                        **{**{k: FINETUNE[k] for k in _BATCHING}, "max_length": max_length})


def finetuned_task_model(base: str, data: str, num_labels: int | None = None, progress: bool = True,
                         dtype: str | torch.dtype | None = "auto", max_length: int | None = None) -> TaskModel:
    """`base` fine-tuned on the train split of `data` with the recipe above, from the cache when possible;
    the head has `num_labels` outputs (None: as the data needs), class names numbered in sorted order;
    texts are cut to `max_length` tokens (None: the recipe's 64), which must fit the model's positions."""
    config = load_config(base)
    if max_length is not None:
        check_max_length(max_length, config, base)
    max_length = FINETUNE["max_length"] if max_length is None else max_length
    tokenizer = load_tokenizer(base)
    check_vocabulary(config, tokenizer, base)
    train = load_dataset(data, "train")
    num_labels = train.num_labels if num_labels is None else num_labels
    encoded = encode_labels(train, num_labels)  # sorted class names; fails before any training if they do not fit
    settings = TrainSettings(**{k: v for k, v in FINETUNE.items() if k not in _BATCHING}, dtype=dtype)
    batching = {**{k: FINETUNE[k] for k in _BATCHING}, "max_length": max_length}
    tuned = finetuned_model(
        base, tokenizer, lambda tok: _train_batches(encoded, tok, max_length), num_labels=num_labels,
        label_names=train.classes, key_fields={"data": _data_id(encoded), "split": "train", **batching},
        provenance={"data": data}, settings=settings, progress=progress,
    )
    return TaskModel(tuned.model, tokenizer, base=base, data=data, cached=tuned.cached, finetune_info=tuned.metadata,
                     max_length=max_length)


def _no_head_message(name: str) -> str:
    """Why the bare encoder `name` is refused, and how to fine-tune it: a randomly initialized head's
    predictions, losses and gradients say nothing about the model."""
    packaged = (f" (or use --model {TASK_MODEL_ALIAS}, the packaged MiniLM already fine-tuned on the embedded data)"
                if name.lower() in MODEL_ALIASES else "")
    return (f"model {name!r} has no trained task head (it is a bare encoder), and scoring it with data, "
            "pruning, evaluating or exporting it would go through a randomly initialized classifier; fine-tune it "
            f"first, e.g. with `deepcuts run --model {name} --data DATA`, which fine-tunes a bare encoder before "
            f"pruning{packaged}; only the data-free criteria (magnitude, random) score it as it is")


def check_max_length(max_length: int, config, name: str) -> None:
    """Refuse a token length the model `name` (its `config`) has no positions for, before any work."""
    limit = max_positions(config)
    if limit is not None and max_length > limit:
        raise DeepCutsError(f"--max-length {max_length} is longer than model {name!r} can read ({limit} tokens); "
                            f"pass --max-length {limit} or less")


def _data_id(dataset: TextDataset) -> str:
    """How training data is named in the fine-tune cache key: a hash of its texts and labels, so data changed in
    place is trained on afresh, and the key does not depend on where the data lies."""
    return "content:" + content_hash({"texts": dataset.texts, "pairs": dataset.text_pairs, "labels": dataset.labels})


def embedded_task_model(progress: bool = True, dtype: str | torch.dtype | None = "auto") -> TaskModel:
    """`minilm-rt`: the packaged MiniLM fine-tuned on the embedded Rotten Tomatoes train split (cached), its
    classes named (rotten, fresh) so a pipeline or an exported config says which is which."""
    task = finetuned_task_model("minilm", EMBEDDED, num_labels=2, progress=progress, dtype=dtype)
    task.model.config.id2label = dict(enumerate(EMBEDDED_CLASSES))
    task.model.config.label2id = {name: i for i, name in enumerate(EMBEDDED_CLASSES)}
    return task


def task_model(name: str, *, on_bare: OnBare = "fine-tune", data: str | None = None, num_labels: int | None = None,
               progress: bool = True, dtype: str | torch.dtype | None = "auto",
               max_length: int | None = None, task: str | None = None) -> TaskModel:
    """The task model `name` stands for: `minilm-rt` (fine-tuned, cached), a saved model of any task (with its own
    head: sequence or token classification, extractive QA) or slim folder as is, or a bare encoder (`minilm`, any
    BERT-family folder or hub name without a task head). `task`: the task the caller works on (None: any), so a
    folder with another task's head is refused (text data with one label per example needs a sequence classifier).

    A bare encoder is fine-tuned on the train split of `data` first (cached; `dtype` "auto" as
    `deepcuts_fast.precision` decides) when `on_bare="fine-tune"`, refused when `on_bare="refuse"`, or gets a
    fresh head seeded 0 when `on_bare="random-head"` (only for what reads no head: data-free scores); either
    head has `num_labels` outputs (None: as the data needs for a fine-tune, 2 for a random head).
    `max_length`: the tokens per example the caller will use, checked against the model's positions, and the
    fine-tune's length (None: the recipe's 64; `minilm-rt` is always made at 64). The tokenizer must not know
    more tokens than the model embeds.
    """
    from .pruning import from_pretrained

    if on_bare not in ON_BARE:
        raise DeepCutsError(f"unknown on_bare {on_bare!r}; choose one of {', '.join(ON_BARE)}")
    if name == TASK_MODEL_ALIAS:
        if max_length is not None:  # checked on its base's config, before any fine-tune
            check_max_length(max_length, load_config("minilm"), name)
        return embedded_task_model(progress=progress, dtype=dtype)
    config = load_config(name)
    check_task_head(config, name, task)
    if max_length is not None:
        check_max_length(max_length, config, name)
    if has_task_head(config) or on_bare == "random-head":
        model = (from_pretrained(name) if has_task_head(config)
                 else mark_untrained_head(load_model(name, num_labels=num_labels)))
        tokenizer = load_tokenizer(name)
        check_vocabulary(config, tokenizer, name)
        return TaskModel(model, tokenizer, data=data)
    if on_bare == "refuse":
        raise DeepCutsError(_no_head_message(name))
    if data is None:
        raise DeepCutsError(f"{name!r} has no task head, and fine-tuning one needs data; pass data=")
    return finetuned_task_model(name, data, num_labels=num_labels, progress=progress, dtype=dtype,
                                max_length=max_length)
