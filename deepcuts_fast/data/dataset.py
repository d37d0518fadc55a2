"""`TextDataset`, the one form every data source takes, built and checked from named columns."""
from __future__ import annotations

import math
from dataclasses import dataclass

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


def dataset_from_columns(columns: dict[str, list], name: str) -> TextDataset:
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
