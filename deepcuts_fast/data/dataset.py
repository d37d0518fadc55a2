"""`TextDataset`, the one form every data source takes, built and checked from named columns; and how its
labels become the class ids of a model head (`encode_labels`, `check_labels`)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import DeepCutsError

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
    """Texts (plus optional second texts of a pair) with one label each, or none (`labels` None: unlabelled text,
    which only a label-free objective scores).

    Labels are int class ids, floats (regression), or class names (str) that `encode_labels` maps to the
    ids of a model head. `classes` holds every class name of the data source (all its splits), sorted: the
    ids class names get when the model does not name its labels.
    """

    texts: list[str]
    labels: list | None  # int class ids, floats (regression) or class names (str); None: unlabelled
    text_pairs: list[str] | None = None
    name: str = ""
    classes: tuple[str, ...] | None = None  # None for numeric labels

    def __post_init__(self) -> None:
        """Derive `classes` from the labels when a dataset of class names is built without them."""
        if self.classes is None and any(isinstance(label, str) for label in self.labels or ()):
            self.classes = tuple(sorted({str(label).strip() for label in self.labels}))

    @property
    def has_names(self) -> bool:
        """True when the labels are class names still to be mapped to a model's ids."""
        return self.classes is not None

    @property
    def is_regression(self) -> bool:
        """True when the labels are real numbers for a 1-output regression head, not class ids."""
        return not self.has_names and any(isinstance(label, float) for label in self.labels or ())

    @property
    def labelled(self) -> bool:
        """Whether every example has a label (False for unlabelled text)."""
        return self.labels is not None

    @property
    def num_labels(self) -> int:
        """Outputs the model head needs: 1 for regression, the class-name count for names, else the largest
        class id + 1 (at least 2)."""
        if self.is_regression:
            return 1
        if self.has_names:
            return max(len(self.classes), 2)
        return max(max(self.labels or (), default=0) + 1, 2)

    def __len__(self) -> int:
        return len(self.texts)


# --- labels -> a model's class ids ---------------------------------------------------------------


def named_labels(config: Any) -> dict[str, int] | None:
    """The model's label name -> id (`label2id`, else the inverse of `id2label`), or None when its head
    has no named labels (none, or transformers' default LABEL_0, LABEL_1, ...)."""
    label2id = {str(name).strip(): int(i) for name, i in (getattr(config, "label2id", None) or {}).items()}
    if label2id and not _default_names(label2id):
        return label2id
    id2label = {int(i): str(name).strip() for i, name in (getattr(config, "id2label", None) or {}).items()}
    inverse = {name: i for i, name in id2label.items()}
    if inverse and len(inverse) == len(id2label) and not _default_names(inverse):
        return inverse
    return None


def _default_names(label2id: Mapping[str, int]) -> bool:
    """Whether every name is transformers' placeholder `LABEL_<id>`."""
    return all(name == f"LABEL_{i}" for name, i in label2id.items())


def sorted_label2id(classes: Iterable[str]) -> dict[str, int]:
    """The documented default mapping: class names numbered in sorted order (e.g. neg=0, pos=1)."""
    return {name: i for i, name in enumerate(sorted(set(classes)))}


def label_mapping(dataset: TextDataset, model: Any = None) -> dict[str, int] | None:
    """Class name -> id for `dataset` and a model (its config or head size; None: no model): the model's
    named labels when it has them, else the sorted class names of the whole data source; None for numbers."""
    if not dataset.has_names:
        return None
    model_names = named_labels(_config(model)) if model is not None and not isinstance(model, int) else None
    if model_names is None:
        return sorted_label2id(dataset.classes)
    return _match_names(dataset, model_names)


def _config(model: Any) -> Any:
    """A model's config (a config passes through)."""
    return getattr(model, "config", model)


def _match_names(dataset: TextDataset, model_names: dict[str, int]) -> dict[str, int]:
    """The dataset's names matched to the model's: exactly (after stripping), else case-insensitively when
    that picks one id; any other name is an error listing the model's labels."""
    folded: dict[str, set[int]] = {}
    for name, i in model_names.items():
        folded.setdefault(name.casefold(), set()).add(i)
    mapping, unknown = {}, []
    for name in sorted({str(label).strip() for label in dataset.labels}):
        ids = {model_names[name]} if name in model_names else folded.get(name.casefold(), set())
        if len(ids) == 1:
            mapping[name] = next(iter(ids))
        else:
            unknown.append(name)
    if unknown:
        listed = ", ".join(name for name, _ in sorted(model_names.items(), key=lambda item: item[1]))
        raise DeepCutsError(
            f"dataset {dataset.name!r} has labels the model does not know: {', '.join(map(repr, unknown))}; the "
            f"model's labels are: {listed}. Rename those labels in the data, or use a model trained on these classes"
        )
    return mapping


def encode_labels(dataset: TextDataset, model: Any = None) -> TextDataset:
    """`dataset` with class names replaced by the class ids of `model` (its config, or the head size as an
    int; None: sorted order, unchecked), checked to fit the head; numeric labels are only checked; unlabelled data
    passes through."""
    if not dataset.labelled:
        return dataset
    if model is not None:
        check_labels(dataset, model)
    mapping = label_mapping(dataset, model)
    if mapping is None:
        return dataset
    return replace(dataset, labels=[mapping[str(label).strip()] for label in dataset.labels], classes=None)


def check_labels(dataset: TextDataset, model: Any) -> None:
    """Fail early, before any work, when the labels do not fit a model head (its config, or its number of
    outputs as an int): unknown class names, real numbers for a classifier, ids out of range."""
    num_labels = model if isinstance(model, int) else int(_config(model).num_labels)
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
    ids = list(label_mapping(dataset, model).values()) if dataset.has_names else dataset.labels
    low, high = min(ids), max(ids)
    if low < 0 or high >= num_labels:
        what = f"{len(dataset.classes)} class names" if dataset.has_names else f"labels {low}..{high}"
        raise DeepCutsError(
            f"dataset {dataset.name!r} has {what} but the model head has {num_labels} classes "
            f"(0..{num_labels - 1}); use a model with {max(high + 1, 2)} labels or fix the labels"
        )


def check_seen(dataset: TextDataset, train: TextDataset) -> None:
    """Fail when `dataset` (a held-out split) has a class its `train` split lacks: a model fine-tuned on that
    split never learns to predict it, so every such row would count as an error the pruning is not to blame for."""
    if dataset.is_regression or train.is_regression:
        return
    seen = {_class_key(label) for label in train.labels}
    unseen = Counter(_class_key(label) for label in dataset.labels if _class_key(label) not in seen)
    if unseen:
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in sorted(unseen.items(), key=str))
        raise DeepCutsError(
            f"dataset {dataset.name!r} has labels the train split ({train.name!r}) never has: {listed}; a model "
            "fine-tuned on that split cannot predict them. Add training examples of them or remove those rows"
        )


def _class_key(label) -> str | int:
    """A label as its class: a name stripped, an id as it is."""
    return label.strip() if isinstance(label, str) else label


# --- columns -> TextDataset ----------------------------------------------------------------------


def dataset_from_columns(columns: dict[str, list], name: str, classes: Iterable[str] = (),
                         lines: Sequence[int] | None = None, require_labels: bool = True) -> TextDataset:
    """Pick the text, optional second-text and label columns and check every row (named by its file line too when
    `lines` gives it); class names are numbered over `classes` (the other splits' names) with this data's own.
    Without a `label` column the data is unlabelled when `require_labels` is False, else refused."""
    found = ", ".join(columns) or "none"
    picked = _text_columns(columns)
    if picked is None:
        raise DeepCutsError(
            f"{name}: no `text` column (found: {found}); name the text column `text` (and a second text `text_pair`)"
        )
    if "label" not in columns and not require_labels:
        first, second = picked
        pairs = _texts(columns[second], second, name, lines) if second else None
        return TextDataset(_texts(columns[first], first, name, lines), None, pairs, name)
    if "label" not in columns:
        raise DeepCutsError(
            f"{name}: no `label` column (found: {found}); add a `label` column with a class or number per row"
        )
    first, second = picked
    pairs = _texts(columns[second], second, name, lines) if second else None
    labels = _parse_labels(columns["label"], name, lines)
    names = {label for label in labels if isinstance(label, str)}
    all_classes = tuple(sorted(names | set(classes))) if names else None
    return TextDataset(_texts(columns[first], first, name, lines), labels, pairs, name, all_classes)


def _text_columns(columns: dict[str, list]) -> tuple[str, str | None] | None:
    """The first (text, second text) column names of `_TEXT_COLUMNS` that the data has, or None."""
    for first, second in _TEXT_COLUMNS:
        if first in columns and (second is None or second in columns):
            return first, second
    return None


def row_name(index: int, lines: Sequence[int] | None = None) -> str:
    """How messages name the row at 0-based `index`: "row 3", with its file line when known ("row 3 (line 4)")."""
    return f"row {index + 1}" + (f" (line {lines[index]})" if lines else "")


def _texts(values: list, column: str, name: str, lines: Sequence[int] | None = None) -> list[str]:
    """The column's values, which must all be non-empty strings."""
    for index, value in enumerate(values):
        if isinstance(value, str) and value.strip():
            continue
        if value is None or isinstance(value, str):
            what = f"{'no' if value is None else 'an empty'} `{column}`; fill it in or remove the row"
        else:
            what = (f"`{column}` {short_value(value)}, a JSON {type(value).__name__}, not a text; write each text as a "
                    "string")
        raise DeepCutsError(f"{name}: {row_name(index, lines)} has {what}")
    return values


def class_names(values: list, name: str) -> set[str]:
    """The distinct class names of a raw label column (empty when its labels are numbers)."""
    return {label for label in _parse_labels(values, name) if isinstance(label, str)}


def _parse_labels(values: list, name: str, lines: Sequence[int] | None = None) -> list:
    """Class ids from integers (or integer strings); floats (or decimal strings such as "2.5" or "3.0")
    for regression; otherwise class names (stripped strings), mapped to ids later by `encode_labels`."""
    for index, value in enumerate(values):
        if isinstance(value, (dict, list)):
            raise DeepCutsError(
                f"{name}: {row_name(index, lines)} has label {short_value(value)}, a JSON {type(value).__name__}, not "
                "a class or number; write one class name or number per row"
            )
        if value is None or not str(value).strip():
            raise DeepCutsError(f"{name}: {row_name(index, lines)} has no label; fill it in or remove the row")
    numbers = [_as_number(value) for value in values]
    if any(number is None for number in numbers):
        return [str(value).strip() for value in values]
    if all(isinstance(number, int) for number in numbers):
        return [int(number) for number in numbers]
    for index, number in enumerate(numbers):
        if not math.isfinite(number):
            raise DeepCutsError(f"{name}: {row_name(index, lines)} has label {number}, not a finite number; fix or "
                                "remove the row")
    return [float(number) for number in numbers]


def short_value(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
