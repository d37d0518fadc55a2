"""`output_lock`: one writer per output path, so two processes never write the same output at once.

The lock is a `<path>.lock` file held with `flock` that records the holder's process id, so the second writer
fails at once naming the first; a file of the user's that happens to have the lock's name is left alone.
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import DeepCutsError

try:
    import fcntl
except ImportError:  # not POSIX: outputs are still checked, only not locked
    fcntl = None

LOCK_TAG = b"deepcuts output lock, pid "  # how a lock file starts; a file at its path that does not is not ours


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on `<path>.lock` (recording this process's id) while `path` is written, so a
    second process writing the same output fails at once instead of silently replacing the first one's
    result; the lock file is removed afterwards. Yields the lock file's path."""
    target = Path(os.path.realpath(path))
    if not target.name:
        raise DeepCutsError(f"cannot lock {path}: it is a filesystem root; give a file or folder below it")
    lock = target.with_name(target.name + ".lock")
    if fcntl is None:
        yield lock
        return
    fd = _acquire(lock, target)
    try:
        yield lock
    finally:
        if _still_ours(fd, lock):
            lock.unlink(missing_ok=True)  # while still locked, so no other process holds a lock on it
        os.close(fd)



def _acquire(lock: Path, target: Path) -> int:
    """A descriptor of `lock`, exclusively locked and holding this process's id; another holder is an error."""
    while True:
        fd = _open_lock(lock, target)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DeepCutsError(f"another deepcuts process{holder} is writing {target} (it holds {lock}); wait for "
                                "it to finish or choose another output path") from None
        if _still_ours(fd, lock):
            _claim(fd, lock)
            return fd
        os.close(fd)  # its holder removed it between our open and lock: lock the new one


def _claim(fd: int, lock: Path) -> None:
    """Write this process's id into the locked file `fd`, unless it holds something else (a file of the user's
    that happens to have the lock's name), which is left as it is."""
    content = os.pread(fd, len(LOCK_TAG), 0)
    if content and content != LOCK_TAG:
        os.close(fd)
        raise DeepCutsError(f"{lock} exists and is not a deepcuts lock file, so it is left alone; rename it or "
                            "choose another output path")
    os.ftruncate(fd, 0)
    os.write(fd, LOCK_TAG + f"{os.getpid()}\n".encode())


def _open_lock(lock: Path, target: Path) -> int:
    """Open (create) the lock file `lock` of `target`, refusing a symbolic link or anything but a regular file."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(lock) and not stat.S_ISREG(os.lstat(lock).st_mode):
            raise DeepCutsError(f"lock file {lock} exists and is not a regular file; remove it or choose another "
                                "output path")
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise DeepCutsError(f"cannot write {target}: its lock file {lock} cannot be created ({e.strerror or e}); "
                            "choose a writable output path") from e


def _still_ours(fd: int, lock: Path) -> bool:
    """Whether the open lock file `fd` is still the file at `lock` (not removed or replaced meanwhile)."""
    try:
        mine, there = os.fstat(fd), os.lstat(lock)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    """' (pid N)' from the lock file a holder wrote its id into, or '' when unreadable."""
    try:
        pid = int(os.pread(fd, 64, 0).removeprefix(LOCK_TAG).decode().strip())
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})"
