"""Which implementation of the fused scoring kernels runs: CUDA extension, Triton, C++ extension or PyTorch.

`backend="auto"` picks the CUDA extension for CUDA tensors when it is built, else Triton there, the C++
(OpenMP) extension for CPU tensors when it is built, else the PyTorch reference; it warns once when it
falls back because an extension is not built. A backend named explicitly must be usable or it raises.
The resolved name is what the `deepcuts::` ops (kernels/registry.py) take as their last argument.
"""
from __future__ import annotations

import importlib
import os
import warnings
from functools import lru_cache
from types import ModuleType

import torch

from ..errors import DeepCutsError

BACKENDS = ("auto", "torch", "triton", "cpp", "cuda")
_MODULES = {"cpp": "deepcuts_fast._C", "cuda": "deepcuts_fast._cuda"}
BUILD_HINT = "build it with `python setup.py build_ext --inplace` (or `pip install -e . --no-build-isolation`)"
_warned: set[str] = set()


@lru_cache(maxsize=None)
def loaded(name: str) -> ModuleType | None:
    """The extension module of backend `name` ('cpp' or 'cuda') when it is built and imports, else None."""
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        return None


def stream_args(name: str, device: torch.device | str) -> tuple[int, ...]:
    """The trailing stream handle the CUDA extension's functions take (nothing for the C++ ones)."""
    return (torch.cuda.current_stream(torch.device(device)).cuda_stream,) if name == "cuda" else ()


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=None)
def triton_importable() -> bool:
    """Whether triton can be imported at all."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available(name: str, device: torch.device | str) -> bool:
    """Whether backend `name` can run on tensors of `device`."""
    kind = torch.device(device).type
    if name == "torch":
        return True
    if name == "cpp":
        return kind == "cpu" and loaded("cpp") is not None
    if name == "cuda":
        return kind == "cuda" and loaded("cuda") is not None
    if name == "triton":
        return triton_importable() and (kind == "cuda" or (kind == "cpu" and triton_interpreted()))
    return False


def resolve(backend: str, device: torch.device | str) -> str:
    """The concrete backend ('torch', 'triton', 'cpp' or 'cuda') that `backend` means for `device`."""
    if backend not in BACKENDS:
        raise DeepCutsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kind = torch.device(device).type
    if backend != "auto":
        if not available(backend, device):
            raise DeepCutsError(_unavailable(backend, kind))
        return backend
    if kind == "cuda":
        if available("cuda", device):
            return "cuda"
        _warn_once("cuda", "the CUDA extension is not built: using the Triton kernels" if triton_importable()
                   else "the CUDA extension is not built and triton is not installed: using PyTorch")
        return "triton" if triton_importable() else "torch"
    if kind == "cpu" and available("cpp", device):
        return "cpp"
    if kind == "cpu":
        _warn_once("cpp", f"the C++ extension is not built: scoring uses the slower PyTorch kernels; {BUILD_HINT}")
    return "torch"


# torch.compile calls `resolve` while tracing and keeps its answer as a constant of the graph (it imports and
# warns, which would break the graph): the mark torch.compiler.assume_constant_result sets, set here directly because
# that function imports torch._dynamo (and with it triton), over a second at `import deepcuts_fast`.
resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _unavailable(backend: str, kind: str) -> str:
    if backend == "triton":
        if not triton_importable():
            return "backend 'triton' needs triton: pip install 'deepcuts-fast[triton]', or use backend='auto'"
        return (f"backend 'triton' runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), not {kind}; "
                "use backend='auto'")
    if loaded(backend) is None:
        return f"backend {backend!r} is not built in this installation; {BUILD_HINT}, or use backend='torch' or 'auto'"
    want = "cpu" if backend == "cpp" else "cuda"
    return f"backend {backend!r} runs on {want} tensors, not {kind}; use backend='auto'"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
