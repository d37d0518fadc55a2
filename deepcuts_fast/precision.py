"""The precision policy: which dtype is fastest on this device for training, scoring and inference.

bf16 is fast only where the hardware has it: CUDA GPUs with native bf16, and CPUs with AMX or
AVX512_BF16 (or ARM's BF16 extension). On other CPUs (AVX2-only servers, AVX-512 without BF16,
most laptops) oneDNN emulates bf16 and it runs 6-100x slower than fp32, so `"auto"` is decided
from what the machine can do, never assumed: CPU flags first, and where they are not conclusive
one short fp32-vs-bf16 matmul measurement, cached per machine. Every choice carries the reason,
which reports print beside the numbers.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .cache import cache_dir
from .errors import DeepCutsError
from .hashing import cache_key
from .machine import cpu_flags, cpu_isa, cpu_model

PURPOSES = ("train", "score", "infer")
ENV_OVERRIDE = "DEEPCUTS_PRECISION"  # fp32 / bf16 / fp16 / auto: what "auto" resolves to on every device
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CHOICES = ("auto", "fp32", "bf16", "fp16")  # what the CLI's --dtype takes
MIN_MEASURED_SPEEDUP = 1.5  # a bf16 matmul this much faster than fp32 counts as native
BF16_RESOLUTION = 2.0**-8  # relative spacing of bf16 numbers: smaller noise vanishes in rounding


@dataclass(frozen=True)
class Precision:
    """A dtype and why it was chosen; fp32 means no autocast."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return NAMES[self.dtype]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype to autocast to, or None for fp32 (plain fp32 compute)."""
        return None if self.dtype == torch.float32 else self.dtype

    def to_dict(self) -> dict[str, str]:
        return {"dtype": self.name, "reason": self.reason}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype from a name ('fp32', 'bf16', 'bfloat16', ...) or a torch dtype; None for 'auto' / None."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    if isinstance(value, torch.dtype):
        if value not in NAMES:
            raise DeepCutsError(f"unsupported dtype {value}; use 'auto', fp32, bf16 or fp16")
        return value
    if isinstance(value, str) and value.lower() in DTYPES:
        return DTYPES[value.lower()]
    raise DeepCutsError(f"unsupported dtype {value!r}; use 'auto', fp32, bf16 or fp16")


def choose(purpose: str, device: str | torch.device = "cpu", requested: str | torch.dtype | None = "auto") -> Precision:
    """The precision for `purpose` ('train', 'score' or 'infer') on `device`.

    An explicit `requested` dtype is used as given (with a one-time warning where it is emulated and
    slow); `"auto"` (or None) picks the fastest dtype the device runs natively: bf16 on CUDA GPUs and
    CPUs with native bf16, fp16 for inference on older GPUs, else fp32. `$DEEPCUTS_PRECISION`
    overrides what "auto" means (e.g. fp32 to make results comparable across machines).
    """
    if purpose not in PURPOSES:
        raise DeepCutsError(f"unknown purpose {purpose!r}; choose one of {', '.join(PURPOSES)}")
    device = torch.device(device)
    dtype = parse_dtype(requested)
    if dtype is not None:
        _warn_if_emulated(dtype, device)
        return Precision(dtype, "requested")
    forced = os.environ.get(ENV_OVERRIDE, "auto")
    if parse_dtype(forced) is not None:
        return Precision(parse_dtype(forced), f"set by {ENV_OVERRIDE}={forced}")
    if device.type == "cuda":
        return _cuda_choice(purpose, device)
    if device.type == "cpu":
        native, why = cpu_bf16()
        return Precision(torch.bfloat16 if native else torch.float32, why)
    return Precision(torch.float32, f"fp32: no precision policy for device type {device.type!r}")


def distinct(purpose: str, device: str | torch.device, requested: Iterable[str | torch.dtype | None]) -> list:
    """`requested` without the entries that resolve (for `purpose` on `device`) to a dtype already listed,
    keeping the first spelling of each, so "auto" keeps its reason ("fp32,auto" is just fp32 on a CPU
    that emulates bf16)."""
    first: dict[torch.dtype, str | torch.dtype | None] = {}
    for r in requested:
        first.setdefault(choose(purpose, device, r).dtype, r)
    return list(first.values())


def choose_for_scoring(device: str | torch.device, requested: str | torch.dtype | None,
                       noise_std: float | None) -> Precision:
    """`choose('score', ...)`, except that "auto" stays fp32 when noise of `noise_std` is to be added:
    bf16 keeps ~3 significant digits, so smaller noise would be rounded away and Smooth-Cut would
    silently become the plain gradient criterion."""
    choice = choose("score", device, requested)
    if (parse_dtype(requested) is None and noise_std is not None and 0 < noise_std < BF16_RESOLUTION
            and choice.dtype != torch.float32):
        return Precision(torch.float32, f"fp32: noise_std {noise_std:g} is below bf16's resolution "
                                        f"({BF16_RESOLUTION:.1e} of the activations' scale)")
    return choice


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type, or a no-op for None / fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _cuda_choice(purpose: str, device: torch.device) -> Precision:
    name = torch.cuda.get_device_name(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision(torch.bfloat16, f"bf16: {name} has native bf16")
    if purpose == "infer":
        return Precision(torch.float16, f"fp16: {name} has no native bf16")
    return Precision(torch.float32, f"fp32: {name} has no native bf16 (fp16 {purpose} would need loss scaling)")


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    """(whether bf16 is native and fast on this CPU, why), decided once per process."""
    if not _onednn_bf16():
        return False, (f"fp32: {cpu_isa()} CPU, no bf16 kernels in oneDNN here: bf16 would be emulated, "
                       "several times slower")
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True, "bf16: the CPU has AMX (amx_bf16)"
    if flags and "avx512_bf16" not in flags and "bf16" not in flags:
        return False, f"fp32: {cpu_isa()} CPU without native bf16: bf16 would be emulated, several times slower"
    speedup = measured_bf16_speedup()
    verdict = speedup >= MIN_MEASURED_SPEEDUP
    return verdict, (f"{'bf16' if verdict else 'fp32'}: {cpu_isa()} CPU, bf16 matmul measured {speedup:.2f}x "
                     f"as fast as fp32 (native above {MIN_MEASURED_SPEEDUP}x)")


def _onednn_bf16() -> bool:
    """oneDNN's own check, which also honours ONEDNN_MAX_CPU_ISA caps."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def measured_bf16_speedup() -> float:
    """fp32 / bf16 time of a 512 x 512 matmul on this CPU, measured once and cached on disk per machine."""
    path = cache_dir() / "machine" / f"bf16-speedup-{_machine_key()}.json"
    try:
        return float(json.loads(path.read_text())["speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = _measure_speedup()
    from .outputs import write_text

    with contextlib.suppress(OSError, DeepCutsError):  # a read-only cache only costs a re-measurement
        write_text(path, json.dumps({"speedup": speedup, "cpu": cpu_model(), "isa": cpu_isa(),
                                     "torch": torch.__version__}), overwrite=True)
    return speedup


def _machine_key() -> str:
    """What decides bf16 speed: the CPU, its flags, torch, and the ISA caps set in the environment."""
    return cache_key(cpu=cpu_model(), flags=sorted(cpu_flags()), torch=torch.__version__,
                     onednn_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                     aten_cap=os.environ.get("ATEN_CPU_CAPABILITY", ""))


def _measure_speedup(n: int = 512, repeats: int = 5) -> float:
    """Best-of-`repeats` time of an n x n fp32 matmul over the same in bf16 (about 0.05 s where native)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

    def best(x, y):
        x @ y  # warm-up: first-call dispatch and packing
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())


_warned: set[tuple[str, str]] = set()


def _warn_if_emulated(dtype: torch.dtype, device: torch.device) -> None:
    """One warning per process when bf16 is asked for on a CPU that emulates it."""
    import warnings

    if device.type != "cpu" or dtype != torch.bfloat16 or ("cpu", "bf16") in _warned:
        return
    native, why = cpu_bf16()
    if not native:
        _warned.add(("cpu", "bf16"))
        warnings.warn(f"bf16 was requested on a CPU without native bf16 ({why.split(': ', 1)[1]}); "
                      "use dtype 'auto' or fp32 for speed", stacklevel=3)
