"""Magnitude: a weight's score is |W|, read from the weights alone (the classic pruning baseline)."""
from __future__ import annotations

import torch

from .base import Criterion


class Magnitude(Criterion):
    """|W|: no data, no pass."""

    def data_free_score(self, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return param.float().abs()


DECLARED = (Magnitude("magnitude"),)
