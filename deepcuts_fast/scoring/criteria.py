"""Importance criteria as small, interchangeable descriptions.

A criterion says which ingredients its score needs; the scorer computes each ingredient once
and shares it between every criterion asked for in the same pass.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DeepCutsError, suggest


@dataclass(frozen=True)
class Criterion:
    """Per-weight score `|W * G * roww|` (or |W|, or uniform noise) and what it needs."""

    name: str
    uses_gradient: bool = True  # needs G = dY^T X
    smooth: bool = False  # G averaged over noisy copies of the batch (SmoothGrad)
    cam: bool = False  # rows weighted by the mean output activation a[row] (GradCAM)
    shifted: bool = False  # rows weighted by (shift + a[row])
    random: bool = False
    fisher: bool = False  # unit-only: sum over examples of the squared mask gradient (Kwon et al. 2022)

    def row_weight_shift(self, shift: float) -> float | None:
        """The constant added to a[row], or None when rows are not weighted."""
        if not self.cam:
            return None
        return shift if self.shifted else 0.0


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", uses_gradient=False),
        Criterion("gradient"),
        Criterion("cam-cut", cam=True),
        Criterion("cam-cut-shift", cam=True, shifted=True),
        Criterion("smooth-cut", smooth=True),
        Criterion("smooth-cam-cut", smooth=True, cam=True),
        Criterion("smooth-cam-cut-shift", smooth=True, cam=True, shifted=True),
        Criterion("fisher", fisher=True),
        Criterion("random", uses_gradient=False, random=True),
    )
}


def get_criterion(name: str) -> Criterion:
    """Look a criterion up by name, suggesting the closest one when it is misspelt."""
    key = name.strip().lower().replace("_", "-")
    if key not in CRITERIA:
        raise DeepCutsError(
            f"unknown criterion {name!r}.{suggest(key, CRITERIA)} Choose one of: {', '.join(CRITERIA)}"
        )
    return CRITERIA[key]
