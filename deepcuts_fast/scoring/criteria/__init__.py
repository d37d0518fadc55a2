"""The registry of importance criteria: the only place that knows one by name.

Every module of this package (but `base`) declares its criteria in `DECLARED`, a tuple of `base.Criterion`
objects; the registry is built by importing them all, so adding a criterion is adding its module (or
`register(criterion)` from outside the package). The engine reads only what each criterion declares.
"""
from __future__ import annotations

import importlib
import pkgutil

from ...errors import DeepCutsError, suggest
from .base import Criterion, Needs, mean_output
from .fisher import LOSS_ESTIMATE

TOOLS = ("base",)
"""The package's modules that declare no criterion."""
ORDER = ("magnitude", "gradient", "cam_cut", "smooth_cut", "fisher", "random")
"""The modules whose criteria come first, in this order (the order help and error messages list them in);
any other module's follow, by module name."""
CRITERIA: dict[str, Criterion] = {}
"""name -> its Criterion, for every registered criterion."""


def register(criterion: Criterion) -> Criterion:
    """Add `criterion` to the registry (refusing a name already taken, or one `get_criterion` cannot find) and
    return it; `dc.score` and `dc.score_many` can then score it by name."""
    if not isinstance(criterion, Criterion):
        raise DeepCutsError(f"register takes a Criterion, got {type(criterion).__name__}")
    if not isinstance(criterion.name, str) or _key(criterion.name) != criterion.name:
        raise DeepCutsError(f"criterion names are lowercase, with '-' between words: {criterion.name!r}")
    if criterion.name in CRITERIA:
        raise DeepCutsError(f"a criterion named {criterion.name!r} is registered already; choose another name")
    CRITERIA[criterion.name] = criterion
    return criterion


def get_criterion(name: str) -> Criterion:
    """Look a criterion up by name, suggesting the closest one when it is misspelt."""
    key = _key(name)
    if key not in CRITERIA:
        raise DeepCutsError(
            f"unknown criterion {name!r}.{suggest(key, CRITERIA)} Choose one of: {', '.join(CRITERIA)}"
        )
    return CRITERIA[key]


def _key(name: str) -> str:
    """How a name is looked up: any case, '_' for '-', surrounding spaces ignored."""
    return name.strip().lower().replace("_", "-")


def _collect() -> None:
    found = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in TOOLS]
    for module_name in sorted(found, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m)):
        for criterion in importlib.import_module(f"{__name__}.{module_name}").DECLARED:
            register(criterion)


_collect()

__all__ = ["CRITERIA", "LOSS_ESTIMATE", "Criterion", "Needs", "get_criterion", "mean_output", "register"]
