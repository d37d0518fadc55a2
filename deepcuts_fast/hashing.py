"""Stable hashes of settings, tensors and models: cache keys, step keys and checkpoint fingerprints.

One home for hashing, so a model hashed for a resumable job step and for a scoring checkpoint is
hashed the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def _json_default(value: Any) -> str:
    """JSON form of the non-JSON values that key fields commonly hold (dtypes, paths)."""
    if isinstance(value, (torch.dtype, os.PathLike)):
        return str(value)
    raise TypeError(f"cache key field of type {type(value).__name__} is not JSON-serialisable")


def canonical_json(fields: Any) -> str:
    """Sorted-key, compact JSON (dtypes and paths as str): the same fields always give the same text."""
    return json.dumps(fields, sort_keys=True, default=_json_default, separators=(",", ":"))


def cache_key(**fields: Any) -> str:
    """Stable 16-hex-digit key: sha256 of the fields as canonical JSON."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16]


def update_with_tensors(h: Any, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed each (name, tensor) to hash `h`: name, shape, dtype and the raw bytes of its values."""
    for name, t in named:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # its buffer: no copy


def model_fingerprint(model: nn.Module, digest_size: int = 8) -> str:
    """Hash of a model's state (parameter and buffer names, shapes, dtypes and values)."""
    h = hashlib.blake2b(digest_size=digest_size)
    update_with_tensors(h, model.state_dict().items())
    return h.hexdigest()


# (path, size, mtime_ns, ctime_ns, inode) -> digest: each file is read once per process while it is unchanged.
_FILE_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """blake2b hex digest of a file's bytes, memoised per (path, size, mtimes, inode) so a large weights file
    is read once per process, and again as soon as it is rewritten."""
    st = os.stat(path)
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if memo not in _FILE_DIGESTS:
        with open(path, "rb") as f:
            _FILE_DIGESTS[memo] = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    return _FILE_DIGESTS[memo]


def files_fingerprint(folder: str | os.PathLike, names: Iterable[str]) -> str:
    """Hash of the named files of `folder` (each name with its bytes' digest): the same for the same contents
    wherever the folder lies."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(names):
        h.update(f"{name}:{file_digest(os.path.join(folder, name))};".encode())
    return h.hexdigest()


def content_hash(value: Any) -> str:
    """blake2b hex digest of a JSON-serialisable value's canonical JSON (texts, labels, ...)."""
    return hashlib.blake2b(canonical_json(value).encode(), digest_size=16).hexdigest()
