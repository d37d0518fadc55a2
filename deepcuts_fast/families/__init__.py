"""The registry of encoder families: the only place that knows one.

Every module of this package (but the `TOOLS`) describes one transformers `model_type`: `FAMILY`, a `base.Family`,
for a supported one; `REFUSED`, {model_type: reason}, for one deepcuts-fast refuses. The registry is built by
importing them all, so adding a family is adding its module. Everything else asks `family(model_or_config)`.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import DeepCutsError
from .base import Family

TOOLS = ("base", "modeling_deepcuts_slim", "narrowing")
"""The package's modules that describe no family: the record, the modeling file saved folders carry, narrowing."""
FAMILIES: dict[str, Family] = {}
"""model_type -> its Family, for every supported family."""
REFUSED: dict[str, str] = {}
"""model_type -> why deepcuts-fast refuses it."""


def _collect() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in TOOLS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found = getattr(module, "FAMILY", None)
        if found is not None:
            if found.model_type in FAMILIES:
                raise RuntimeError(f"two family modules declare {found.model_type!r}")
            FAMILIES[found.model_type] = found
        REFUSED.update(getattr(module, "REFUSED", {}))


def model_type_of(model_or_config) -> str | None:
    """The `model_type` of a model (its config's) or of a config, as an object or a config.json dict."""
    if isinstance(model_or_config, dict):
        return model_or_config.get("model_type")
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None)


def find(model_or_config) -> Family | None:
    """The Family of a model or config, or None for a family deepcuts-fast does not know."""
    return FAMILIES.get(model_type_of(model_or_config))


def family(model_or_config) -> Family:
    """The Family of a model or config, or one clear error: the reason for a refused family, the supported
    list for an unknown one."""
    model_type = model_type_of(model_or_config)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in REFUSED:
        raise DeepCutsError(f"{model_type!r} models cannot be pruned by deepcuts-fast: {REFUSED[model_type]}")
    raise DeepCutsError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(FAMILIES))} "
                        "(HF encoder models with the standard module layout)")


_collect()  # after the functions above: a module of the package may import them

__all__ = ["FAMILIES", "REFUSED", "Family", "family", "find", "model_type_of"]
