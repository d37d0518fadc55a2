"""The registry of deployment runtimes: every module of this package but `base` declares `RUNTIME`, a
`base.Runtime`; importing them all builds `RUNTIMES`, so adding a runtime is adding its module (and its test).
A runtime module imports its library only inside its functions, so one that is not installed is listed, never
an import error."""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from ..errors import DeepCutsError, check_choice
from .base import Feeds, Runtime, Session

TOOLS = ("base",)
"""The package's modules that declare no runtime."""
RUNTIMES: dict[str, Runtime] = {}
"""name -> its Runtime, in their `position` order."""


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`, refused clearly when unknown or not installed (naming what to install)."""
    check_choice("runtime", name, tuple(RUNTIMES))
    runtime = RUNTIMES[name]
    if not runtime.installed():
        raise DeepCutsError(f"runtime {name!r} is not installed (it needs {', '.join(runtime.packages)}): "
                            f"{runtime.install_hint()}")
    return runtime


def installed(note: Callable[[str], None] = print) -> list[Runtime]:
    """The installed runtimes; each one that is not gets a one-line `note` saying how to install it."""
    found = []
    for runtime in RUNTIMES.values():
        if runtime.installed():
            found.append(runtime)
        else:
            note(f"skipping runtime {runtime.name}: not installed ({runtime.install_hint()})")
    return found


def _collect() -> None:
    declared = []
    for info in pkgutil.iter_modules(__path__):
        if info.name not in TOOLS:
            declared.append(importlib.import_module(f"{__name__}.{info.name}").RUNTIME)
    for runtime in sorted(declared, key=lambda r: r.position):
        if runtime.name in RUNTIMES:
            raise RuntimeError(f"two runtime modules declare {runtime.name!r}")
        RUNTIMES[runtime.name] = runtime


_collect()

__all__ = ["Feeds", "RUNTIMES", "Runtime", "Session", "get_runtime", "installed"]
