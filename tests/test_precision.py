"""The precision policy: what "auto" picks on each kind of machine, why, and that every default path
follows it (no bf16 on a CPU that emulates it). Machine facts are faked, so these hold on any CPU."""
from __future__ import annotations

import json

import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast import precision
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.train import finetune
from conftest import tiny_batches, tiny_model

AVX2 = frozenset({"fma", "avx", "avx2"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Fake a CPU: `machine(flags, onednn=True, speedup=None)`; "auto" is left to the policy."""
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "_warned", set())
    measured = []

    def fake(flags: frozenset, onednn: bool = True, speedup: float | None = None):
        precision.cpu_bf16.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
        monkeypatch.setattr(precision, "_onednn_bf16", lambda: onednn)

        def measure():
            measured.append(1)
            assert speedup is not None, "this machine kind must be decided without measuring"
            return speedup

        monkeypatch.setattr(precision, "_measure_speedup", measure)
        return measured

    yield fake
    precision.cpu_bf16.cache_clear()


@pytest.mark.parametrize("flags,onednn,speedup,want", [
    (AMX, True, None, torch.bfloat16),  # AMX: native, no measurement needed
    (AVX2, True, None, torch.float32),  # AVX2 only: emulated
    (AVX2 | {"avx512f"}, True, None, torch.float32),  # AVX-512 without BF16 (Skylake / Cascade Lake)
    (AVX512_BF16, True, 3.9, torch.bfloat16),  # AVX512_BF16 without AMX: measured, fast
    (AVX512_BF16, True, 1.1, torch.float32),  # ... measured, not worth it
    (AMX, False, None, torch.float32),  # oneDNN capped (ONEDNN_MAX_CPU_ISA) or without bf16 kernels
    (frozenset(), True, 2.0, torch.bfloat16),  # flags unknown (no /proc/cpuinfo): measured
])
def test_auto_on_each_kind_of_cpu(machine, flags, onednn, speedup, want):
    machine(flags, onednn, speedup)
    for purpose in precision.PURPOSES:
        choice = precision.choose(purpose, "cpu")
        assert choice.dtype == want and choice.reason.startswith(precision.NAMES[want] + ":")


def test_the_measurement_is_cached_per_machine(machine, tmp_path):
    measured = machine(AVX512_BF16, speedup=2.5)
    assert precision.choose("train").dtype == torch.bfloat16 and len(measured) == 1
    precision.cpu_bf16.cache_clear()  # a new process: the measurement is read back from the cache
    assert precision.choose("train").dtype == torch.bfloat16 and len(measured) == 1
    (entry,) = (tmp_path / "machine").iterdir()
    assert json.loads(entry.read_text())["speedup"] == 2.5


def test_the_real_measurement_runs_and_is_positive():
    assert precision._measure_speedup(n=64, repeats=2) > 0


def test_explicit_dtypes_env_override_and_bad_names(machine, monkeypatch):
    machine(AVX2)
    assert precision.choose("train", "cpu", "fp32").reason == "requested"
    with pytest.warns(UserWarning, match="without native bf16"):
        assert precision.choose("score", "cpu", torch.bfloat16).dtype == torch.bfloat16
    monkeypatch.setenv(precision.ENV_OVERRIDE, "bf16")
    assert precision.choose("infer").dtype == torch.bfloat16
    for bad in ("int8", torch.int8, 3):
        with pytest.raises(DeepCutsError, match="unsupported dtype"):
            precision.choose("train", "cpu", bad)
    with pytest.raises(DeepCutsError, match="unknown purpose"):
        precision.choose("eat")


def test_scoring_keeps_fp32_when_bf16_would_round_the_noise_away(machine):
    machine(AMX)
    assert precision.choose_for_scoring("cpu", "auto", None).dtype == torch.bfloat16
    small = precision.choose_for_scoring("cpu", "auto", 1e-3)
    assert small.dtype == torch.float32 and "resolution" in small.reason
    assert precision.choose_for_scoring("cpu", "auto", 0.05).dtype == torch.bfloat16
    assert precision.choose_for_scoring("cpu", "bf16", 1e-3).dtype == torch.bfloat16  # asked for: as asked


def test_cuda_choice_by_capability(monkeypatch):
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **k: True)
    assert precision.choose("train", "cuda").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **k: False)
    assert precision.choose("infer", "cuda").dtype == torch.float16
    assert precision.choose("train", "cuda").dtype == torch.float32


@pytest.fixture
def autocasts(monkeypatch):
    """The dtypes of every torch.autocast entered (enabled ones only)."""
    seen = []
    real = torch.autocast

    class Spy(real):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
            if enabled:
                seen.append(dtype)

    monkeypatch.setattr(torch, "autocast", Spy)
    return seen


def _default_paths(bert):
    batches = tiny_batches(n_batches=2)
    finetune(bert, batches, epochs=1, progress=False)
    dc.score_many(bert, batches, ["cam-cut", "smooth-cut"], noise_samples=2, noise_std=0.05, progress=False)
    slim, _, _ = dc.prune_without_retraining(bert, batches, 0.5, seq_len=8)
    dc.reconstruct(slim, bert, batches)
    report = dc.benchmark([bert], batch_sizes=(1,), seq_lens=(4,), warmup=0, repeats=1)
    return report.settings["dtype"]


@pytest.mark.parametrize("native", [False, True])
def test_default_paths_follow_the_policy(machine, autocasts, native):
    machine(AMX if native else AVX2)
    bench_dtype = _default_paths(tiny_model())
    if native:
        assert autocasts and set(autocasts) == {torch.bfloat16} and bench_dtype == "bf16"
    else:  # no default path may run bf16 on a CPU that emulates it
        assert autocasts == [] and bench_dtype == "fp32"
