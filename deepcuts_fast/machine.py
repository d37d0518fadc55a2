"""Where numbers were measured: the facts every benchmark and report records beside its results.

The CPU's instruction sets matter as much as its name: the same fp32 GEMM may differ in its last
bits across ISAs and thread counts, and bf16 is fast only where the CPU has it natively (AMX,
AVX512_BF16, ARM BF16); everywhere else it is emulated and several times slower than fp32.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

# ISA flags of /proc/cpuinfo that decide how fast fp32 and bf16 run, from the best down.
_X86_ISAS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def machine_info() -> dict:
    """Platform, CPU model and ISA, core count, torch threads and versions."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def describe_cpu() -> str:
    """One line naming the CPU for a table caption, e.g. 'AMD EPYC (AVX-512 BF16, no AMX), 2 threads'."""
    isa = cpu_isa()
    if isa == "AVX-512 BF16":  # bf16 runs on AVX-512 units, not AMX tiles (when capped, the caps say more)
        isa += ", no AMX"
    return f"{cpu_model()} ({isa}), {torch.get_num_threads()} threads"


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
