"""Peak memory of one forward pass beyond what was resident before it (activations and workspace).

CPU: the process's resident-set high-water mark (`VmHWM`), reset just before the pass through
`/proc/self/clear_refs` (Linux). Freed heap memory is first handed back to the OS with glibc's
`malloc_trim`, so memory kept from earlier passes cannot hide this pass's allocations. Without
`/proc/self/clear_refs` (not Linux) nothing honest can be measured and the probe returns None:
`tracemalloc` does not see torch's allocations and `ru_maxrss` only ever reports the process's
lifetime peak.

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated
before the pass.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MB = 2**20


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} missing from {_STATUS}")
    return int(match.group(1))


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def rss_available() -> bool:
    """Whether the CPU probe works here (Linux with a writable /proc/self/clear_refs)."""
    try:
        _CLEAR_REFS.write_text("5")
        _status_kb("VmHWM")
    except OSError:
        return False
    return True


def cpu_peak_mb(run: Callable[[], object]) -> float:
    """Resident memory (MB) that `run()` added at its peak over what was resident just before it."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    before = _status_kb("VmRSS")
    _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
    run()
    return max(_status_kb("VmHWM") - before, 0) / 1024


def cuda_peak_mb(run: Callable[[], object], device: torch.device) -> float:
    """CUDA memory (MB) that `run()` allocated at its peak over what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - before, 0) / _MB
