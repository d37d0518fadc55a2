"""Every fused kernel backend against its PyTorch reference, and the Philox noise's statistics.

Fresh random inputs (never zeros), shapes that are not multiples of the tiles, fp32/bf16/fp16, with
and without masks / row weights; outputs start from random values (the kernels accumulate) and sit
inside NaN-filled buffers so a write past the end shows.
"""
from __future__ import annotations

import os
import warnings
import zlib

import pytest
import torch

from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.kernels.noise import philox4x32_10
from deepcuts_fast.kernels import (
    activation_stats,
    activation_stats_reference,
    add_noise,
    add_noise_reference,
    backends,
    philox_normal_reference,
    weight_score,
    weight_score_epilogue,
    weight_score_epilogue_reference,
    weight_score_reference,
)


def _device(name: str) -> str:
    return "cuda" if name == "cuda" else "cpu"


def _params():
    out = []
    for name in ("cpp", "triton", "cuda"):
        ok = backends.available(name, _device(name))
        out.append(pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"backend {name!r} not available here")))
    return out


BACKENDS = _params()
SHAPES = [(70, 50, 40), (33, 17, 65), (128, 96, 64), (5, 3, 130)]  # tokens, out, in
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def seeded(*case) -> torch.Generator:
    """A generator seeded from the test case's parameters: fresh inputs for every case, the same in every
    process (unlike hash() of a string, which PYTHONHASHSEED changes), so a failure reproduces."""
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def guarded(shape, device, gen):
    """A random-valued contiguous fp32 tensor that is the head of a NaN-filled buffer, and that buffer."""
    n = torch.Size(shape).numel()
    buf = torch.full((n + 37,), float("nan"), device=device)
    buf[:n] = torch.rand(n, generator=gen).to(device)
    return buf[:n].view(shape), buf


def assert_guard_intact(buf, n):
    assert torch.isnan(buf[n:]).all(), "a kernel wrote past the end of its output"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_roww", [False, True])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "epilogue"])
def test_weight_score_matches_reference(backend, shape, dtype, with_roww, fused):
    dev = _device(backend)
    gen = seeded(shape, str(dtype), with_roww, fused)
    tokens, out, inp = shape
    x = torch.randn(tokens, inp, generator=gen).to(dev, dtype)
    dy = torch.randn(tokens, out, generator=gen).to(dev, dtype)
    w = torch.randn(out, inp, generator=gen).to(dev, dtype)
    roww = torch.randn(out, generator=gen).to(dev) if with_roww else None
    g = dy.float().t() @ x.float()
    outs = {}
    for kind, sh in (("s", (out, inp)), ("rows", (out,)), ("cols", (inp,))):
        outs[kind] = guarded(sh, dev, gen)
    expect = {k: v[0].clone() for k, v in outs.items()}
    if fused:
        weight_score(x, dy, w, roww, 0.25, outs["s"][0], outs["rows"][0], outs["cols"][0], backend=backend)
        weight_score_reference(x, dy, w, roww, 0.25, expect["s"], expect["rows"], expect["cols"])
    else:
        weight_score_epilogue(w, g, roww, 0.25, outs["s"][0], outs["rows"][0], outs["cols"][0], backend=backend)
        weight_score_epilogue_reference(w, g, roww, 0.25, expect["s"], expect["rows"], expect["cols"])
    for k, (got, buf) in outs.items():
        scale = float(expect[k].abs().max())
        torch.testing.assert_close(got, expect[k], rtol=1e-4, atol=1e-5 * scale, msg=lambda m, k=k: f"{k}: {m}")
        assert_guard_intact(buf, got.numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_score_outputs_are_optional_and_accumulate(backend):
    dev = _device(backend)
    gen = torch.Generator().manual_seed(1)
    x, dy, w = (torch.randn(s, generator=gen).to(dev) for s in ((40, 24), (40, 20), (20, 24)))
    s = torch.rand(20, 24, generator=gen).to(dev)
    start = s.clone()
    weight_score(x, dy, w, None, 0.5, s, backend=backend)
    weight_score(x, dy, w, None, 0.5, s, backend=backend)
    once = torch.zeros(20, 24, device=dev)
    weight_score_reference(x, dy, w, None, 0.5, once)
    torch.testing.assert_close(s, start + 2 * once, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least one output"):
        weight_score(x, dy, w, None, 0.5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(70, 40), (33, 130), (257, 64), (3, 7)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_activation_stats_match_reference(backend, shape, dtype, masked):
    dev = _device(backend)
    gen = seeded(shape, str(dtype), masked)
    a = torch.randn(shape, generator=gen).to(dev, dtype)
    da = torch.randn(shape, generator=gen).to(dev, dtype)
    mask = (torch.rand(shape[0], generator=gen) > 0.3).float().to(dev) if masked else None
    got, buf = guarded((4, shape[1]), dev, gen)
    expect = got.clone()
    for _ in range(2):  # accumulates across calls
        activation_stats(a, da, mask, got, backend=backend)
        activation_stats_reference(a, da, mask, expect)
    scale = expect.abs().amax(1, keepdim=True)
    assert ((got - expect).abs() <= 1e-4 * expect.abs() + 1e-5 * scale).all(), (got - expect).abs().max()
    assert_guard_intact(buf, got.numel())


@pytest.mark.skipif(not backends.available("cpp", "cpu"), reason="C++ extension not built")
@pytest.mark.parametrize("op", ["activation_stats", "weight_score"])
def test_cpp_sums_do_not_depend_on_thread_timing(op):
    """The C++ kernels' cross-thread sums come out the same bits on every call, even with more threads than cores
    (where threads finish in a different order each time): scores reproduce run to run, and a compiled call
    equals an eager one."""
    gen = seeded(op)
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        if op == "activation_stats":
            a, da = torch.randn(2, 2048, 48, generator=gen)
            mask = (torch.rand(2048, generator=gen) > 0.3).float()
            outs = [torch.rand(4, 48, generator=gen)]
            call = lambda o: activation_stats(a, da, mask, o[0], backend="cpp")  # noqa: E731
        else:
            x, dy, w = (torch.randn(s, generator=gen) for s in ((512, 96), (512, 160), (160, 96)))
            outs = [torch.rand(160, generator=gen), torch.rand(96, generator=gen)]
            call = lambda o: weight_score(x, dy, w, None, 0.5, None, *o, backend="cpp")  # noqa: E731
        runs = []
        for _ in range(12):
            copies = [o.clone() for o in outs]
            call(copies)
            runs.append(copies)
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            assert torch.equal(got, first), f"{op}: the sums changed between two identical calls"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("numel,samples", [(1, range(0, 1)), (37 * 5, range(2, 5)), (4096 + 3, range(0, 2))])
@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_matches_reference(backend, numel, samples, dtype):
    dev = _device(backend)
    gen = torch.Generator().manual_seed(numel)
    y = torch.randn(len(samples) * numel, generator=gen).to(dev, dtype)
    buf = torch.full((y.numel() + 11,), float("nan"), device=dev, dtype=dtype)
    buf[:y.numel()] = y
    got, expect = buf[:y.numel()], y.clone()
    seed = 2**40 + 12345
    add_noise(got, 0.5, seed, 3, 11, samples, backend=backend)
    add_noise_reference(expect, 0.5, seed, 3, 11, samples)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), expect.float(), rtol=tol, atol=tol)
    assert torch.isnan(buf[y.numel():]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_is_keyed_and_reproducible(backend):
    dev = _device(backend)

    def draw(seed=0, batch=0, layer=0, samples=range(0, 1), n=999):
        y = torch.zeros(len(samples) * n, device=dev)
        add_noise(y, 1.0, seed, batch, layer, samples, backend=backend)
        return y.view(len(samples), n)

    base = draw()
    assert torch.equal(base, draw())
    stacked = draw(samples=range(0, 3))
    for s in range(3):
        assert torch.equal(stacked[s], draw(samples=range(s, s + 1))[0])
    for other in (draw(seed=1), draw(batch=1), draw(layer=1), draw(samples=range(1, 2))):
        assert not torch.allclose(base, other)


def test_philox_noise_moments():
    z = philox_normal_reference(1 << 20, seed=7, batch=2, layer=5, samples=range(0, 1))[0].double()
    n = z.numel()
    mean, var = z.mean(), z.var()
    skew = ((z - mean) ** 3).mean() / var ** 1.5
    kurt = ((z - mean) ** 4).mean() / var ** 2
    assert abs(mean) < 5 / n ** 0.5
    assert abs(var - 1) < 5 * (2 / n) ** 0.5
    assert abs(skew) < 5 * (6 / n) ** 0.5
    assert abs(kurt - 3) < 5 * (24 / n) ** 0.5
    # tails of a standard normal
    assert abs(float((z.abs() > 1.96).double().mean()) - 0.05) < 0.002


def test_philox_noise_draws_are_independent():
    n = 1 << 18
    bound = 5 / n ** 0.5

    def corr(a, b):
        a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
        return float((a * b).mean() / (a.std() * b.std()))

    base = philox_normal_reference(n + 8, 0, 0, 0, range(0, 2))
    z = base[0]
    for lag in (1, 2, 3, 4, 5, 8):  # within one Philox output (lanes), and across counters
        assert abs(corr(z[:n], z[lag:n + lag])) < bound, lag
    assert abs(corr(z[:n], base[1][:n])) < bound  # neighbouring samples
    for other in (philox_normal_reference(n, 1, 0, 0, range(0, 1)), philox_normal_reference(n, 0, 1, 0, range(0, 1)),
                  philox_normal_reference(n, 0, 0, 1, range(0, 1))):
        assert abs(corr(z[:n], other[0])) < bound
    # the squares too: Box-Muller pairs share a radius, which must not leak into the lanes' magnitudes
    assert abs(corr(z[:n:2] ** 2, z[1:n + 1:2] ** 2)) < 5 / (n / 2) ** 0.5


@pytest.mark.parametrize("counter,key,expect", [
    ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, 0xFFFFFFFF_FFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0x299F31D0_A4093822,
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_reference_matches_known_answers(counter, key, expect):
    """Random123's Philox4x32-10 known-answer vectors (key words little-endian: key0 = low 32 bits)."""
    out = philox4x32_10([torch.tensor([c]) for c in counter], key)
    assert tuple(int(v) for v in out) == expect


@pytest.mark.skipif(not backends.available("cpp", "cpu"), reason="C++ extension not built")
def test_cpp_philox_normals_match_reference():
    from deepcuts_fast import _C

    ref = philox_normal_reference(1001, 5, 1, 2, range(3, 4))[0]
    torch.testing.assert_close(_C.philox_normal(1001, 5, 1, 2, 3), ref, rtol=1e-6, atol=1e-6)


def test_resolve_picks_and_refuses_clearly(monkeypatch):
    assert backends.resolve("torch", "cpu") == "torch"
    with pytest.raises(DeepCutsError, match="unknown backend"):
        backends.resolve("tpu", "cpu")
    with pytest.raises(DeepCutsError, match="cuda"):
        backends.resolve("cuda", "cpu")
    if backends.available("cpp", "cpu"):
        assert backends.resolve("auto", "cpu") == "cpp"
    monkeypatch.setattr(backends, "loaded", lambda name: None)
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.raises(DeepCutsError, match="not built"):
        backends.resolve("cpp", "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.resolve("auto", "cpu") == "torch"
        assert backends.resolve("auto", "cpu") == "torch"
    assert len([w for w in caught if "not built" in str(w.message)]) == 1


@pytest.mark.skipif(os.environ.get("DEEPCUTS_REQUIRE_CPP") != "1", reason="set DEEPCUTS_REQUIRE_CPP=1 (make test does)")
def test_cpp_extension_is_built():
    """`make test` installs with setup.py, which must build the C++ extension: fail loudly if it did not."""
    from deepcuts_fast import _C

    assert backends.resolve("auto", "cpu") == "cpp" and _C.num_threads() >= 1
