"""Kernel 3, fused noise injection: `Y += std * N(0, 1)` in place, drawn from Philox4x32-10.

Noise element `e` of sample `s` (calibration batch `b`, prunable Linear `l`, seed `k`) is lane `e % 4`
of Box-Muller on `philox(counter=(e // 4, s, b, l), key=(k mod 2**32, k >> 32))` (csrc/common/philox.h).
Every backend draws exactly these numbers, so scores agree across backends and stacked, chunked and
sequential noise samples draw identical noise. The reference below does it with int64 tensor ops.
`add_noise` checks its arguments and calls the torch operator `deepcuts::add_noise` on `y.data` (made
contiguous; `y.detach()` under torch.export), with the noise key as plain ints (seed as a signed int64,
the samples as first and count), whose table below holds each backend's implementation (see registry.py).

`std` is one number for every sample (the absolute noise), or a tensor of one standard deviation per
stacked sample (Smooth-Cut's relative noise, measured on the device): the op takes those as an optional fp32
tensor on `y`'s device that every backend's kernel reads where it runs, so each stacked sample gets its own
scale in the same single call, with no host sync, no per-sample launch and no transient buffer.
"""
from __future__ import annotations

import torch

from . import backends, registry

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


def add_noise_reference(y: torch.Tensor, std: float | torch.Tensor, seed: int, batch: int, layer: int,
                        samples: range) -> None:
    """`y += std * noise` in place, the k = len(samples) noise samples stacked along y's first dimension
    (`std`: a number, or a 0-dim or (k,) tensor of each sample's standard deviation)."""
    k = len(samples)
    z = philox_normal_reference(y.numel() // k, seed, batch, layer, samples, y.device)
    if torch.is_tensor(std):
        y.view(k, -1).add_(z.mul_(_per_sample(std, k, y.device)[:, None]))
    else:
        y.add_(z.reshape(y.shape), alpha=std)


ADD_NOISE = registry.define(
    "add_noise", "(Tensor(a!) y, float std, Tensor? stds, int seed, int batch, int layer, int first_sample, "
    "int samples, str backend) -> ()")
"""`y` (contiguous) += std * stds[s] (stds None: 1) * the Philox normals of each sample s of first_sample .. +
samples, keyed by the 64-bit seed (as a signed int64: the same bits), batch and layer (uint32); `stds`: fp32,
one per sample, on `y`'s device."""


def add_noise(y: torch.Tensor, std: float | torch.Tensor, seed: int, batch: int, layer: int, samples: range,
              backend: str = "auto") -> None:
    """Add the keyed Philox noise to `y` in place (no autograd: the gradient of `y + noise` is the identity).
    `std`: one number, or a 0-dim or (len(samples),) tensor: each stacked sample's own standard deviation."""
    if y.numel() % len(samples):
        raise ValueError(f"a tensor of {y.numel()} elements does not split into {len(samples)} noise samples")
    stds = None
    if torch.is_tensor(std):
        if std.numel() not in (1, len(samples)):
            raise ValueError(f"std holds {std.numel()} values for {len(samples)} noise samples")
        stds, std = _per_sample(std, len(samples), y.device), 1.0
    if not samples or std == 0 or y.numel() == 0:
        return
    name = backends.resolve(backend, y.device)
    data = _untracked(y)
    target = data if data.is_contiguous() else data.contiguous()
    with torch.no_grad():
        ADD_NOISE(target, float(std), stds, _signed64(seed), batch & MASK32, layer & MASK32, samples.start,
                  len(samples), name)
        if target is not data:
            data.copy_(target)


def _untracked(y: torch.Tensor) -> torch.Tensor:
    """`y` to add the noise into, unseen by autograd. Through `.data`: autograd never sees the edit (d(y + noise)/dy
    is the identity) and y's version counter stays put; bumping it on a view such as a Linear's 3-D output makes
    register_hook crash in torch 2.13. torch.export loses an edit through `.data` (non-strict refuses it), so
    there it goes through detach()."""
    return y.detach() if torch.compiler.is_exporting() else y.data


def _per_sample(std: torch.Tensor, k: int, device: torch.device) -> torch.Tensor:
    """A 0-dim or (k,) std tensor as a contiguous (k,) fp32 tensor on `device`."""
    return std.detach().to(device=device, dtype=torch.float32).reshape(-1).expand(k).contiguous()


def _signed64(seed: int) -> int:
    """The 64-bit key as the signed int64 a C++ binding takes (same bits)."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _reference(y: torch.Tensor, std: float, stds: torch.Tensor | None, seed: int, batch: int, layer: int, first: int,
               count: int) -> None:
    add_noise_reference(y, std if stds is None else std * stds, seed, batch, layer, range(first, first + count))


def _triton(y: torch.Tensor, std: float, stds: torch.Tensor | None, seed: int, batch: int, layer: int, first: int,
            count: int) -> None:
    from .triton_kernels import launch_add_noise

    launch_add_noise(y, std, stds, seed & ((1 << 64) - 1), batch, layer, range(first, first + count))


def _extension(ext, stream):
    return lambda y, std, stds, seed, batch, layer, first, count: ext.add_noise(y, std, stds, seed, batch, layer,
                                                                               first, count, *stream(y.device))


registry.implement(ADD_NOISE, torch=_reference, triton=_triton)
registry.implement_extensions(ADD_NOISE, cpp=_extension, cuda=_extension)
