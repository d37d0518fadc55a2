"""Atomic writes of files and folders, and the early checks that an output location is safe to write.

A file or folder is written under a temporary sibling name, then renamed onto its target, so no
reader ever sees a partial output and a failure leaves nothing behind. Both get the permissions
`open()` / `os.makedirs` would give under the umask, not the private 0600 / 0700 of `tempfile`.

`check_output` is the one guard every command runs on its outputs before any costly work: an output
is never an input, never inside an input folder or around one, never a device, and replaces an
existing file or folder only when asked to (a folder only when it looks like an earlier output of the
same command). `output_lock` keeps two processes from writing the same output at once.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .errors import DeepCutsError

try:
    import fcntl
except ImportError:  # not POSIX: outputs are still checked, only not locked
    fcntl = None

LOCK_TAG = b"deepcuts output lock, pid "  # how a lock file starts; a file at its path that does not is not ours
Inputs = Mapping[str, "str | os.PathLike | None"]  # flag -> path (None and non-paths, e.g. hub names, are skipped)


def check_output(path: str | os.PathLike, inputs: Inputs | None = None, *, overwrite: bool = False,
                 folder: bool = False, previous: Sequence[Sequence[str]] = (), name: str = "--out",
                 flag: str = "--overwrite") -> Path:
    """Refuse, before any costly work, an output location whose writing would destroy something; returns it
    with every symbolic link resolved.

    Refused: a dangling symbolic link or a link loop; an existing non-regular file (device, fifo, socket);
    a folder where a file is expected or the reverse; any of `inputs` itself, a location inside an input
    folder, or (`folder`) one containing an input; (`folder`) the filesystem root, the current folder or one
    above it; an existing output without `overwrite`, and (`folder`) an existing non-empty folder that holds
    none of the `previous` groups of names (an earlier output of the same command); an unwritable place.
    `name` and `flag` are the output's and the overwrite switch's names in messages.
    """
    target = Path(path)
    resolved = _resolve_output(target, name)
    _check_not_special(target, resolved, name)
    _check_kind(resolved, folder, f"{name} {target}")
    if folder:
        _check_folder_place(target, resolved, name)
    for role, source in (inputs or {}).items():
        _check_apart(target, resolved, role, source, name, folder)
    if os.path.lexists(target):
        _check_replaceable(target, resolved, overwrite, folder, previous, name, flag)
    check_writable(resolved, folder)
    return resolved


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


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same file or folder once symbolic links are resolved (or are hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_previous_output(folder: Path, previous: Sequence[Sequence[str]]) -> bool:
    """Whether `folder` is empty or holds every name of one of the `previous` groups (an earlier output of the
    command about to replace it), so that replacing it loses nothing it did not write."""
    try:
        with os.scandir(folder) as entries:
            if next(entries, None) is None:
                return True
    except OSError:
        return False
    return any(all(os.path.lexists(folder / n) for n in group) for group in previous)


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path` (a symbolic link
    is followed: the file it points to is replaced, the link kept)."""
    target = Path(os.path.realpath(path))
    _check_kind(target, folder=False)
    _check_not_special(Path(path), target, "output")
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
                  keep_existing: Callable[[Path], bool] | None = None,
                  replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a new empty folder next to `path`; when the block succeeds it is renamed onto `path`, and
    on any failure it is removed, so `path` never holds a partial folder.

    A folder already at `path` is refused up front unless `overwrite`, and also when `replaceable`
    returns False for it (e.g. it is not an earlier output of the same kind); when it is replaced, it is
    moved aside first and deleted only once the new one is in place. A folder at `path` for which
    `keep_existing` returns True once the new one is ready (e.g. a complete cache entry another
    process published meanwhile) is kept, and the new one discarded. A symbolic link at `path` is
    followed; the filesystem root, the current folder and the folders above it are always refused.
    """
    given = Path(path)
    target = Path(os.path.realpath(given))
    _check_kind(target, folder=True)
    _check_folder_place(given, target, "output")
    if target.exists() and not overwrite:
        raise DeepCutsError(f"{given} already exists; choose a new folder or pass overwrite=True")
    _check_may_replace(target, replaceable)
    tmp = _temporary(target, lambda parent: tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700
        yield tmp
        _publish(tmp, target, overwrite, keep_existing, replaceable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def _publish(tmp: Path, target: Path, overwrite: bool, keep_existing: Callable[[Path], bool] | None,
             replaceable: Callable[[Path], bool] | None = None) -> None:
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
    _check_may_replace(target, replaceable)  # again: something else may have appeared there meanwhile
    _replace_folder(tmp, target)


def _replace_folder(tmp: Path, target: Path) -> None:
    """Put `tmp` at `target`, moving the old folder aside first (and back if the rename fails)."""
    aside = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    try:
        os.rename(target, aside)
    except OSError as e:
        raise DeepCutsError(f"cannot replace {target}: {e.strerror or e}; choose a new folder") from e
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _check_may_replace(target: Path, replaceable: Callable[[Path], bool] | None) -> None:
    """Refuse to replace an existing folder at `target` for which `replaceable` says no."""
    if replaceable is not None and target.is_dir() and not replaceable(target):
        raise DeepCutsError(f"{target} exists and does not look like an earlier output of this kind, so it is "
                            "left alone; choose a new folder or remove it yourself")


def _check_kind(target: Path, folder: bool, label: str | None = None) -> None:
    """Refuse an existing folder where a file is to be written, or a file where a folder is."""
    if target.exists() and target.is_dir() != folder:
        want, found = ("folder", "file") if folder else ("file name", "folder")
        raise DeepCutsError(f"{label or f'output {target}'} is a {found}; give a {want}")


def _resolve_output(target: Path, name: str) -> Path:
    """`target` with every symbolic link resolved; a dangling link or a link loop is a clear error."""
    try:
        os.stat(target)
    except FileNotFoundError:
        link = next((p for p in (target, *target.parents) if os.path.islink(p) and not os.path.exists(p)), None)
        if link is not None:
            raise DeepCutsError(f"{name} {target}: {link} is a dangling symbolic link (to {os.readlink(link)}); "
                                "remove the link or choose another output path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DeepCutsError(f"{name} {target} goes through a symbolic link loop; remove the loop or choose "
                                "another output path") from None
        if e.errno != errno.ENOTDIR:
            raise DeepCutsError(f"cannot use {name} {target}: {e.strerror or e}; choose another output path") from e
    return Path(os.path.realpath(target))


def _check_not_special(target: Path, resolved: Path, name: str) -> None:
    """Refuse an existing device, fifo or socket as an output: replacing it breaks the system or hangs."""
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a fifo" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        shown = target if resolved == target else f"{target} (-> {resolved})"
        raise DeepCutsError(f"{name} {shown} is {kind}, not a regular file or folder; give the path of a new "
                            "file or folder")


def _check_apart(target: Path, resolved: Path, role: str, source: str | os.PathLike | None, name: str,
                 folder: bool) -> None:
    """Refuse an output that is the input `source` (of flag `role`), lies inside it, or (a folder) holds it."""
    if source is None or not os.path.lexists(source):
        return  # not a local path: a hub name, an alias, embedded data
    real = Path(os.path.realpath(source))
    if resolved == real or same_path(resolved, source):
        raise DeepCutsError(f"{name} {target} is the {role} input {source} itself; writing it would destroy an "
                            "input: choose another output path")
    if real in resolved.parents and real.is_dir():
        raise DeepCutsError(f"{name} {target} is inside the {role} folder {source}; writing there would change an "
                            "input: choose an output path outside it")
    if folder and resolved in real.parents:
        raise DeepCutsError(f"{name} {target} contains the {role} input {source}; replacing it would delete an "
                            "input: choose a folder that does not hold any input")


def _check_folder_place(target: Path, resolved: Path, name: str) -> None:
    """Refuse the filesystem root, the current folder and the folders above it as a folder to replace."""
    if resolved == Path(resolved.anchor):
        raise DeepCutsError(f"{name} {target} is a filesystem root; give a new folder for the output")
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the current folder was removed: there is nothing to protect
        return
    if resolved == cwd or resolved in cwd.parents:
        raise DeepCutsError(f"{name} {target} is the current folder or one above it; replacing it would delete "
                            "what you are working in: give a new folder, e.g. ./out")


def _check_replaceable(target: Path, resolved: Path, overwrite: bool, folder: bool,
                       previous: Sequence[Sequence[str]], name: str, flag: str) -> None:
    """Refuse to replace an existing output without `overwrite`, or a folder that is no earlier output."""
    if not overwrite:
        raise DeepCutsError(f"{name} {target} already exists; choose a new path or pass {flag} to replace it")
    if folder and not is_previous_output(resolved, previous):
        looks = " or ".join(" + ".join(group) for group in previous) or "nothing"
        raise DeepCutsError(f"{name} {target} exists and does not look like an earlier output of this command "
                            f"(it is not empty and has no {looks}), so it is left alone: choose a new folder or "
                            "remove it yourself")


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
