"""Kernel 1, fused weight score: `S += |W * (dY^T X) * scale * roww|` (SmoothGrad + GradCAM weighting).

`X` (tokens x in) and `dY` (tokens x out) hold all N noise samples of a batch stacked along the token
axis, `scale` is 1/N and `roww` the optional per-output-row GradCAM weight (a, or c + a). The fused
versions never hold the whole gradient: Triton/CUDA keep one tile in registers, the C++ version
computes a block of output rows at a time. Instead of (or besides) `S` they can add the score's
row sums (out,) and column sums (in,), all unit scores need. Accumulation is fp32 for every input dtype.
`weight_score_epilogue` is the same epilogue on an already accumulated fp32 gradient `G`, for batches
whose noise samples ran in several chunks.
The public functions check their arguments, resolve the backend and call the torch operators
`deepcuts::weight_score` / `deepcuts::weight_score_epilogue` (X and dY flattened to 2-D), whose tables
below hold each backend's implementation (see registry.py).
"""
from __future__ import annotations

import torch

from . import backends, registry


def weight_score_epilogue_reference(w: torch.Tensor, g: torch.Tensor, roww: torch.Tensor | None, scale: float,
                                    s: torch.Tensor | None = None, row_sums: torch.Tensor | None = None,
                                    col_sums: torch.Tensor | None = None) -> None:
    """Eager PyTorch: add `|W * G * scale * roww|` to `s` and/or its row and column sums."""
    factor = scale if roww is None else (roww.float() * scale)[:, None]
    v = (w.float() * g.float() * factor).abs_()
    if s is not None:
        s += v
    if row_sums is not None:
        row_sums += v.sum(1)
    if col_sums is not None:
        col_sums += v.sum(0)


def weight_score_reference(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor, roww: torch.Tensor | None,
                           scale: float, s: torch.Tensor | None = None, row_sums: torch.Tensor | None = None,
                           col_sums: torch.Tensor | None = None) -> None:
    """Eager PyTorch: the full fp32 gradient `G = dY^T X`, then the epilogue."""
    g = dy.flatten(0, -2).float().t() @ x.flatten(0, -2).float()
    weight_score_epilogue_reference(w, g, roww, scale, s, row_sums, col_sums)


WEIGHT_SCORE = registry.define(
    "weight_score", "(Tensor x, Tensor dy, Tensor w, Tensor? roww, float scale, Tensor(a!)? s, Tensor(b!)? row_sums, "
    "Tensor(c!)? col_sums, str backend) -> ()")
WEIGHT_SCORE_EPILOGUE = registry.define(
    "weight_score_epilogue", "(Tensor w, Tensor g, Tensor? roww, float scale, Tensor(a!)? s, Tensor(b!)? row_sums, "
    "Tensor(c!)? col_sums, str backend) -> ()")


def weight_score(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor, roww: torch.Tensor | None, scale: float,
                 s: torch.Tensor | None = None, row_sums: torch.Tensor | None = None,
                 col_sums: torch.Tensor | None = None, backend: str = "auto") -> None:
    """Add `|W * (dY^T X) * scale * roww|` (or its row / column sums) without materialising the gradient."""
    x, dy = x.flatten(0, -2), dy.flatten(0, -2)
    _check(w, roww, s, row_sums, col_sums)
    if x.shape[0] != dy.shape[0] or x.shape[1] != w.shape[1] or dy.shape[1] != w.shape[0]:
        raise ValueError(f"X {tuple(x.shape)} and dY {tuple(dy.shape)} do not match W {tuple(w.shape)}")
    name = backends.resolve(backend, w.device)
    if w.numel() == 0:
        return
    WEIGHT_SCORE(x, dy, w, roww, float(scale), s, row_sums, col_sums, name)


def weight_score_epilogue(w: torch.Tensor, g: torch.Tensor, roww: torch.Tensor | None, scale: float,
                          s: torch.Tensor | None = None, row_sums: torch.Tensor | None = None,
                          col_sums: torch.Tensor | None = None, backend: str = "auto") -> None:
    """Add `|W * G * scale * roww|` (or its row / column sums) for an accumulated fp32 gradient `G`, in one pass."""
    _check(w, roww, s, row_sums, col_sums)
    if g.shape != w.shape:
        raise ValueError(f"G {tuple(g.shape)} must have W's shape {tuple(w.shape)}")
    name = backends.resolve(backend, w.device)
    if w.numel() == 0:
        return
    WEIGHT_SCORE_EPILOGUE(w, g, roww, float(scale), s, row_sums, col_sums, name)


def _triton(x, dy, w, roww, scale, s, row_sums, col_sums) -> None:
    from .triton_kernels import launch_weight_score

    launch_weight_score(x.contiguous(), dy.contiguous(), w.contiguous(), _f32(roww), scale, s, row_sums, col_sums)


def _triton_epilogue(w, g, roww, scale, s, row_sums, col_sums) -> None:
    from .triton_kernels import launch_weight_score_epilogue

    launch_weight_score_epilogue(w.contiguous(), _f32(g), _f32(roww), scale, s, row_sums, col_sums)


def _cpp(ext, stream):
    def fused(x, dy, w, roww, scale, s, rows, cols) -> None:
        ext.weight_score_fused(x, dy, w.contiguous(), _f32(roww), scale, s, rows, cols, *stream(w.device))
    return fused


def _cuda(ext, stream):
    def fused(x, dy, w, roww, scale, s, rows, cols) -> None:  # the CUDA kernel takes X, dY and W in one dtype
        ext.weight_score_fused(x.contiguous(), dy.to(x.dtype).contiguous(), w.to(x.dtype).contiguous(), _f32(roww),
                               scale, s, rows, cols, *stream(w.device))
    return fused


def _extension_epilogue(ext, stream):
    def epilogue(w, g, roww, scale, s, rows, cols) -> None:
        ext.weight_score_epilogue(w.contiguous(), _f32(g), _f32(roww), scale, s, rows, cols, *stream(w.device))
    return epilogue


registry.implement(WEIGHT_SCORE, torch=weight_score_reference, triton=_triton)
registry.implement_extensions(WEIGHT_SCORE, cpp=_cpp, cuda=_cuda)
registry.implement(WEIGHT_SCORE_EPILOGUE, torch=weight_score_epilogue_reference, triton=_triton_epilogue)
registry.implement_extensions(WEIGHT_SCORE_EPILOGUE, cpp=_extension_epilogue, cuda=_extension_epilogue)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


def _check(w: torch.Tensor, roww: torch.Tensor | None, *outs: torch.Tensor | None) -> None:
    if w.dim() != 2:
        raise ValueError(f"W must be 2-D (out x in), got shape {tuple(w.shape)}")
    if all(o is None for o in outs):
        raise ValueError("give at least one output: s, row_sums or col_sums")
    if roww is not None and roww.shape != (w.shape[0],):
        raise ValueError(f"roww must have shape ({w.shape[0]},), got {tuple(roww.shape)}")
    for o, shape in zip(outs, (tuple(w.shape), (w.shape[0],), (w.shape[1],))):
        if o is not None and (tuple(o.shape) != shape or o.dtype != torch.float32 or not o.is_contiguous()):
            raise ValueError(f"outputs must be contiguous float32 tensors; expected shape {shape}")
