"""Token-classification data files: rows of words with one tag each (`{"tokens": [...], "tags": [...]}`, or
`ner_tags` as the hub's NER sets name them) as a `TaggedDataset`; its tags mapped to a tagger's class ids
(`encode_tags`); and its token batches, where the first sub-token of each word carries the word's tag and every
other token (later sub-tokens, special and padding tokens) carries `tasks.IGNORED`, as transformers' token
classification examples label them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..errors import DeepCutsError
from ..tasks import IGNORED
from .dataset import named_labels, row_name, short_value

WORDS_COLUMN = "tokens"
TAG_COLUMNS = ("tags", "ner_tags")  # tried in order
TOKEN_TASK = "token-classification"


@dataclass
class TaggedDataset:
    """Sentences as words (`words`), each word with one tag (`tags`): a tag name (str) still to be mapped to the
    model's class ids by `encode_tags`, or a class id (int)."""

    words: list[list[str]]
    tags: list[list[str | int]]
    name: str = ""

    def __len__(self) -> int:
        return len(self.words)

    def chars(self, i: int) -> int:
        """Characters in example `i`: a cheap proxy for its token count, to batch similar lengths together."""
        return sum(len(word) for word in self.words[i])

    def encode(self, rows: np.ndarray, tokenizer, max_length: int, padding: str) -> dict[str, torch.Tensor]:
        """The batch of the given rows: the words tokenized as pre-split words (truncated to `max_length` tokens, so
        the words past it lose their tags), `labels` (batch, tokens) holding each word's class id at its first
        sub-token and IGNORED elsewhere."""
        if any(isinstance(tag, str) for i in rows for tag in self.tags[i]):
            raise DeepCutsError(f"dataset {self.name!r} still has tag names; map them to the model's class ids "
                                "first: encode_tags(dataset, model.config)")
        if not getattr(tokenizer, "is_fast", False):
            raise DeepCutsError("token-classification data needs a fast tokenizer (one with word_ids()) to find each "
                                "word's first sub-token; give a model folder with a tokenizer.json")
        encoded = tokenizer([self.words[i] for i in rows], is_split_into_words=True, truncation=True,
                            max_length=max_length, padding=padding, return_tensors="pt")
        labels = torch.full_like(encoded["input_ids"], IGNORED)
        for row, i in enumerate(rows):
            previous = None
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word != previous:
                    labels[row, position] = self.tags[i][word]
                previous = word
        batch = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
        return {**batch, "labels": labels}


def tag_column(columns: dict[str, list]) -> str | None:
    """The name of the file's tag column (`tags`, else `ner_tags`), None when it has neither."""
    return next((column for column in TAG_COLUMNS if column in columns), None)


def tagged_from_columns(columns: dict[str, list], name: str, lines: Sequence[int] | None = None) -> TaggedDataset:
    """The rows of a token-classification file, each checked: a non-empty list of non-empty words, and a list of as
    many tags (names or class ids)."""
    column = tag_column(columns)
    if WORDS_COLUMN not in columns or column is None:
        missing = WORDS_COLUMN if WORDS_COLUMN not in columns else "tags"
        raise DeepCutsError(f"{name}: no `{missing}` column (found: {', '.join(columns)}); a token-classification "
                            'file has rows like {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}')
    words, tags = columns[WORDS_COLUMN], columns[column]
    for index, (row_words, row_tags) in enumerate(zip(words, tags)):
        where = f"{name}: {row_name(index, lines)}"
        if not isinstance(row_words, list) or not row_words:
            raise DeepCutsError(f"{where} has `tokens` {short_value(row_words)}, not a non-empty list of words; write "
                                'the words as a JSON list, e.g. ["EU", "rejects"]')
        if not all(isinstance(word, str) and word.strip() for word in row_words):
            bad = next(word for word in row_words if not (isinstance(word, str) and word.strip()))
            raise DeepCutsError(f"{where} has the word {short_value(bad)} in `tokens`; each word must be a non-empty "
                                "string: remove it or fill it in")
        if not isinstance(row_tags, list) or len(row_tags) != len(row_words):
            count = f"{len(row_tags)} tags" if isinstance(row_tags, list) else f"`{column}` {short_value(row_tags)}"
            raise DeepCutsError(f"{where} has {len(row_words)} words but {count}; give one tag per word")
        bad = next((tag for tag in row_tags if isinstance(tag, bool) or not isinstance(tag, (str, int))
                    or (isinstance(tag, str) and not tag.strip())), None)
        if bad is not None:
            raise DeepCutsError(f"{where} has the tag {short_value(bad)}; write each tag as a tag name (\"B-PER\") or "
                                "a class id (3)")
    return TaggedDataset(list(words), [[tag.strip() if isinstance(tag, str) else tag for tag in row] for row in tags],
                         name)


def encode_tags(dataset: TaggedDataset, config: Any) -> TaggedDataset:
    """`dataset` with its tag names replaced by the class ids of the model `config` names them with (`label2id`),
    every class id checked to be one of the head's; a tag the model does not know is refused, naming the model's."""
    num_labels = int(getattr(config, "num_labels", 0))
    label2id = named_labels(config)
    names = {tag for row in dataset.tags for tag in row if isinstance(tag, str)}
    if names and label2id is None:
        raise DeepCutsError(f"dataset {dataset.name!r} has tag names ({', '.join(sorted(names)[:4])}, ...) but the "
                            "model's config names no labels (its id2label is LABEL_0, LABEL_1, ...); write the tags as "
                            f"class ids 0 to {num_labels - 1}, or give a tagger whose config names its labels")
    unknown = sorted(names - set(label2id or ()))
    if unknown:
        known = ", ".join(name for name, _ in sorted(label2id.items(), key=lambda item: item[1]))
        raise DeepCutsError(f"dataset {dataset.name!r} has tags the model does not know: "
                            f"{', '.join(map(repr, unknown))}; the model's tags are: {known}. Rename those tags in "
                            "the data, or use a tagger trained on them")
    ids = [[label2id[tag] if isinstance(tag, str) else tag for tag in row] for row in dataset.tags]
    outside = sorted({i for row in ids for i in row if not 0 <= i < num_labels})
    if outside:
        raise DeepCutsError(f"dataset {dataset.name!r} has the tag id {outside[0]}, not a class of the model's head "
                            f"(0 to {num_labels - 1}); fix the tags or use a tagger with those classes")
    return replace(dataset, tags=ids)
