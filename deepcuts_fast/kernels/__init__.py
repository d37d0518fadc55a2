"""Fused scoring kernels (SmoothGrad accumulation, GradCAM weighting, noise) and their PyTorch references.

One module per fused op, each holding the plain PyTorch reference, the public function (argument checks,
then one call of the torch operator `deepcuts::<op>`) and the op's implementations by backend: the
reference, Triton, C++ (csrc/cpu) and CUDA (csrc/cuda). `registry` defines the ops (with fakes, so
`torch.compile` and `torch.export` see one opaque op) and holds the tables; `backends` decides which
backend runs.
"""
from .activation_stats import activation_stats, activation_stats_reference
from .backends import BACKENDS, available, resolve
from .noise import add_noise, add_noise_reference, philox_normal_reference
from .weight_score import (
    weight_score,
    weight_score_epilogue,
    weight_score_epilogue_reference,
    weight_score_reference,
)

__all__ = [
    "BACKENDS",
    "activation_stats",
    "activation_stats_reference",
    "add_noise",
    "add_noise_reference",
    "available",
    "philox_normal_reference",
    "resolve",
    "weight_score",
    "weight_score_epilogue",
    "weight_score_epilogue_reference",
    "weight_score_reference",
]
