"""What every criterion is: a name, the `Needs` it declares to the shared scoring pass, and its formula hooks.

The engine plans its passes from the declarations alone (which statistics the probes gather, clean or noisy
pass, which route turns them into scores), so a criterion is one small object and never looked up by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import DeepCutsError


@dataclass(frozen=True)
class Needs:
    """What the shared scoring pass must gather for a criterion; nothing at all for a data-free one."""

    weight_gradients: bool = False  # G = dY^T X of every prunable Linear over the calibration data (|W * G|)
    noise: bool = False  # G averaged over noisy copies of each batch (SmoothGrad): the noisy pass
    output_means: bool = False  # every Linear's mean output over the real tokens (GradCAM's row weights)
    mask_gradients: bool = False  # each example's head / neuron mask gradients, squared and summed (Fisher)
    interactions: bool = False  # and their unit-by-unit products, kept per layer

    def __post_init__(self) -> None:
        if self.weight_gradients and self.mask_gradients:
            raise DeepCutsError("a criterion scores weights (weight_gradients) or units (mask_gradients), not both")
        if (self.noise or self.output_means) and not self.weight_gradients:
            raise DeepCutsError("noise and output_means are read with the weight gradients: declare weight_gradients")
        if self.interactions and not self.mask_gradients:
            raise DeepCutsError("interactions are products of mask gradients: declare mask_gradients")

    @property
    def data(self) -> bool:
        """Whether it needs labelled calibration batches (and a forward and backward pass over them)."""
        return self.weight_gradients or self.mask_gradients


@dataclass(frozen=True)
class Criterion:
    """An importance criterion: `name` (as users spell it) and `needs`; a subclass overrides the formula hook its
    needs call for (`row_weight` with output means, `data_free_score` with no data)."""

    name: str
    needs: Needs = Needs()
    estimates_loss: ClassVar[bool] = False  # its unit scores are the loss estimate `plan` allocates by (Fisher's)

    @property
    def per_weight(self) -> bool:
        """Whether it scores single weights (summed into units at unit granularity); mask gradients score units only."""
        return not self.needs.mask_gradients

    def row_weight(self, out_sum: torch.Tensor | None, tokens: torch.Tensor | float,
                   shift: float) -> torch.Tensor | None:
        """The weight of each output row in `|W * G * row weight|`, from the Linear's summed output over `tokens`
        tokens (`output_means` criteria; `shift`: the option of the shifted ones); None leaves rows unweighted."""
        return None

    def data_free_score(self, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The score of every entry of `param`, for a criterion that needs no data (`generator`: seeded, for noise)."""
        raise DeepCutsError(f"criterion {self.name!r} declares no data needs but no data-free score")


def mean_output(out_sum: torch.Tensor, tokens: torch.Tensor | float) -> torch.Tensor:
    """The mean output per row over the tokens (`out_sum / tokens`); 0 rather than NaN over no token."""
    return out_sum / (tokens.clamp_min(1.0) if torch.is_tensor(tokens) else max(tokens, 1.0))
