"""Random: uniform noise as every weight's score, seeded (the floor any criterion should beat)."""
from __future__ import annotations

import torch

from .base import Criterion


class Random(Criterion):
    """Uniform [0, 1) noise from the seeded generator: no data, no pass."""

    def data_free_score(self, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(param.shape, generator=generator).to(param.device)


DECLARED = (Random("random"),)
