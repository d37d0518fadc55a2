"""The fused kernels as torch operators `deepcuts::<op>`, each with a table of implementations by backend.

`define` declares an op (its schema marks the tensors it adds into as mutated, `Tensor(a!)`, and ends with
the `str backend` that picks the implementation) with its fake for `torch.compile` / `torch.export`: the
ops return nothing and only add into their mutated arguments, whose shapes, dtypes and devices stay, so
the fake does nothing, and a compiled graph holds one opaque call (functionalized as a mutation) where the
eager code used to choose among backends in Python. The op's one kernel, registered for every device
(CompositeExplicitAutograd), looks the backend up in the op's table. Each op's module fills its table with
`implement` (the PyTorch reference and Triton, which imports lazily when it runs) and `implement_extensions`
(the C++ / CUDA extensions, only those that are built and import). `backends.resolve` decides what "auto"
means and refuses a backend that cannot run before the op is called. Adding a backend is adding its name
to `backends.py` and its implementation of each op to that op's table: no dispatch code changes.

Defined with `torch.library.Library` (`define` + `impl` + `register_fake`) rather than
`torch.library.custom_op`: the same schema and fake, but custom_op's Python autograd and in-place-or-view
layers cost tens of microseconds more per call, and these ops run for every prunable Linear on every batch.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.library import Library

from ..errors import DeepCutsError
from . import backends

NAMESPACE = "deepcuts"
_LIB = Library(NAMESPACE, "DEF")
IMPLEMENTATIONS: dict[torch._ops.OpOverload, dict[str, Callable[..., None]]] = {}
"""op -> backend -> implementation (taking the op's arguments without the trailing backend)."""


def define(name: str, schema: str) -> torch._ops.OpOverload:
    """Declare `deepcuts::<name><schema>` (returning nothing, last argument `str backend`), its fake and its
    dispatch over the backend table; returns the op (`torch.ops.deepcuts.<name>.default`)."""
    table: dict[str, Callable[..., None]] = {}
    _LIB.define(name + schema)

    def dispatch(*args) -> None:
        impl = table.get(args[-1])
        if impl is None:
            raise DeepCutsError(f"{NAMESPACE}::{name} has no {args[-1]!r} implementation here; "
                                f"registered: {', '.join(table)}")
        impl(*args[:-1])

    _LIB.impl(name, dispatch, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", _adds_in_place, lib=_LIB)
    op = getattr(getattr(torch.ops, NAMESPACE), name).default
    IMPLEMENTATIONS[op] = table
    return op


def _adds_in_place(*args) -> None:
    """The fake of every op: it returns nothing and keeps the shapes, dtypes and devices of what it mutates."""


def implement(op: torch._ops.OpOverload, **impls: Callable[..., None]) -> None:
    """Register implementations of `op` by backend name: `implement(OP, torch=..., triton=...)`."""
    IMPLEMENTATIONS[op].update(impls)


def implement_extensions(op: torch._ops.OpOverload, **factories: Callable[..., Callable[..., None]]) -> None:
    """Register the implementation of each extension backend that is built (`cpp=...`, `cuda=...`), made by
    `factory(module, stream)` from the loaded extension module and `stream(device)`, the trailing arguments its
    functions take (the CUDA stream handle; nothing for C++). One that is not built gets none."""
    for name, factory in factories.items():
        module = backends.loaded(name)
        if module is not None:
            implement(op, **{name: factory(module, functools.partial(backends.stream_args, name))})


def implemented(op: torch._ops.OpOverload) -> tuple[str, ...]:
    """The backends that have an implementation of `op` in this installation."""
    return tuple(IMPLEMENTATIONS[op])
