"""Where numbers were measured: the facts every benchmark and report records beside its results.

The CPU's instruction sets matter as much as its name: the same fp32 GEMM may differ in its last
bits across ISAs and thread counts, and bf16 is fast only where the CPU has it natively (AMX,
AVX512_BF16, ARM BF16); everywhere else it is emulated and several times slower than fp32. So does the
memory allocator: the same dense torch fp32 pass measured 355 ms under glibc malloc, 295 ms under tcmalloc and
383 ms under jemalloc on one AMX Xeon, so every report names the one that ran.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

_MAPS = Path("/proc/self/maps")
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")  # malloc replacements usually LD_PRELOADed
# ISA flags of /proc/cpuinfo that decide how fast fp32 and bf16 run, from the best down.
_X86_ISAS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def machine_info() -> dict:
    """Platform, CPU model and ISA, core count, torch threads, the malloc in use and versions."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "allocator": allocator(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def describe_cpu() -> str:
    """One line naming the CPU for a table caption, e.g. 'AMD EPYC (AVX-512 BF16, no AMX), 2 threads'."""
    isa = cpu_isa()
    if isa == "AVX-512 BF16":  # bf16 runs on AVX-512 units, not AMX tiles (when capped, the caps say more)
        isa += ", no AMX"
    return f"{cpu_model()} ({isa}), {torch.get_num_threads()} threads"


def allocator() -> str:
    """The malloc this process runs: 'tcmalloc (LD_PRELOAD)' (or jemalloc, mimalloc) when such a library is both
    named in `LD_PRELOAD` and mapped into the process (`/proc/self/maps`; the variable alone where that cannot be
    read), else the C library's: 'glibc malloc' or 'system malloc' (noting a replacement that is mapped without a
    preload, e.g. opened by some extension, which does not replace malloc)."""
    preload = os.environ.get("LD_PRELOAD", "")
    try:
        mapped = _MAPS.read_text()
    except OSError:
        mapped = preload
    libc = "glibc malloc" if platform.libc_ver()[0] == "glibc" else "system malloc"
    for name in _ALLOCATORS:
        if f"lib{name}" in mapped:
            return f"{name} (LD_PRELOAD)" if name in preload else f"{libc} ({name} loaded, not preloaded)"
    return libc


def cpu_model() -> str:
    """The CPU's model name as the OS reports it."""
    for line in _cpuinfo_lines():
        if line.startswith(("model name", "Model Name")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 `flags`, ARM `Features`); empty where unknown."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_isa() -> str:
    """The best vector ISA that matters for GEMMs (AMX, AVX-512 BF16, AVX-512, AVX2, ARM (+BF16), or
    torch's word), with the caps set in the environment when they hold the libraries below it."""
    hardware = _hardware_isa()
    caps = [f"oneDNN {v}" for v in [os.environ.get("ONEDNN_MAX_CPU_ISA")] if v]
    aten = torch.backends.cpu.get_cpu_capability()
    if aten == "AVX2" and hardware.startswith(("AMX", "AVX-512")):
        caps.append("ATen AVX2")
    return f"{hardware}; capped: {', '.join(caps)}" if caps else hardware


def _hardware_isa() -> str:
    flags = cpu_flags()
    for flag, name in _X86_ISAS:
        if flag in flags:
            return name
    if "asimd" in flags:
        return "ARM NEON + BF16" if "bf16" in flags else "ARM NEON"
    return torch.backends.cpu.get_cpu_capability()


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()
