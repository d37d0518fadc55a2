"""Resumable steps: each finished step of a run is a small JSON file, so a rerun skips it.

A step is stored under `<out>/steps/<name>.json` with a key made of everything its result depends
on (the model's weights, the data, the settings, and the code it declares it runs: see
`code_fingerprint`); a rerun with another key recomputes it. Files are written atomically, so an
interrupted run never leaves a step half-recorded.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..code_fingerprint import PACKAGE_ROOT, code_fingerprint
from ..errors import DeepCutsError
from ..hashing import cache_key
from ..outputs import write_text


class StepStore:
    """Finished steps of one run folder, keyed by what they depend on."""

    def __init__(self, out: Path, context: dict, log: Callable[[str], None] = print,
                 code_root: Path = PACKAGE_ROOT):
        self.folder = Path(out) / "steps"
        if self.folder.is_symlink():
            raise DeepCutsError(f"{self.folder} is a symbolic link; a run writes its steps only into its own folder: "
                                "remove the link or choose a new --out")
        self.context = context  # fields every key includes (model fingerprint, data, job settings)
        self.log = log
        self.code_root = code_root  # the package whose modules steps name in `code`
        self.reused: list[str] = []
        self.computed: list[str] = []
        self.seconds: dict[str, float] = {}  # compute time of every step, also of reused ones

    def run(self, name: str, compute: Callable[[], dict], *, code: Sequence[str], **fields) -> dict:
        """`compute()`'s result for this step, from the store when an equal-keyed run finished it. `code`: the
        modules (or subpackages) whose code the result depends on; what they import is followed."""
        key = cache_key(**self.context, step=name, code=code_fingerprint(code, self.code_root), **fields)
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
        write_text(path, json.dumps({"key": key, "seconds": self.seconds[name], "result": result}, indent=1),
                   overwrite=True)
        self.computed.append(name)
        return result
