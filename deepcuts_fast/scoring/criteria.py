"""Importance criteria: each one's score formula and the ingredients a scoring pass must gather for it.

The scorer asks a criterion what it needs (data, noise, output means, weight gradients, unit
interactions) and computes each ingredient once for every criterion of a pass, so a new combination
of these is one new entry in `CRITERIA`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DeepCutsError, suggest


@dataclass(frozen=True)
class Criterion:
    """A per-weight score `|W * G * roww|` (or |W|, or uniform noise), or Fisher's unit score."""

    name: str
    uses_gradient: bool = True  # needs calibration data and G = dY^T X (or the gradients at the units)
    smooth: bool = False  # G averaged over noisy copies of the batch (SmoothGrad)
    cam: bool = False  # rows weighted by the mean output activation a[row] (GradCAM)
    shifted: bool = False  # rows weighted by (shift + a[row])
    random: bool = False
    fisher: bool = False  # unit-only: sum over examples of the squared mask gradient (Kwon et al. 2022)
    diagonal: bool = False  # Fisher without the unit-by-unit interactions (the loss estimate `plan` allocates by)

    @property
    def per_weight(self) -> bool:
        """Whether it scores single weights (summed into units at unit granularity); Fisher scores units only."""
        return not self.fisher

    @property
    def weight_saliency(self) -> bool:
        """Whether its score is `|W * G * roww|`, needing the weight gradients G."""
        return self.uses_gradient and self.per_weight

    @property
    def records_interactions(self) -> bool:
        """Whether it needs each example's mask gradients and keeps their per-layer unit-by-unit sums."""
        return self.fisher and not self.diagonal

    def row_weight(self, out_sum: torch.Tensor | None, tokens: torch.Tensor | float,
                   shift: float) -> torch.Tensor | None:
        """GradCAM's weight of each output row: the mean output over the tokens (`out_sum / tokens`), plus
        `shift` for the shifted variants; None when rows are not weighted."""
        if not self.cam:
            return None
        return out_sum / _at_least_one(tokens) + (shift if self.shifted else 0.0)

    def data_free_score(self, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The score of a parameter for a criterion that needs no data: |W|, or uniform noise for random."""
        if self.random:
            return torch.rand(param.shape, generator=generator).to(param.device)
        return param.float().abs()


def _at_least_one(count: torch.Tensor | float) -> torch.Tensor | float:
    """A token count clamped to >= 1, so means over no token are 0 rather than NaN."""
    return count.clamp_min(1.0) if torch.is_tensor(count) else max(count, 1.0)


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


# The Fisher diagonal every scoring pass with data adds for `plan` (Scores.fisher), when Fisher itself is not asked for.
FISHER_DIAGONAL = Criterion("fisher", fisher=True, diagonal=True)


def get_criterion(name: str) -> Criterion:
    """Look a criterion up by name, suggesting the closest one when it is misspelt."""
    key = name.strip().lower().replace("_", "-")
    if key not in CRITERIA:
        raise DeepCutsError(
            f"unknown criterion {name!r}.{suggest(key, CRITERIA)} Choose one of: {', '.join(CRITERIA)}"
        )
    return CRITERIA[key]
