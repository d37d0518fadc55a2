"""Smooth-Cut and its GradCAM variants: the gradient and Cam-Cut formulas with G (and the mean outputs)
averaged over noisy copies of each batch (SmoothGrad), so all three share the one noisy pass."""
from __future__ import annotations

from dataclasses import replace

from .base import Criterion
from .cam_cut import CAM_CUT, CAM_CUT_SHIFT
from .gradient import GRADIENT


def smoothed(criterion: Criterion, name: str) -> Criterion:
    """`criterion`'s formula under the name `name`, scored on the noisy copies of the batches."""
    return replace(criterion, name=name, needs=replace(criterion.needs, noise=True))


DECLARED = (
    smoothed(GRADIENT, "smooth-cut"),
    smoothed(CAM_CUT, "smooth-cam-cut"),
    smoothed(CAM_CUT_SHIFT, "smooth-cam-cut-shift"),
)
