"""Hostile output paths for every command that writes: an input is never overwritten, an existing file or folder
is never replaced without --overwrite (a folder only when an earlier run of the same command wrote it), symbolic
links are resolved before deciding, and a second writer of the same output is refused.

The cases run the real CLI on the tiny model of tests/conftest.py against private copies of the inputs, and
compare every input byte for byte afterwards; refusals happen before any model loads, so they are quick. A new
command that writes files joins the suite with one `COMMANDS` entry.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import deepcuts_fast as dc
from deepcuts_fast.atomic import atomic_path, check_output, output_lock
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError


@dataclass(frozen=True)
class Inputs:
    """Private copies of a command's inputs, all in one folder `root` (so a hostile case that slips through
    cannot break other tests)."""
    root: Path
    model: Path
    data: Path
    scores: Path


@dataclass(frozen=True)
class Command:
    """How to call a command that writes `--out`, and what kind of output it writes."""
    argv: Callable[[Inputs, str], list[str]]
    folder: bool  # --out is a folder (prune and run replace or resume it; bench writes its files into it)
    overwrite: bool  # it takes --overwrite


COMMANDS = {
    "score": Command(lambda i, out: ["score", "--model", str(i.model), "--data", str(i.data), "--criterion",
                                     "magnitude", "--batches", "1", "--batch-size", "4", "--out", out], False, True),
    "prune": Command(lambda i, out: ["prune", "--model", str(i.model), "--scores", str(i.scores), "--keep-flops",
                                     "0.5", "--seq-len", "16", "--out", out], True, True),
    "bench": Command(lambda i, out: ["bench", "--model", str(i.model), "--batch-sizes", "1", "--seq-lens", "8",
                                     "--repeats", "1", "--min-time", "0", "--warmup", "0", "--out", out], True, True),
    "run": Command(lambda i, out: ["run", "--quick", "--model", str(i.model), "--data", str(i.data), "--batch-size",
                                   "4", "--out", out], True, False),
}
# An earlier output of each command, which --overwrite (run: a rerun) may replace: (name, contents) pairs.
EARLIER = {"score": None, "prune": ["config.json", "deepcuts_plan.json"], "bench": ["bench.json"],
           "run": ["results.json"]}


@pytest.fixture(scope="module")
def unit_scores(model_dir, tmp_path_factory) -> Path:
    """Data-free unit scores of the tiny model, a valid --scores file for prune."""
    path = tmp_path_factory.mktemp("hostile") / "scores.safetensors"
    dc.score(dc.load_model(str(model_dir)), None, "magnitude", granularity="unit", progress=False).save(path)
    return path


@pytest.fixture
def inputs(model_dir, data_csv, unit_scores, tmp_path) -> Inputs:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copytree(model_dir, root / "model")
    shutil.copy(data_csv, root / "data.csv")
    shutil.copy(unit_scores, root / "scores.safetensors")
    return Inputs(root, root / "model", root / "data.csv", root / "scores.safetensors")


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `deepcuts ARGV` run in this process."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (links not followed) with a hash of its contents, to prove nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            key = str(p.relative_to(folder))
            if p.is_symlink():
                out[key] = "link:" + os.readlink(p)
            elif p.is_file():
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


def refused(capsys, argv: list[str], *words: str) -> str:
    """Run `argv`, which must fail with exit 2 and one error line that names what is wrong (`words`) and what
    to do; returns the line."""
    code, _, err = run(argv + ["--quiet"], capsys)
    assert code == 2, err
    assert err.startswith("deepcuts: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert any(hint in err for hint in ("choose", "give", "pass", "remove", "wait")), err  # what to do
    return err


def with_overwrite(name: str, argv: list[str]) -> list[str]:
    return argv + ["--overwrite"] if COMMANDS[name].overwrite else argv


# --- an input is never overwritten -----------------------------------------------------------------------------

HOSTILE_TARGETS = [  # (command, --out relative to the inputs' folder, what the error names)
    ("score", "model/model.safetensors", "--model folder"),
    ("score", "data.csv", "--data input"),
    ("score", "model", "is a folder"),
    ("prune", "model", "--model input"),
    ("prune", "model/slim", "--model folder"),
    ("prune", ".", "contains the --model input"),
    ("prune", "scores.safetensors", "is a file"),
    ("bench", "model", "--model folder"),
    ("run", "model", "--model input"),
    ("run", "model/run", "--model folder"),
    ("run", ".", "contains the --model input"),
]


@pytest.mark.parametrize("name,target,message", HOSTILE_TARGETS)
def test_an_input_is_never_overwritten(name, target, message, inputs, capsys):
    before = snapshot(inputs.root)
    argv = COMMANDS[name].argv(inputs, str(inputs.root / target))
    refused(capsys, with_overwrite(name, argv), message)
    assert snapshot(inputs.root) == before


@pytest.mark.parametrize("name", COMMANDS)
def test_symlinks_are_resolved_before_deciding(name, inputs, tmp_path, capsys):
    """A link to an input, or a path through a linked folder into an input, is that input."""
    before = snapshot(inputs.root)
    into_model = tmp_path / "linked"
    into_model.symlink_to(inputs.model)
    link = tmp_path / "link"
    link.symlink_to(inputs.model if COMMANDS[name].folder else inputs.data)
    for out in (link, into_model / "out"):
        refused(capsys, with_overwrite(name, COMMANDS[name].argv(inputs, str(out))), "input")
    assert snapshot(inputs.root) == before and into_model.is_symlink() and link.is_symlink()


def test_the_checkpoint_is_neither_the_output_nor_an_input(inputs, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    argv = COMMANDS["score"].argv(inputs, str(out))
    refused(capsys, argv + ["--checkpoint", str(out)], "--checkpoint", "is the --out file")
    link = tmp_path / "alias.safetensors"
    link.symlink_to(out)
    refused(capsys, argv + ["--checkpoint", str(link)], "is the --out file")
    before = snapshot(inputs.root)
    refused(capsys, argv + ["--checkpoint", str(inputs.data)], "--checkpoint", "--data input")
    assert snapshot(inputs.root) == before and not out.exists()


# --- an existing file or folder is never replaced without --overwrite -------------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_an_existing_output_is_not_replaced_without_overwrite(name, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    if COMMANDS[name].folder:
        out.mkdir()
        for entry in EARLIER[name] if name == "bench" else ["notes.txt"]:
            (out / entry).write_text("mine")
    else:
        out.write_text("mine")
    before = snapshot(tmp_path)
    words = ("already exists", "--overwrite") if COMMANDS[name].overwrite else ("left alone",)
    refused(capsys, COMMANDS[name].argv(inputs, str(out)), *words)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["prune", "run"])
def test_a_folder_we_did_not_write_is_never_deleted(name, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "thesis.tex").write_text("years of work")
    (out / "config.json").write_text("{}")  # looks a bit like a model folder, but prune wrote no plan there
    before = snapshot(tmp_path)
    refused(capsys, with_overwrite(name, COMMANDS[name].argv(inputs, str(out))), "does not look like", "left alone")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["prune", "run"])
@pytest.mark.parametrize("where", [".", "..", "/"])
def test_the_current_folder_its_parents_and_the_root_are_never_replaced(name, where, inputs, tmp_path, capsys,
                                                                        monkeypatch):
    """The reported bug: `prune --out . --overwrite` emptied the current folder before failing."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    refused(capsys, with_overwrite(name, COMMANDS[name].argv(inputs, where)),
            "filesystem root" if where == "/" else "current folder")
    assert snapshot(tmp_path) == before


@pytest.mark.filterwarnings("ignore::UserWarning")  # data-free scores, a budget kept whole units miss
def test_overwrite_replaces_only_earlier_outputs(inputs, tmp_path, capsys):
    """--overwrite works: score replaces a file, prune its own earlier folder, bench its files in a folder."""
    out = tmp_path / "s.safetensors"
    out.write_text("old")
    assert run(with_overwrite("score", COMMANDS["score"].argv(inputs, str(out))) + ["--quiet"], capsys)[0] == 0
    assert dc.Scores.load(out).criterion == "magnitude"
    slim = tmp_path / "slim"
    for _ in range(2):
        assert run(with_overwrite("prune", COMMANDS["prune"].argv(inputs, str(slim))) + ["--quiet"], capsys)[0] == 0
    assert dc.from_pretrained(slim) is not None
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text("old")
    (bench / "notes.txt").write_text("mine")
    assert run(with_overwrite("bench", COMMANDS["bench"].argv(inputs, str(bench))) + ["--quiet"], capsys)[0] == 0
    assert (bench / "bench.json").read_text() != "old" and (bench / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("**/*.lock"))  # every lock file is removed afterwards


# --- links, devices and fifos ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,message", [
    ("fifo", "is a fifo"),
    ("device", "is a device"),
    ("link to a device", "is a device"),
    ("dangling link", "dangling symbolic link"),
    ("link loop", "symbolic link loop"),
])
def test_devices_fifos_and_broken_links_are_refused(kind, message, inputs, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "device":
        out = Path(os.devnull)
    elif kind == "link to a device":
        out.symlink_to(os.devnull)
    elif kind == "dangling link":
        out.symlink_to(tmp_path / "nowhere" / "x.safetensors")
    else:
        out.symlink_to(tmp_path / "loop")
        (tmp_path / "loop").symlink_to(out)
    refused(capsys, with_overwrite("score", COMMANDS["score"].argv(inputs, str(out))), message)
    assert not (tmp_path / "nowhere").exists()
    if kind == "fifo":
        assert not out.is_file() and out.exists()


def test_atomic_writes_never_replace_a_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DeepCutsError, match="is a fifo"):
        with atomic_path(fifo):
            pytest.fail("must refuse before writing")
    assert not fifo.is_file() and [p.name for p in tmp_path.iterdir()] == ["fifo"]


def test_save_pretrained_replaces_only_a_model_folder(tmp_path):
    from conftest import tiny_model

    model = tiny_model("bert")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DeepCutsError, match="left alone"):
        dc.save_pretrained(model, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    dc.save_pretrained(model, tmp_path / "slim")
    dc.save_pretrained(model, tmp_path / "slim", overwrite=True)  # its own earlier output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "slim"]


# --- one writer per output -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_a_concurrent_writer_of_the_same_output_is_refused(name, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    locked = out / "bench.json" if name == "bench" else out
    with output_lock(locked) as lock:
        assert lock.read_text() == f"deepcuts output lock, pid {os.getpid()}\n"
        refused(capsys, COMMANDS[name].argv(inputs, str(out)), "another deepcuts process", f"pid {os.getpid()}")
    assert not lock.exists() and not (out / "bench.json" if name == "bench" else out).exists()


def test_a_file_named_like_the_lock_is_left_alone(inputs, tmp_path, capsys):
    out = tmp_path / "poetry"
    (tmp_path / "poetry.lock").write_text("[[package]]\n")
    refused(capsys, COMMANDS["prune"].argv(inputs, str(out)), "poetry.lock", "not a deepcuts lock file")
    assert (tmp_path / "poetry.lock").read_text() == "[[package]]\n" and not out.exists()


def test_the_lock_holds_across_processes(inputs, tmp_path, capsys):
    """Two `deepcuts score` runs to one --out: the second fails at once, naming the first's pid."""
    out = tmp_path / "s.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from deepcuts_fast.atomic import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(capsys, COMMANDS["score"].argv(inputs, str(out)), f"pid {holder.pid}", str(out))
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not Path(f"{out}.lock").exists()
    assert run(COMMANDS["score"].argv(inputs, str(out)) + ["--quiet"], capsys)[0] == 0


# --- other hostile values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["inf", "1e400", "nan", "-inf", "1e20", "2000TiB"])
def test_absurd_memory_caps_are_clear_errors(size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--data", "x", "--out", "y", f"--max-memory={size}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "memory cap must be a finite size" in err and "Traceback" not in err


def test_check_output_names_the_flag_and_the_input(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,label\n")
    with pytest.raises(DeepCutsError, match=r"--report .*is the --data input .* itself.*choose"):
        check_output(data, {"--data": data, "--model": "a-hub-name"}, overwrite=True, name="--report")
