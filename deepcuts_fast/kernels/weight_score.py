"""Kernel 1, fused weight score: `S += |W * (dY^T X) * scale * roww|` (SmoothGrad + GradCAM weighting).

`X` (tokens x in) and `dY` (tokens x out) hold all N noise samples of a batch stacked along the token
axis, `scale` is 1/N and `roww` the optional per-output-row GradCAM weight (a, or c + a). The fused
versions never hold the whole gradient: Triton/CUDA keep one tile in registers, the C++ version
computes a block of output rows at a time. Instead of (or besides) `S` they can add the score's
row sums (out,) and column sums (in,), all unit scores need. Accumulation is fp32 for every input dtype.
`weight_score_epilogue` is the same epilogue on an already accumulated fp32 gradient `G`, for batches
whose noise samples ran in several chunks.
"""
from __future__ import annotations

import torch

from . import backends


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
    if name == "torch":
        weight_score_reference(x, dy, w, roww, scale, s, row_sums, col_sums)
    elif name == "triton":
        from .triton_kernels import launch_weight_score

        launch_weight_score(x.contiguous(), dy.contiguous(), w.contiguous(), _f32(roww), scale, s, row_sums, col_sums)
    else:
        if name == "cuda":
            x, dy, w = x.contiguous(), dy.to(x.dtype).contiguous(), w.to(x.dtype)
        backends.extension(name).weight_score_fused(x, dy, w.contiguous(), _f32(roww), float(scale), s, row_sums,
                                                    col_sums, *backends.stream_args(name, w.device))


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
    if name == "torch":
        weight_score_epilogue_reference(w, g, roww, scale, s, row_sums, col_sums)
    elif name == "triton":
        from .triton_kernels import launch_weight_score_epilogue

        launch_weight_score_epilogue(w.contiguous(), _f32(g), _f32(roww), scale, s, row_sums, col_sums)
    else:
        backends.extension(name).weight_score_epilogue(w.contiguous(), _f32(g), _f32(roww), float(scale), s,
                                                       row_sums, col_sums, *backends.stream_args(name, w.device))


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
