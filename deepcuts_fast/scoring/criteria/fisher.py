"""Fisher (Kwon et al. 2022): a unit's score is the sum over examples of its squared mask gradient; its
unit-by-unit interactions are kept too. Its diagonal alone is the loss estimate `plan` allocates budgets by,
which every scoring pass with data adds (`LOSS_ESTIMATE`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Criterion, Needs


@dataclass(frozen=True)
class Fisher(Criterion):
    """Sum over examples of (d loss / d mask)^2 per head and FFN neuron; units only, at either granularity."""

    needs: Needs = Needs(mask_gradients=True, interactions=True)
    estimates_loss: ClassVar[bool] = True


DECLARED = (Fisher("fisher"),)

LOSS_ESTIMATE = Fisher("fisher", Needs(mask_gradients=True))
"""Fisher without the interactions: what a pass adds for `Scores.fisher` when Fisher itself is not asked for."""
