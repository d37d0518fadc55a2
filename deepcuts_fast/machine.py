"""Where numbers were measured: the facts every benchmark and report records beside its results."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_info() -> dict:
    """Platform, CPU model, core count, torch threads and versions."""
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
