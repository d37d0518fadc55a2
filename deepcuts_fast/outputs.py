"""The one writer of every output, files and folders, for the command line and the Python API alike.

Rules it enforces, so no caller has to remember them:
- an output path whose last part is a symbolic link is refused (never written through, never replaced):
  the link's target may be anything, a user's file or another model, and writing there is how a
  `--overwrite` run once destroyed files it had never been pointed at;
- an output is never one of the inputs being read, never inside an input folder, never (a folder) around one;
- a file is written under a temporary name beside it and renamed into place, so no reader sees half of it and
  a failure leaves nothing behind;
- a folder this tool writes carries `MANIFEST`, the names it wrote there. `overwrite` removes only those
  names; the user's own files beside them stay. A non-empty folder without a manifest was not written by
  this tool and is never written into, and a name the new output would write over that is not ours, or an
  earlier output's name the new one would not write again (it would go stale or be lost), is refused.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .errors import DeepCutsError

MANIFEST = "deepcuts_manifest.json"
Inputs = Mapping[str, "str | os.PathLike | None"]  # role -> path (None and non-paths, e.g. hub names, are skipped)


# --- files -----------------------------------------------------------------------------------------------------

def check_file(path: str | os.PathLike, inputs: Inputs | None = None, *, overwrite: bool = False,
               name: str = "output", flag: str = "overwrite=True") -> Path:
    """Refuse, before any costly work, a file output whose writing would destroy something: a symbolic link, a
    device or fifo, a folder, an input (or a file inside an input folder), an existing file without
    `overwrite`, an unwritable place. Returns where the file will be: its folder resolved, its name kept.
    `name` and `flag` are the output's and the overwrite switch's names in messages."""
    given = Path(path)
    target = _place(given, name)
    _check_no_link(given, name)
    _check_not_special(given, name)
    if os.path.isdir(target):
        raise DeepCutsError(f"{name} {given} is a folder; give a file name")
    for role, source in (inputs or {}).items():
        _check_apart(given, target, role, source, name, folder=False)
    if os.path.lexists(target) and not overwrite:
        raise DeepCutsError(f"{name} {given} already exists; choose a new path or pass {flag} to replace it")
    _check_writable(target.parent, given)
    return target


@contextlib.contextmanager
def write_file(path: str | os.PathLike, *, overwrite: bool = False, inputs: Inputs | None = None,
               name: str = "output", flag: str = "overwrite=True") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is renamed onto `path` (which `check_file`
    allows), on failure removed. The rename replaces a directory entry, never what a link points to."""
    target = check_file(path, inputs, overwrite=overwrite, name=name, flag=flag)
    tmp = _temporary(target, lambda parent: _closed(tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=parent)))
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes 0600
        _check_no_link(target, name)  # again: a link may have appeared meanwhile; rename would replace it, but say so
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False, name: str = "output") -> Path:
    """Write `text` to the file `path` (see `write_file`)."""
    with write_file(path, overwrite=overwrite, name=name) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# --- folders ---------------------------------------------------------------------------------------------------

def check_folder(path: str | os.PathLike, inputs: Inputs | None = None, *, overwrite: bool = False,
                 kind: str | None = None, name: str = "output", flag: str = "overwrite=True") -> Path:
    """Refuse, before any costly work, a folder output whose writing would destroy something: a symbolic link,
    the filesystem root, the current folder or one above it, a file, an input (inside one or around one), a
    non-empty folder this tool did not write (no manifest), an earlier output without `overwrite`, or (`kind`)
    an earlier output of another kind. Returns the folder with its parents resolved."""
    given = Path(path)
    target = _place(given, name)
    _check_no_link(given, name)
    _check_not_special(given, name)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise DeepCutsError(f"{name} {given} is a file; give a folder")
    _check_folder_place(given, target, name)
    for role, source in (inputs or {}).items():
        _check_apart(given, target, role, source, name, folder=True)
    if _has_entries(target):
        manifest = read_manifest(target)
        if manifest is None:
            raise DeepCutsError(f"{name} {given} is a folder that deepcuts did not write (it is not empty and has no "
                                f"{MANIFEST}), so it is left alone; choose a new folder or empty it yourself")
        if kind is not None and manifest.get("kind") != kind:
            raise DeepCutsError(f"{name} {given} holds a deepcuts {manifest.get('kind')} output, not a {kind} one, so "
                                "it is left alone; choose another folder")
        if not overwrite:
            raise DeepCutsError(f"{name} {given} already exists; choose a new folder or pass {flag} to replace "
                                "what deepcuts wrote there")
    _check_writable(target if target.exists() else target.parent, given)
    return target


@contextlib.contextmanager
def write_folder(path: str | os.PathLike, *, kind: str, overwrite: bool = False, inputs: Inputs | None = None,
                 name: str = "output", flag: str = "overwrite=True",
                 keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a new empty folder beside `path` to fill; on success its entries move into `path` with a manifest
    (replacing only an earlier output's own entries, see `check_folder`), on failure it is removed, so `path`
    never holds a partial output. A folder at `path` for which `keep_existing` says yes once the new one is
    ready (a complete cache entry another process published meanwhile) is kept and the new one dropped."""
    target = check_folder(path, inputs, overwrite=overwrite, kind=kind, name=name, flag=flag)
    tmp = _temporary(target, lambda parent: tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700
        yield tmp
        if keep_existing is not None and target.is_dir() and keep_existing(target):
            return
        check_folder(path, inputs, overwrite=overwrite, kind=kind, name=name, flag=flag)  # again, just before
        _publish(tmp, target, kind, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


@contextlib.contextmanager
def open_folder(path: str | os.PathLike, *, kind: str, inputs: Inputs | None = None,
                name: str = "--out") -> Iterator[Path]:
    """Create (or reopen, to resume) a folder that a long job fills file by file with `write_file` and
    `write_folder`, marked with a manifest of `kind` so that a rerun knows it is its own. A folder this call
    made is removed again when the block fails before writing anything into it."""
    target = check_folder(path, inputs, overwrite=True, kind=kind, name=name)
    made = read_manifest(target) is None
    if made:
        target.mkdir(parents=True, exist_ok=True)
        _write_manifest(target, kind, [])
    try:
        yield target
    except BaseException:
        if made and os.listdir(target) == [MANIFEST]:
            shutil.rmtree(target, ignore_errors=True)
        raise


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a folder this tool wrote, or None (no manifest, or not one of ours)."""
    path = Path(folder) / MANIFEST
    if os.path.islink(path) or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("written_by") != "deepcuts-fast" \
            or not isinstance(manifest.get("files"), list):
        return None
    return manifest


def _publish(tmp: Path, target: Path, kind: str, name: str) -> None:
    """Move the finished entries of `tmp` into `target`: a new folder by one rename, else entry by entry after
    moving the earlier output's own entries aside (and back, should a move fail)."""
    new = sorted(e for e in os.listdir(tmp) if e != MANIFEST)
    if not target.exists():
        _write_manifest(tmp, kind, new)
        try:
            os.rename(tmp, target)
            return
        except OSError as e:
            if not target.is_dir():
                raise DeepCutsError(f"cannot write {target}: {e.strerror or e}; choose another folder") from e
            (tmp / MANIFEST).unlink()  # another process made it meanwhile: merge into it as below
    ours = set((read_manifest(target) or {"files": []})["files"])
    present = set(os.listdir(target)) - {MANIFEST}
    foreign = sorted((present - ours) & set(new))
    if foreign:
        raise DeepCutsError(f"{name} {target} holds {', '.join(foreign)}, which deepcuts did not write there, so it "
                            "is left alone; move those files away or choose a new folder")
    stale = sorted((ours & present) - set(new))
    if stale:
        raise DeepCutsError(f"{name} {target} holds {', '.join(stale)} from an earlier output that this one does not "
                            "write again; it would be left beside the new files or lost, so nothing was changed: "
                            "remove them yourself or choose a new folder")
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    moved: list[tuple[Path, Path]] = []
    try:
        for entry in sorted(ours & present):
            _move(target / entry, aside / entry, moved)
        for entry in new:
            _move(tmp / entry, target / entry, moved)
        _write_manifest(target, kind, new)
    except BaseException:
        for source, dest in reversed(moved):
            os.rename(dest, source)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _move(source: Path, dest: Path, moved: list[tuple[Path, Path]]) -> None:
    os.rename(source, dest)
    moved.append((source, dest))


def _write_manifest(folder: Path, kind: str, files: list[str]) -> None:
    """Record in `folder` that deepcuts wrote it, as a `kind` output, and which of its entries are ours."""
    from ._version import __version__

    text = json.dumps({"written_by": "deepcuts-fast", "version": __version__, "kind": kind, "files": files},
                      indent=1) + "\n"
    with write_file(folder / MANIFEST, overwrite=True, name="manifest") as tmp:
        tmp.write_text(text, encoding="utf-8")


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


# --- checks ----------------------------------------------------------------------------------------------------

def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same file or folder once symbolic links are resolved (or are hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _place(given: Path, name: str) -> Path:
    """`given` with its parent folders resolved (a dangling link or a loop among them is a clear error) and its
    own name kept, so a link there is seen, not followed."""
    parent = given.parent
    try:
        os.stat(parent)
    except FileNotFoundError:
        link = next((p for p in (parent, *parent.parents) if os.path.islink(p) and not os.path.exists(p)), None)
        if link is not None:
            raise DeepCutsError(f"{name} {given}: {link} is a dangling symbolic link (to {os.readlink(link)}); "
                                "remove the link or choose another output path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DeepCutsError(f"{name} {given} goes through a symbolic link loop; remove the loop or choose "
                                "another output path") from None
        if e.errno != errno.ENOTDIR:
            raise DeepCutsError(f"cannot use {name} {given}: {e.strerror or e}; choose another output path") from e
    if given.name in ("", ".", ".."):
        return Path(os.path.realpath(given))
    return Path(os.path.realpath(parent)) / given.name


def _check_no_link(given: Path, name: str) -> None:
    """Refuse a symbolic link as the output itself: whatever it points to is not ours to write."""
    if os.path.islink(given):
        raise DeepCutsError(f"{name} {given} is a symbolic link (to {os.readlink(given)}); deepcuts never writes "
                            "through a link: remove the link or choose another path")


def _check_not_special(given: Path, name: str) -> None:
    """Refuse an existing device, fifo or socket as an output: replacing it breaks the system or hangs."""
    try:
        mode = os.lstat(given).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a fifo" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise DeepCutsError(f"{name} {given} is {kind}, not a regular file or folder; give the path of a new file "
                            "or folder")


def _check_apart(given: Path, target: Path, role: str, source: str | os.PathLike | None, name: str,
                 folder: bool) -> None:
    """Refuse an output that is the input `source` (of `role`), lies inside it, or (a folder) holds it."""
    if source is None or not isinstance(source, (str, os.PathLike)) or not os.path.lexists(source):
        return  # not a local path: a hub name, an alias, embedded data
    real = Path(os.path.realpath(source))
    if target == real or (os.path.exists(target) and same_path(target, source)):
        raise DeepCutsError(f"{name} {given} is the {role} input {source} itself; writing it would destroy an "
                            "input: choose another output path")
    if real in target.parents and real.is_dir():
        raise DeepCutsError(f"{name} {given} is inside the {role} folder {source}; writing there would change an "
                            "input: choose an output path outside it")
    if folder and target in real.parents:
        raise DeepCutsError(f"{name} {given} contains the {role} input {source}; replacing it would delete an "
                            "input: choose a folder that does not hold any input")


def _check_folder_place(given: Path, target: Path, name: str) -> None:
    """Refuse the filesystem root, the current folder and the folders above it as a folder to write."""
    if target == Path(target.anchor):
        raise DeepCutsError(f"{name} {given} is a filesystem root; give a new folder for the output")
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the current folder was removed: there is nothing to protect
        return
    if target == cwd or target in cwd.parents:
        raise DeepCutsError(f"{name} {given} is the current folder or one above it; give a new folder, e.g. ./out")


def _check_writable(folder: Path, given: Path) -> None:
    """Fail before any costly work when no writable folder holds (or can hold) the output."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise DeepCutsError(f"cannot write to {given}: {probe} is not a writable folder; choose another output path")


def _temporary(target: Path, make: Callable[[Path], str]) -> Path:
    """A new temporary file or folder, `make(folder)`, in `target`'s folder (created when missing)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(make(target.parent))
    except OSError as e:
        raise DeepCutsError(f"cannot write {target}: {e.strerror or e}; choose a writable output path") from e


def _closed(handle: tuple[int, str]) -> str:
    """The path of a `tempfile.mkstemp` result, its descriptor closed."""
    fd, path = handle
    os.close(fd)
    return path


def _umask_mode(mode: int) -> int:
    """`mode` as the current umask trims it: what open() (0o666) or os.makedirs (0o777) would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
