"""Microbenchmarks (pytest-benchmark) of each fused kernel against its eager PyTorch equivalent, at BERT-base shapes.

Tokens: 32 x 128 = 4096 (one batch, N = 1; the smooth criteria stack N copies, scaling tokens by N).
Kernel 2 (activation statistics) at 768 and 3072 channels; kernel 1's epilogue at 768 x 768, 3072 x 768 and
768 x 3072, and the whole kernel 1 (GEMM + epilogue); kernel 3 (noise) on one 4096 x 768 output, N = 10.
"eager" is the plain PyTorch reference in deepcuts_fast/kernels (what backend="torch" runs).

    flock /tmp/deepcuts-bench.lock python -m pytest benchmarks/bench_kernels.py --benchmark-columns=median,iqr,rounds
"""
from __future__ import annotations

import pytest
import torch

from deepcuts_fast.kernels import (
    activation_stats,
    activation_stats_reference,
    add_noise,
    available,
    weight_score,
    weight_score_epilogue,
    weight_score_epilogue_reference,
    weight_score_reference,
)

TOKENS = 32 * 128
IMPLS = ["eager", pytest.param("cpp", marks=pytest.mark.skipif(not available("cpp", "cpu"), reason="no C++ ext"))]


def _rand(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [768, 3072])
def test_activation_stats(benchmark, impl, channels):
    benchmark.group = f"kernel 2: activation stats {TOKENS} x {channels}"
    a, da = _rand(TOKENS, channels), _rand(TOKENS, channels) * 0.1
    mask = (torch.rand(TOKENS, generator=torch.Generator().manual_seed(0)) > 0.2).float()
    out = torch.zeros(4, channels)
    if impl == "eager":
        benchmark(activation_stats_reference, a, da, mask, out)
    else:
        benchmark(activation_stats, a, da, mask, out, backend="cpp")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(768, 768), (3072, 768), (768, 3072)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_weight_score_epilogue(benchmark, impl, shape):
    benchmark.group = f"kernel 1 epilogue: W {shape[0]} x {shape[1]}"
    w, g, roww, s = _rand(*shape), _rand(*shape), _rand(shape[0]), torch.zeros(shape)
    if impl == "eager":
        benchmark(weight_score_epilogue_reference, w, g, roww, 0.1, s)
    else:
        benchmark(weight_score_epilogue, w, g, roww, 0.1, s, backend="cpp")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(768, 768), (3072, 768), (768, 3072)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_weight_score_fused(benchmark, impl, shape):
    benchmark.group = f"kernel 1 (GEMM + epilogue): W {shape[0]} x {shape[1]}, {TOKENS} tokens"
    out, inp = shape
    x, dy, w, roww, s = _rand(TOKENS, inp), _rand(TOKENS, out), _rand(*shape), _rand(out), torch.zeros(shape)
    if impl == "eager":
        benchmark(weight_score_reference, x, dy, w, roww, 0.1, s)
    else:
        benchmark(weight_score, x, dy, w, roww, 0.1, s, backend="cpp")


@pytest.mark.parametrize("impl", IMPLS)
def test_noise(benchmark, impl):
    benchmark.group = f"kernel 3: Philox noise into {TOKENS} x 768, N = 10"
    y = _rand(10 * TOKENS, 768)
    benchmark.pedantic(add_noise, args=(y, 1e-3, 0, 0, 0, range(10)), kwargs={"backend": "torch" if impl == "eager" else "cpp"},
                       rounds=3 if impl == "eager" else 10, warmup_rounds=1)
