"""Kernel 3, fused noise injection: `Y += std * N(0, 1)` in place, drawn from Philox4x32-10.

Noise element `e` of sample `s` (calibration batch `b`, prunable Linear `l`, seed `k`) is lane `e % 4`
of Box-Muller on `philox(counter=(e // 4, s, b, l), key=(k mod 2**32, k >> 32))` (csrc/common/philox.h).
Every backend draws exactly these numbers, so scores agree across backends and stacked, chunked and
sequential noise samples draw identical noise. The reference below does it with int64 tensor ops.
"""
from __future__ import annotations

import torch

from . import backends

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
TWO_PI = 6.2831855
U_SCALE, U_SHIFT = 2.3283064365386963e-10, 1.1641532182693481e-10


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of `a * m` (a holds uint32 values in int64), split so nothing overflows."""
    hi_part = a * (m >> 16)
    mid = a * (m & 0xFFFF) + ((hi_part & 0xFFFF) << 16)
    return ((hi_part >> 16) + (mid >> 32)) & MASK32, mid & MASK32


def philox4x32_10(c: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """Ten Philox rounds on the counter words `c` (int64 tensors of uint32 values) under a 64-bit key."""
    x, y, z, w = c
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(x, M0)
        hi1, lo1 = _mulhilo(z, M1)
        x, y, z, w = hi1 ^ y ^ k0, lo1, hi0 ^ w ^ k1, lo0
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return [x, y, z, w]


def philox_normal_reference(numel: int, seed: int, batch: int, layer: int, samples: range,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """The (len(samples), numel) fp32 standard normals of the given noise keys, as every kernel draws them."""
    blocks = (numel + 3) // 4
    shape = (len(samples), blocks)
    counter = [
        torch.arange(blocks, device=device, dtype=torch.int64).expand(shape),
        torch.tensor(list(samples), device=device, dtype=torch.int64)[:, None].expand(shape),
        torch.full(shape, batch & MASK32, device=device, dtype=torch.int64),
        torch.full(shape, layer & MASK32, device=device, dtype=torch.int64),
    ]
    x, y, z, w = philox4x32_10(counter, seed & ((1 << 64) - 1))
    u = [v.to(torch.float32).mul_(U_SCALE).add_(U_SHIFT) for v in (x, y, z, w)]
    r0 = u[0].log_().mul_(-2.0).sqrt_()
    r1 = u[2].log_().mul_(-2.0).sqrt_()
    t0, t1 = u[1].mul_(TWO_PI), u[3].mul_(TWO_PI)
    normals = torch.stack([r0 * t0.cos(), r0 * t0.sin(), r1 * t1.cos(), r1 * t1.sin()], dim=-1)
    return normals.view(len(samples), 4 * blocks)[:, :numel]


def add_noise_reference(y: torch.Tensor, std: float, seed: int, batch: int, layer: int, samples: range) -> None:
    """`y += std * noise` in place, the k = len(samples) noise samples stacked along y's first dimension."""
    k = len(samples)
    z = philox_normal_reference(y.numel() // k, seed, batch, layer, samples, y.device)
    y.add_(z.reshape(y.shape), alpha=std)


def add_noise(y: torch.Tensor, std: float, seed: int, batch: int, layer: int, samples: range,
              backend: str = "auto") -> None:
    """Add the keyed Philox noise to `y` in place (no autograd: the gradient of `y + noise` is the identity)."""
    if y.numel() % len(samples):
        raise ValueError(f"a tensor of {y.numel()} elements does not split into {len(samples)} noise samples")
    if not samples or std == 0 or y.numel() == 0:
        return
    name = backends.resolve(backend, y.device)
    # Through `.data`: autograd never sees the edit (d(y + noise)/dy is the identity) and y's version counter
    # stays put; bumping it on a view such as a Linear's 3-D output makes register_hook crash in torch 2.13.
    data = y.data
    target = data if data.is_contiguous() else data.contiguous()
    with torch.no_grad():
        if name == "torch":
            add_noise_reference(target, std, seed, batch, layer, samples)
        elif name == "triton":
            _add_noise_triton(target, std, seed, batch, layer, samples)
        else:
            backends.extension(name).add_noise(target, float(std), _signed64(seed), batch & MASK32,
                                               layer & MASK32, samples.start, len(samples),
                                               *backends.stream_args(name, y.device))
        if target is not data:
            data.copy_(target)


def _signed64(seed: int) -> int:
    """The 64-bit key as the signed int64 a C++ binding takes (same bits)."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _add_noise_triton(y: torch.Tensor, std: float, seed: int, batch: int, layer: int, samples: range) -> None:
    from .triton_kernels import launch_add_noise

    launch_add_noise(y, std, seed & ((1 << 64) - 1), batch & MASK32, layer & MASK32, samples)
