"""`Runtime`, what one runtime module declares: its name, the packages it imports, the precisions it offers on this
machine, how it builds an artifact folder from a torch classifier and how it loads one back as a `Session`."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

Feeds = Mapping[str, np.ndarray]
"""Tokenizer outputs as int64 arrays (input_ids, attention_mask, [token_type_ids]); extra keys are ignored."""
Session = Callable[[Feeds], np.ndarray]
"""A loaded artifact: tokenizer outputs -> fp32 logits (batch, labels)."""
Build = Callable[[nn.Module, object, str, Path, Sequence[Feeds]], None]
"""build(model, tokenizer, precision, out, calibration) writes the artifact's files into the empty folder `out`."""
Load = Callable[[Path, str, int], Session]
"""load(folder, precision, threads) -> a session running the artifact in that folder."""


@dataclass(frozen=True)
class Runtime:
    """One inference runtime: `precisions()` lists what it offers on this machine (fastest kinds last is not
    assumed: every one is timed), `build` writes an artifact folder, `load` runs one. `packages` are the imports
    it needs and `extra` the pip extra that installs them, so a missing one is a note, never an import error."""

    name: str
    packages: tuple[str, ...]
    extra: str | None
    precisions: Callable[[], tuple[str, ...]]
    build: Build
    load: Load
    position: int  # where it comes in listings and tables

    def installed(self) -> bool:
        """Whether every package this runtime imports is installed."""
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def install_hint(self) -> str:
        """How to install what this runtime needs."""
        if self.extra:
            return f"pip install 'deepcuts-fast[{self.extra}]'"
        return f"pip install {' '.join(self.packages)}"


def feeds_of(batch: Mapping[str, object], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The int64 arrays of `names` from a tokenized batch (numpy arrays, torch tensors or lists)."""
    out = {}
    for name in names:
        value = batch[name]
        value = value.cpu().numpy() if hasattr(value, "cpu") else value
        out[name] = np.ascontiguousarray(np.asarray(value, dtype=np.int64))
    return out
