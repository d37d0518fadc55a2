"""Kernel 2, fused activation statistics: one pass over an activation A and its gradient dA.

Per channel, masked over tokens and accumulated in fp32 across calls into a (4, channels) buffer:
row 0 `sum A`, row 1 `sum dA`, row 2 `sum A * dA` (first-order unit score), row 3 `sum |A * dA|`.
Divide rows 0 and 1 by the masked token count for the means (GradCAM weighting).
`activation_stats` checks its arguments and calls the torch operator `deepcuts::activation_stats`
(A and dA flattened to 2-D), whose table below holds each backend's implementation (see registry.py).
"""
from __future__ import annotations

import torch

from . import backends, registry


def activation_stats_reference(a: torch.Tensor, da: torch.Tensor, mask: torch.Tensor | None,
                               out: torch.Tensor) -> None:
    """Eager PyTorch: `out += [m @ A, m @ dA, m @ (A * dA), m @ |A * dA|]` for (tokens, channels) A and dA."""
    a32, d32 = a.float(), da.float()
    m = torch.ones(a.shape[0], device=a.device) if mask is None else mask.float()
    prod = a32 * d32
    out[0] += m @ a32
    out[1] += m @ d32
    out[2] += m @ prod
    out[3] += m @ prod.abs()


ACTIVATION_STATS = registry.define("activation_stats",
                                   "(Tensor a, Tensor da, Tensor? mask, Tensor(a!) out, str backend) -> ()")


def activation_stats(a: torch.Tensor, da: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor,
                     backend: str = "auto") -> None:
    """Accumulate the four masked per-channel sums of A and dA into `out` (fp32, shape (4, channels))."""
    a, da = a.flatten(0, -2), da.flatten(0, -2)
    if a.shape != da.shape:
        raise ValueError(f"A {tuple(a.shape)} and dA {tuple(da.shape)} must have one shape")
    if out.shape != (4, a.shape[1]) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape (4, {a.shape[1]})")
    if mask is not None and mask.numel() != a.shape[0]:
        raise ValueError(f"the mask has {mask.numel()} entries for {a.shape[0]} tokens")
    ACTIVATION_STATS(a, da, mask, out, backends.resolve(backend, a.device))


def _prepared(a: torch.Tensor, da: torch.Tensor, mask: torch.Tensor | None):
    """What the fused kernels take: contiguous A and dA in A's dtype, a flat contiguous fp32 mask."""
    return a.contiguous(), da.to(a.dtype).contiguous(), None if mask is None else mask.reshape(-1).float().contiguous()


def _triton(a, da, mask, out) -> None:
    from .triton_kernels import launch_activation_stats

    launch_activation_stats(*_prepared(a, da, mask), out)


def _extension(ext, stream):
    return lambda a, da, mask, out: ext.activation_stats(*_prepared(a, da, mask), out, *stream(a.device))


registry.implement(ACTIVATION_STATS, torch=activation_stats_reference, triton=_triton)
registry.implement_extensions(ACTIVATION_STATS, cpp=_extension, cuda=_extension)
