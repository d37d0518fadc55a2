"""Cam-Cut: the gradient score with each output row weighted by GradCAM's mean output activation a[row]."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Criterion, Needs, mean_output


@dataclass(frozen=True)
class CamCut(Criterion):
    """|W * G * a[row]|, or with `shifted` |W * G * (shift + a[row])| (the `shift` option, 10 by default)."""

    needs: Needs = Needs(weight_gradients=True, output_means=True)
    shifted: bool = False

    def row_weight(self, out_sum: torch.Tensor | None, tokens: torch.Tensor | float,
                   shift: float) -> torch.Tensor | None:
        return mean_output(out_sum, tokens) + (shift if self.shifted else 0.0)


CAM_CUT = CamCut("cam-cut")
CAM_CUT_SHIFT = CamCut("cam-cut-shift", shifted=True)
DECLARED = (CAM_CUT, CAM_CUT_SHIFT)
