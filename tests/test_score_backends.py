"""`dc.score` with each fused backend equals `backend="torch"` for every criterion, granularity and path."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_batches, tiny_model
from test_scoring import GRADIENT_CRITERIA

import deepcuts_fast as dc
from deepcuts_fast.kernels import backends


def _params():
    out = []
    for name in ("cpp", "triton", "cuda"):
        device = "cuda" if name == "cuda" else "cpu"
        ok = backends.available(name, device)
        out.append(pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"backend {name!r} not available here")))
    return out


KW = dict(noise_samples=3, noise_std=0.05, seed=4, progress=False)


def _batches():
    """Two calibration batches (scores accumulate over them) of two texts, the second padded: the Triton interpreter
    spends its time per program of the noise kernel, about 2.6x fewer than for tiny_batches()'s 4 x 10 tokens."""
    return tiny_batches(2, batch_size=2, seq_len=8)


def _model(backend, arch="bert"):
    model = tiny_model(arch)
    return model.cuda() if backend == "cuda" else model


def _close(a, b, name):
    atol = 1e-6 * float(b.abs().max()) + 1e-12 if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_scores_close(got, want):
    assert set(got) == set(want)
    for name in want:
        _close(got[name], want[name], name)


def assert_units_close(got, want):
    for i in range(len(want.layout)):
        _close(got.heads(i), want.heads(i), f"heads of layer {i}")
        _close(got.neurons(i), want.neurons(i), f"neurons of layer {i}")


@pytest.mark.parametrize("backend", _params())
@pytest.mark.parametrize("criterion", GRADIENT_CRITERIA)
@pytest.mark.parametrize("granularity", ["weight", "unit"])
def test_backend_equals_torch(backend, criterion, granularity):
    model, batches = _model(backend), _batches()
    got = dc.score(model, batches, criterion, granularity, backend=backend, **KW)
    want = dc.score(model, batches, criterion, granularity, backend="torch", **KW)
    assert got.meta["backend"] == backend and want.meta["backend"] == "torch"
    assert got.meta["weight_score"] == "fused"
    if granularity == "weight":
        assert_scores_close(got.to("cpu"), want.to("cpu"))
    else:
        assert_units_close(got.to("cpu"), want.to("cpu"))


@pytest.mark.parametrize("backend", _params())
@pytest.mark.parametrize("granularity", ["weight", "unit"])
def test_backend_equals_torch_on_the_epilogue_path(backend, granularity):
    """Noise samples split over chunks, and several criteria sharing a pass, accumulate G then run the epilogue."""
    model, batches = _model(backend), _batches()
    chunked = dc.score(model, batches, "smooth-cam-cut-shift", granularity, backend=backend, max_memory=1, **KW)
    assert chunked.meta["weight_score"] == "epilogue" and chunked.meta["samples_per_chunk"] == 1
    fused = dc.score(model, batches, "smooth-cam-cut-shift", granularity, backend=backend, **KW)
    many = dc.score_many(model, batches, ["gradient", "cam-cut"], granularity=granularity, backend=backend, **KW)
    want_many = dc.score_many(model, batches, ["gradient", "cam-cut"], granularity=granularity, backend="torch", **KW)
    check = assert_scores_close if granularity == "weight" else assert_units_close
    check(chunked.to("cpu"), fused.to("cpu"))
    for name in many:
        check(many[name].to("cpu"), want_many[name].to("cpu"))


@pytest.mark.parametrize("backend", _params())
@pytest.mark.parametrize("criterion", ["gradient", "smooth-cut", "smooth-cam-cut"])
def test_first_order_units_equal_torch(backend, criterion):
    model, batches = _model(backend, "distilbert"), _batches()
    kw = dict(unit_method="first-order", **KW)
    assert_units_close(dc.score(model, batches, criterion, "unit", backend=backend, **kw).to("cpu"),
                       dc.score(model, batches, criterion, "unit", backend="torch", **kw).to("cpu"))


@pytest.mark.parametrize("backend", _params())
def test_pruned_model_scores_equal_torch(backend):
    """A layer with no heads left (its attention output dense has no inputs) scores the same on every backend."""
    model, batches = tiny_model("bert"), _batches()
    plan = dc.Plan(heads=[[], [0, 2]], neurons=[list(range(0, 48, 2)), list(range(48))], num_heads=[4, 4],
                   ffn_widths=[48, 48])
    slim = dc.prune(model, plan)
    slim = slim.cuda() if backend == "cuda" else slim
    for granularity in ("weight", "unit"):
        got = dc.score(slim, batches, "smooth-cam-cut", granularity, backend=backend, **KW).to("cpu")
        want = dc.score(slim, batches, "smooth-cam-cut", granularity, backend="torch", **KW).to("cpu")
        (assert_scores_close if granularity == "weight" else assert_units_close)(got, want)
