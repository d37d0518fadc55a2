"""Token batches from a dataset: a `TextDataset` for a sequence-classification model, or a token-classification or
QA file's dataset (`TaggedDataset`, `AnswerDataset`), which tokenizes its own rows with its task's labels."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DeepCutsError
from .dataset import TextDataset, encode_labels
from .qa_files import AnswerDataset
from .token_files import TaggedDataset


def make_batches(
    dataset: TextDataset | TaggedDataset | AnswerDataset,
    tokenizer,
    batch_size: int = 32,
    max_length: int = 64,
    pad_to_max_length: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
    sort_by_length: bool = False,
    length_pool: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Tokenize the dataset into model-ready batches (input_ids, attention_mask, [token_type_ids], and the task's
    labels: `labels` per text unless the dataset is unlabelled, `labels` per token for a `TaggedDataset`,
    `start_positions` / `end_positions` for an `AnswerDataset`).

    Texts are truncated to `max_length` tokens and padded to the longest row of each batch, or to
    `max_length` with `pad_to_max_length` (fixed shapes). `shuffle` permutes the examples with `seed`,
    the same order on every run; `limit` then keeps the first `limit` examples. `sort_by_length`
    batches examples of similar length together (much less padding; for evaluation, where the order
    of examples does not matter). `length_pool=k` sorts by length only within consecutive pools of
    k batches of the (shuffled) order, then shuffles the batches: for training, where padding is
    wasted compute but every batch should still be a random mix of the data.

    Class names become ids in sorted order (`encode_labels` without a model); to number them as a
    model's head does, pass `encode_labels(dataset, model.config)` instead; a `TaggedDataset`'s tag names must be
    mapped first (`encode_tags(dataset, model.config)`). `length_pool` is for texts only (fine-tuning data).
    """
    texts = isinstance(dataset, TextDataset)
    if texts:
        dataset = encode_labels(dataset)
    if len(dataset) == 0:
        raise DeepCutsError(f"dataset {dataset.name!r} has no examples; pass data with at least one row")
    _check_positive(batch_size=batch_size, max_length=max_length, limit=limit, length_pool=length_pool)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    order = order[:limit]
    if sort_by_length:
        order = np.asarray(sorted(order, key=lambda i: _text_length(dataset, i)))
    elif length_pool is not None:
        if not texts:
            raise DeepCutsError(f"length_pool batches texts for fine-tuning; batch dataset {dataset.name!r} "
                                "without it (sort_by_length for evaluation)")
        order = _pooled_by_length(order, _token_lengths(dataset, order, tokenizer, max_length), batch_size,
                                  length_pool, rng)
    padding = "max_length" if pad_to_max_length else "longest"
    if not texts:
        return [dataset.encode(order[start:start + batch_size], tokenizer, max_length, padding)
                for start in range(0, len(order), batch_size)]
    label_dtype = torch.float32 if dataset.is_regression else torch.long
    return [
        _encode_batch(dataset, order[start:start + batch_size], tokenizer, max_length, padding, label_dtype)
        for start in range(0, len(order), batch_size)
    ]


def _token_lengths(dataset: TextDataset, order: np.ndarray, tokenizer, max_length: int) -> dict[int, int]:
    """Token count (after truncation to `max_length`) of each example in `order`."""
    texts = [dataset.texts[i] for i in order]
    pairs = [dataset.text_pairs[i] for i in order] if dataset.text_pairs is not None else None
    ids = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
    return {int(i): len(row) for i, row in zip(order, ids)}


def _pooled_by_length(order: np.ndarray, lengths: dict[int, int], batch_size: int, pool: int,
                      rng: np.random.Generator) -> np.ndarray:
    """`order` sorted by token length within pools of `pool` batches, its batches then shuffled (the
    last, possibly short, batch stays last so every other batch is full)."""
    size = pool * batch_size
    pooled = np.concatenate([np.asarray(sorted(order[i:i + size], key=lambda j: lengths[int(j)]), dtype=int)
                             for i in range(0, len(order), size)]) if len(order) else order
    batches = [pooled[i:i + batch_size] for i in range(0, len(pooled), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    rest = [b for b in batches if len(b) < batch_size]
    return np.concatenate([full[i] for i in rng.permutation(len(full))] + rest) if full else pooled


def _text_length(dataset: TextDataset | TaggedDataset | AnswerDataset, i: int) -> int:
    """Characters in example `i` (text and pair; words; question and context): a cheap proxy for its token count."""
    if not isinstance(dataset, TextDataset):
        return dataset.chars(i)
    return len(dataset.texts[i]) + (len(dataset.text_pairs[i]) if dataset.text_pairs is not None else 0)


def _check_positive(**values: int | None) -> None:
    """Reject sizes below 1 (None means no limit)."""
    for key, value in values.items():
        if value is not None and value < 1:
            raise DeepCutsError(f"{key} must be at least 1, got {value}")


def _encode_batch(
    dataset: TextDataset, rows: np.ndarray, tokenizer, max_length: int, padding: str, label_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Tokenize the given rows in one tokenizer call and attach their labels."""
    texts = [dataset.texts[i] for i in rows]
    pairs = [dataset.text_pairs[i] for i in rows] if dataset.text_pairs is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=padding, return_tensors="pt")
    batch = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    if dataset.labelled:
        batch["labels"] = torch.tensor([dataset.labels[i] for i in rows], dtype=label_dtype)
    return batch


def truncation(dataset: TextDataset, tokenizer, max_length: int, sample: int = 1000) -> tuple[float, int]:
    """(share of examples longer than `max_length` tokens, a length that keeps 95% of them whole), measured on
    the first `sample` examples: whether texts (pairs counted together) are cut, and what would cut few."""
    n = min(len(dataset), sample)
    if n == 0:
        return 0.0, max_length
    texts = dataset.texts[:n]
    pairs = dataset.text_pairs[:n] if dataset.text_pairs is not None else None
    lengths = sorted(len(ids) for ids in tokenizer(texts, pairs)["input_ids"])
    share = sum(length > max_length for length in lengths) / n
    return share, lengths[min(n - 1, int(0.95 * n))]
