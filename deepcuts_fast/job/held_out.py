"""The run's held-out data: every "best" choice (best criterion, winner per budget, the slim model
saved per budget) is made on the validation split and then reported on the test split, so the
reported numbers are not picked on the data that reports them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ..train import evaluate

PREFIX = "validation_"  # a row's validation metric sits beside its test metric: accuracy, validation_accuracy


@dataclass(frozen=True)
class HeldOut:
    """Test batches (reported) and validation batches (selected on); `validation` is None when the data has no
    validation split, and then choices fall back to the test split (the report says so)."""

    test: list
    validation: list | None = None

    def metrics(self, model: nn.Module) -> dict:
        """Test metrics (accuracy, loss, macro_f1, the per-example `predictions`, ...) plus `validation_accuracy`
        where there is a validation split. The test labels are left out: the dense evaluation records them once."""
        out = {k: v for k, v in evaluate(model, self.test).to_dict().items() if v is not None and k != "labels"}
        if self.validation is not None:
            out[PREFIX + "accuracy"] = evaluate(model, self.validation).accuracy
        return out

    @property
    def selection_split(self) -> str:
        return "test" if self.validation is None else "validation"


def selection_value(row: dict, key: str) -> float | None:
    """The value a choice among rows is made on: the validation twin of `key` where the row has one."""
    return row.get(PREFIX + key, row.get(key))


def best(rows: Iterable[dict], key: str) -> dict | None:
    """The row with the highest validation value of `key` (ties: the first); None when no row has it."""
    candidates = [r for r in rows if selection_value(r, key) is not None]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (selection_value(r, key), -candidates.index(r)))
