"""Gradient: a weight's score is |W * G|, G its loss gradient summed over the calibration batches."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Criterion, Needs


@dataclass(frozen=True)
class Gradient(Criterion):
    """|W * G| (first-order Taylor saliency); at unit granularity summed over a unit's weights."""

    needs: Needs = Needs(weight_gradients=True)


GRADIENT = Gradient("gradient")
DECLARED = (GRADIENT,)
