"""Resumable steps: each finished step of a run is a small JSON file, so a rerun skips it.

A step is stored under `<out>/steps/<name>.json` with a key made of everything its result depends
on (the model's weights, the data, the settings); a rerun with another key recomputes it. Files are
written atomically, so an interrupted run never leaves a step half-recorded.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from ..atomic import write_text
from ..hashing import cache_key


def source_fingerprint() -> str:
    """Hash of this package's Python sources: steps finished by other code are recomputed, not reused."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class StepStore:
    """Finished steps of one run folder, keyed by what they depend on."""

    def __init__(self, out: Path, context: dict, log: Callable[[str], None] = print):
        self.folder = Path(out) / "steps"
        self.context = context  # fields every key includes (model fingerprint, data, job settings)
        self.log = log
        self.reused: list[str] = []
        self.computed: list[str] = []
        self.seconds: dict[str, float] = {}  # compute time of every step, also of reused ones

    def run(self, name: str, compute: Callable[[], dict], **fields) -> dict:
        """`compute()`'s result for this step, from the store when an equal-keyed run finished it."""
        key = cache_key(**self.context, step=name, **fields)
        path = self.folder / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", name) + ".json")
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                self.reused.append(name)
                self.seconds[name] = stored["seconds"]
                return stored["result"]
        except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError):
            pass  # missing, damaged or tampered with: the step is recomputed
        start = time.perf_counter()
        result = compute()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        write_text(path, json.dumps({"key": key, "seconds": self.seconds[name], "result": result}, indent=1))
        self.computed.append(name)
        return result
