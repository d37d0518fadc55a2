"""Atomic writes of files and folders, and the early check that an output location can be written.

A file or folder is written under a temporary sibling name, then renamed onto its target, so no
reader ever sees a partial output and a failure leaves nothing behind. Both get the permissions
`open()` / `os.makedirs` would give under the umask, not the private 0600 / 0700 of `tempfile`.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import DeepCutsError


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Fail before any costly work when `path` cannot be written: a folder where a file is expected
    (or a file where a folder is, with `folder`), or no writable folder to create it in."""
    target = Path(path)
    _check_kind(target, folder)
    probe = target if folder else target.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise DeepCutsError(f"cannot write to {target}: {probe} is not a writable folder; choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path`."""
    target = Path(path)
    _check_kind(target, folder=False)
    tmp = _temporary(target, lambda parent: _closed(tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=parent)))
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes 0600
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False,
                  keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a new empty folder next to `path`; when the block succeeds it is renamed onto `path`, and
    on any failure it is removed, so `path` never holds a partial folder.

    A folder already at `path` is refused up front unless `overwrite`; when it is replaced, it is
    moved aside first and deleted only once the new one is in place. A folder at `path` for which
    `keep_existing` returns True once the new one is ready (e.g. a complete cache entry another
    process published meanwhile) is kept, and the new one discarded.
    """
    target = Path(path)
    _check_kind(target, folder=True)
    if target.exists() and not overwrite:
        raise DeepCutsError(f"{target} already exists; choose a new folder or pass overwrite=True")
    tmp = _temporary(target, lambda parent: tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700
        yield tmp
        _publish(tmp, target, overwrite, keep_existing)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def _publish(tmp: Path, target: Path, overwrite: bool, keep_existing: Callable[[Path], bool] | None) -> None:
    """Rename the finished folder `tmp` onto `target` (see `atomic_folder` for a folder already there)."""

    def kept() -> bool:
        return keep_existing is not None and target.exists() and keep_existing(target)

    if kept():
        return
    try:
        os.rename(tmp, target)  # fails when a non-empty folder is there
        return
    except OSError as e:
        if kept():
            return
        if not (overwrite and target.is_dir()):
            raise DeepCutsError(f"cannot write {target}: {e.strerror or e}; choose a new folder "
                                "or pass overwrite=True") from e
    _replace_folder(tmp, target)


def _replace_folder(tmp: Path, target: Path) -> None:
    """Put `tmp` at `target`, moving the old folder aside first (and back if the rename fails)."""
    aside = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _check_kind(target: Path, folder: bool) -> None:
    """Refuse an existing folder where a file is to be written, or a file where a folder is."""
    if target.exists() and target.is_dir() != folder:
        want, found = ("folder", "file") if folder else ("file name", "folder")
        raise DeepCutsError(f"output {target} is a {found}; give a {want}")


def _temporary(target: Path, make: Callable[[Path], str]) -> Path:
    """A new temporary file or folder, `make(folder)`, in `target`'s folder (created when missing)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(make(target.parent))
    except OSError as e:
        raise DeepCutsError(f"cannot write {target}: {e.strerror or e}; choose a writable output path") from e


def _closed(handle: tuple[int, str]) -> str:
    """The path of a `tempfile.mkstemp` result, its descriptor closed."""
    fd, name = handle
    os.close(fd)
    return name


def _umask_mode(mode: int) -> int:
    """`mode` as the current umask trims it: what open() (0o666) or os.makedirs (0o777) would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
