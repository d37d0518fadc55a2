"""Labelled data for a model of any task with a head: which kind a local data file holds, told by its columns
(texts with labels; `tokens` with tags; SQuAD `question` / `context` / `answers`), loaded as that kind's dataset and
numbered as the model's head numbers its classes. The file's kind must be the model's task: a file of another kind is
refused in one line that says what the model's file needs, since reading it as the other kind would score or measure
the model on labels it does not predict."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from ..errors import DeepCutsError
from .dataset import TextDataset, encode_labels
from .files import FILE_SUFFIXES, TEXT_SUFFIX, read_columns
from .qa_files import QA_TASK, AnswerDataset, answers_from_columns
from .sources import EMBEDDED_ALIASES, split_file, load_dataset
from .token_files import TOKEN_TASK, WORDS_COLUMN, TaggedDataset, encode_tags, tagged_from_columns

TaskDataset = Union[TextDataset, TaggedDataset, AnswerDataset]
"""What `load_task_data` gives: texts with one label each, tagged words, or questions with answers."""

FILE_NEEDS = {
    None: "a text/label file (CSV/TSV with `text` and `label` columns, or JSON(L) rows with those keys)",
    TOKEN_TASK: 'a JSON(L) file of rows {"tokens": [words], "tags": [one tag per word]} (or `ner_tags`)',
    QA_TASK: 'a JSON(L) file of SQuAD rows {"question": ..., "context": ..., "answers": {"text": [...], '
             '"answer_start": [...]}}',
}
"""What a data file of each kind holds (None: one label per text, for a sequence classifier), for messages."""


def file_kind(columns: dict[str, list]) -> str | None:
    """The task whose labels a file's columns hold: token classification with a `tokens` column, extractive QA with
    `question` and `context` columns, else None (texts, each with one label or none)."""
    if WORDS_COLUMN in columns:
        return TOKEN_TASK
    if "question" in columns and "context" in columns:
        return QA_TASK
    return None


def load_task_data(data: str, split: str, task: str | None, model: str = "the model",
                   require_labels: bool = True) -> TaskDataset:
    """The `split` of `data` for a model (`model`: how messages name it) whose head is of `task` (None: a sequence
    classifier, or no head): a token-classification or QA file (or the folder's `<split>` file) as its dataset, any
    other data as `load_dataset` reads it. A file of one of those two kinds for a model of another task is refused,
    and text data for a token-classification or QA model too unless `require_labels` is False (a label-free
    objective reads only the texts)."""
    path = _local_file(data, split)
    columns, lines = read_columns(path) if path is not None else (None, None)
    kind = None if columns is None else file_kind(columns)
    wanted = task if task in (TOKEN_TASK, QA_TASK) else None
    if kind is None and (wanted is None or not require_labels):
        return load_dataset(data, split, require_labels)
    if kind != wanted:
        found = f"columns {', '.join(columns)}" if columns is not None else "texts"
        what = f"a {wanted} model" if wanted is not None else "not a token-classification or QA model"
        raise DeepCutsError(f"{model} is {what}, and data {str(path or data)!r} has {found}, which are not its "
                            f"labels: give it {FILE_NEEDS[wanted]} (see docs/data.md)")
    if kind == TOKEN_TASK:
        return tagged_from_columns(columns, str(path), lines)
    return answers_from_columns(columns, str(path), lines)


def encode_task_data(dataset: TaskDataset, config: Any) -> TaskDataset:
    """`dataset` with its labels as the class ids of the model `config` describes: class names or tag names mapped
    and checked against its head (QA answer positions need no mapping)."""
    if isinstance(dataset, TextDataset):
        return encode_labels(dataset, config)
    if isinstance(dataset, TaggedDataset):
        return encode_tags(dataset, config)
    return dataset


def _local_file(data: str, split: str) -> Path | None:
    """The local data file `data` stands for at `split` (a folder's `<split>` file); None for the embedded data, a
    hub dataset, or a plain-text file (texts only)."""
    if data.lower() in EMBEDDED_ALIASES:
        return None
    path = Path(data).expanduser()
    if path.is_dir():
        path = split_file(path, split)
    if not path.is_file() or path.suffix.lower() not in FILE_SUFFIXES or path.suffix.lower() == TEXT_SUFFIX:
        return None
    return path
