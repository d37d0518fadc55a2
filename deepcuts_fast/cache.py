"""Where deepcuts-fast caches what is costly to redo: fine-tuned models and per-machine measurements."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the on-disk cache: `$DEEPCUTS_CACHE` if set, else `~/.cache/deepcuts_fast`."""
    env = os.environ.get("DEEPCUTS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepcuts_fast"
