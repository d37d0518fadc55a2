"""Triton versions of the three fused scoring kernels and their launchers (imported only when Triton runs).

On a GPU bf16/fp16 tiles go to tensor cores with fp32 accumulation and fp32 tiles use IEEE fp32 dots;
under TRITON_INTERPRET=1 every tile is converted to fp32 after loading (the interpreter's bf16
arithmetic is wrong) and the tiles are smaller.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backends import triton_interpreted

U_SCALE: tl.constexpr = 2.3283064365386963e-10
U_SHIFT: tl.constexpr = 1.1641532182693481e-10
TWO_PI: tl.constexpr = 6.2831855


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@triton.jit
def _uniform(x):
    return x.to(tl.float32) * U_SCALE + U_SHIFT


@triton.jit
def _noise_lane(y_ptr, base, e, per_sample, std, z):
    keep = e < per_sample
    y = tl.load(y_ptr + base + e, mask=keep, other=0.0)
    tl.store(y_ptr + base + e, (y.to(tl.float32) + std * z).to(y_ptr.dtype.element_ty), mask=keep)


@triton.jit
def add_noise_kernel(y_ptr, per_sample, std, stds_ptr, k0, k1, batch, layer, first_sample, HAS_STDS: tl.constexpr,
                     BLOCK: tl.constexpr):
    """y[sample s] += std * stds[s] (without stds: 1) * Philox normals keyed by (seed=(k0, k1),
    counter=(element // 4, s, batch, layer))."""
    s = tl.program_id(1)
    if HAS_STDS:
        std = std * tl.load(stds_ptr + s)
    blk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], dtype=tl.uint32)
    c0 = blk.to(tl.uint32)
    c1 = zero + (first_sample + s).to(tl.uint32)
    c2 = zero + batch.to(tl.uint32)
    c3 = zero + layer.to(tl.uint32)
    x, y, z, w = tl.random.philox_impl(c0, c1, c2, c3, k0.to(tl.uint32), k1.to(tl.uint32), 10)
    r0 = tl.sqrt(-2.0 * tl.log(_uniform(x)))
    t0 = TWO_PI * _uniform(y)
    r1 = tl.sqrt(-2.0 * tl.log(_uniform(z)))
    t1 = TWO_PI * _uniform(w)
    base = s.to(tl.int64) * per_sample
    e = blk.to(tl.int64) * 4
    _noise_lane(y_ptr, base, e, per_sample, std, r0 * tl.cos(t0))
    _noise_lane(y_ptr, base, e + 1, per_sample, std, r0 * tl.sin(t0))
    _noise_lane(y_ptr, base, e + 2, per_sample, std, r1 * tl.cos(t1))
    _noise_lane(y_ptr, base, e + 3, per_sample, std, r1 * tl.sin(t1))


@triton.jit
def _score_tile(acc, w_ptr, roww_ptr, s_ptr, rows_ptr, cols_ptr, ro, ci, OUT, IN, scale,
                HAS_ROWW: tl.constexpr, HAS_S: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr):
    """Add |W * G * scale * roww| of one (rows ro, columns ci) tile of G to S and/or its row/column sums."""
    keep = (ro[:, None] < OUT) & (ci[None, :] < IN)
    idx = ro[:, None].to(tl.int64) * IN + ci[None, :]
    w = tl.load(w_ptr + idx, mask=keep, other=0.0).to(tl.float32)
    if HAS_ROWW:
        f = scale * tl.load(roww_ptr + ro, mask=ro < OUT, other=0.0)
    else:
        f = tl.zeros_like(ro.to(tl.float32)) + scale
    v = tl.abs(w * acc * f[:, None])
    v = tl.where(keep, v, 0.0)
    if HAS_S:
        tl.store(s_ptr + idx, tl.load(s_ptr + idx, mask=keep, other=0.0) + v, mask=keep)
    if HAS_ROWS:
        tl.atomic_add(rows_ptr + ro, tl.sum(v, 1), mask=ro < OUT)
    if HAS_COLS:
        tl.atomic_add(cols_ptr + ci, tl.sum(v, 0), mask=ci < IN)


@triton.jit
def _gradient_tile(acc, x_ptr, dy_ptr, t0, ro, ci, T, OUT, IN, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                   BT: tl.constexpr):
    """acc += dY[t0:t0+BT, ro]^T X[t0:t0+BT, ci], in fp32."""
    t = t0 + tl.arange(0, BT)
    rows = t[:, None].to(tl.int64)
    dy = tl.load(dy_ptr + rows * OUT + ro[None, :], mask=(t[:, None] < T) & (ro[None, :] < OUT), other=0.0)
    x = tl.load(x_ptr + rows * IN + ci[None, :], mask=(t[:, None] < T) & (ci[None, :] < IN), other=0.0)
    if UPCAST:
        dy = dy.to(tl.float32)
        x = x.to(tl.float32)
    return tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)


@triton.jit
def weight_score_kernel(x_ptr, dy_ptr, w_ptr, roww_ptr, s_ptr, rows_ptr, cols_ptr, T, OUT, IN, scale,
                        HAS_ROWW: tl.constexpr, HAS_S: tl.constexpr, HAS_ROWS: tl.constexpr,
                        HAS_COLS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        INTERPRET: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, BT: tl.constexpr):
    """One (BO x BI) tile of G = dY^T X accumulated over all tokens in registers, then the score epilogue."""
    ro = tl.program_id(0) * BO + tl.arange(0, BO)
    ci = tl.program_id(1) * BI + tl.arange(0, BI)
    acc = tl.zeros([BO, BI], dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot iterate range() over a runtime bound
        t0 = 0
        while t0 < T:
            acc = _gradient_tile(acc, x_ptr, dy_ptr, t0, ro, ci, T, OUT, IN, UPCAST, PRECISION, BT)
            t0 += BT
    else:
        for t0 in range(0, T, BT):
            acc = _gradient_tile(acc, x_ptr, dy_ptr, t0, ro, ci, T, OUT, IN, UPCAST, PRECISION, BT)
    _score_tile(acc, w_ptr, roww_ptr, s_ptr, rows_ptr, cols_ptr, ro, ci, OUT, IN, scale,
                HAS_ROWW, HAS_S, HAS_ROWS, HAS_COLS)


@triton.jit
def weight_score_epilogue_kernel(w_ptr, g_ptr, roww_ptr, s_ptr, rows_ptr, cols_ptr, OUT, IN, scale,
                                 HAS_ROWW: tl.constexpr, HAS_S: tl.constexpr, HAS_ROWS: tl.constexpr,
                                 HAS_COLS: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    """The score epilogue on one tile of an accumulated fp32 gradient G."""
    ro = tl.program_id(0) * BO + tl.arange(0, BO)
    ci = tl.program_id(1) * BI + tl.arange(0, BI)
    keep = (ro[:, None] < OUT) & (ci[None, :] < IN)
    g = tl.load(g_ptr + ro[:, None].to(tl.int64) * IN + ci[None, :], mask=keep, other=0.0)
    _score_tile(g, w_ptr, roww_ptr, s_ptr, rows_ptr, cols_ptr, ro, ci, OUT, IN, scale,
                HAS_ROWW, HAS_S, HAS_ROWS, HAS_COLS)


@triton.jit
def _stats_tile(sa, sd, sp, sq, a_ptr, da_ptr, mask_ptr, t0, c, T, C, HAS_MASK: tl.constexpr, BT: tl.constexpr):
    """The four masked channel sums of tokens t0:t0+BT added to the running ones."""
    t = t0 + tl.arange(0, BT)
    keep = (t[:, None] < T) & (c[None, :] < C)
    idx = t[:, None].to(tl.int64) * C + c[None, :]
    a = tl.load(a_ptr + idx, mask=keep, other=0.0).to(tl.float32)
    d = tl.load(da_ptr + idx, mask=keep, other=0.0).to(tl.float32)
    if HAS_MASK:
        m = tl.load(mask_ptr + t, mask=t < T, other=0.0)
        a = a * m[:, None]
        p = a * d  # mask * A * dA
        d = d * m[:, None]
    else:
        p = a * d
    return sa + tl.sum(a, 0), sd + tl.sum(d, 0), sp + tl.sum(p, 0), sq + tl.sum(tl.abs(p), 0)


@triton.jit
def activation_stats_kernel(a_ptr, da_ptr, mask_ptr, out_ptr, T, C, HAS_MASK: tl.constexpr,
                            INTERPRET: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """out[:, channel tile] += masked sums of A, dA, A * dA, |A * dA| over all tokens, in fp32."""
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    sa = tl.zeros([BC], dtype=tl.float32)
    sd = tl.zeros([BC], dtype=tl.float32)
    sp = tl.zeros([BC], dtype=tl.float32)
    sq = tl.zeros([BC], dtype=tl.float32)
    if INTERPRET:  # the interpreter cannot iterate range() over a runtime bound
        t0 = 0
        while t0 < T:
            sa, sd, sp, sq = _stats_tile(sa, sd, sp, sq, a_ptr, da_ptr, mask_ptr, t0, c, T, C, HAS_MASK, BT)
            t0 += BT
    else:
        for t0 in range(0, T, BT):
            sa, sd, sp, sq = _stats_tile(sa, sd, sp, sq, a_ptr, da_ptr, mask_ptr, t0, c, T, C, HAS_MASK, BT)
    keep = c < C
    tl.store(out_ptr + c, tl.load(out_ptr + c, mask=keep, other=0.0) + sa, mask=keep)
    tl.store(out_ptr + C + c, tl.load(out_ptr + C + c, mask=keep, other=0.0) + sd, mask=keep)
    tl.store(out_ptr + 2 * C + c, tl.load(out_ptr + 2 * C + c, mask=keep, other=0.0) + sp, mask=keep)
    tl.store(out_ptr + 3 * C + c, tl.load(out_ptr + 3 * C + c, mask=keep, other=0.0) + sq, mask=keep)


def _tiles() -> tuple[int, int, int]:
    """(BO, BI, BT) of the weight-score kernels: smaller under the interpreter."""
    return (32, 32, 32) if triton_interpreted() else (64, 64, 32)


def launch_weight_score(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor, roww: torch.Tensor | None,
                        scale: float, s: torch.Tensor | None, rows: torch.Tensor | None,
                        cols: torch.Tensor | None) -> None:
    """Launch the fused weight score over a grid of (out, in) tiles."""
    out, inp = w.shape
    bo, bi, bt = _tiles()
    fp32 = x.dtype == torch.float32
    weight_score_kernel[(_cdiv(out, bo), _cdiv(inp, bi))](
        x, dy.to(x.dtype), w, _or(roww, w), _or(s, w), _or(rows, w), _or(cols, w), x.shape[0], out, inp,
        float(scale), HAS_ROWW=roww is not None, HAS_S=s is not None, HAS_ROWS=rows is not None,
        HAS_COLS=cols is not None, UPCAST=fp32 or triton_interpreted(), PRECISION="ieee" if fp32 else "tf32",
        INTERPRET=triton_interpreted(), BO=bo, BI=bi, BT=bt)


def launch_weight_score_epilogue(w: torch.Tensor, g: torch.Tensor, roww: torch.Tensor | None, scale: float,
                                 s: torch.Tensor | None, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    """Launch the score epilogue over a grid of (out, in) tiles of G."""
    out, inp = w.shape
    bo, bi, _ = _tiles()
    weight_score_epilogue_kernel[(_cdiv(out, bo), _cdiv(inp, bi))](
        w, g, _or(roww, w), _or(s, w), _or(rows, w), _or(cols, w), out, inp, float(scale),
        HAS_ROWW=roww is not None, HAS_S=s is not None, HAS_ROWS=rows is not None, HAS_COLS=cols is not None,
        BO=bo, BI=bi)


def launch_activation_stats(a: torch.Tensor, da: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor) -> None:
    """Launch the activation statistics over channel tiles."""
    tokens, channels = a.shape
    bc = 32 if triton_interpreted() else 128
    activation_stats_kernel[(_cdiv(channels, bc),)](a, da, _or(mask, out), out, tokens, channels,
                                                   HAS_MASK=mask is not None, INTERPRET=triton_interpreted(),
                                                   BT=32, BC=bc)


def _or(t: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """A pointer argument for an output the kernel is told not to touch."""
    return placeholder if t is None else t


def launch_add_noise(y: torch.Tensor, std: float, stds: torch.Tensor | None, seed: int, batch: int, layer: int,
                     samples: range) -> None:
    """Launch the in-place noise kernel over (counter blocks, samples); `stds`: each sample's scale, or None."""
    per_sample = y.numel() // len(samples)
    block = 128 if triton_interpreted() else 512
    add_noise_kernel[(_cdiv(_cdiv(per_sample, 4), block), len(samples))](
        y, per_sample, float(std), _or(stds, y), seed & 0xFFFFFFFF, seed >> 32, batch, layer, samples.start,
        HAS_STDS=stds is not None, BLOCK=block)
