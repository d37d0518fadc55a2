"""Hostile output paths for every command that writes: nothing is written through a symbolic link, an input is
never overwritten, an existing file is never replaced without --overwrite, a folder only holds what deepcuts wrote
there (its manifest) and --overwrite removes only that, and a second writer of the same output is refused.

The cases run the real CLI on the tiny model of tests/conftest.py against private copies of the inputs, and
compare every input byte for byte afterwards; refusals happen before any model loads, so they are quick. A new
command that writes files joins the suite with one `COMMANDS` entry.
"""
from __future__ import annotations

import hashlib
import json
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
from deepcuts_fast.locks import output_lock
from deepcuts_fast.outputs import MANIFEST, check_file, read_manifest, write_file
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError

# The portable pass (make test-portable) skips this file: output paths, symbolic links, manifests and locks
pytestmark = pytest.mark.isa_independent


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
    folder: bool  # --out is a folder (prune, bench and make-data write it, run resumes it)
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
    "export": Command(lambda i, out: ["export", "--model", str(i.model), "--out", out], False, True),
    "make-data": Command(lambda i, out: ["make-data", "imbalanced", out, "--train", "20", "--validation", "10",
                                         "--test", "10"], True, True),
    "deploy": Command(lambda i, out: ["deploy", "--model", str(i.model), "--data", str(i.data), "--runtime", "torch",
                                      "--batch-size", "4", "--max-length", "16", "--out", out], True, True),
}


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


# --- nothing is written through a symbolic link ------------------------------------------------------------------

def victim(tmp_path: Path, folder: bool) -> Path:
    """A file (or a folder holding one) that belongs to somebody else, for a link to point at."""
    if folder:
        (tmp_path / "theirs").mkdir()
        (tmp_path / "theirs" / "config.json").write_text("precious")
        (tmp_path / "theirs" / "deepcuts_plan.json").write_text("{}")
        return tmp_path / "theirs"
    (tmp_path / "theirs.txt").write_text("precious")
    return tmp_path / "theirs.txt"


@pytest.mark.parametrize("name", COMMANDS)
def test_an_output_that_is_a_link_is_refused(name, inputs, tmp_path, capsys):
    """The reported bug: score / prune / export --overwrite wrote THROUGH a link into the file or folder it named."""
    target = victim(tmp_path, COMMANDS[name].folder)
    link = tmp_path / ("out.onnx" if name == "export" else "out")
    link.symlink_to(target)
    before = snapshot(tmp_path)
    refused(capsys, with_overwrite(name, COMMANDS[name].argv(inputs, str(link))), "is a symbolic link",
            str(target.name))
    assert snapshot(tmp_path) == before


def test_a_link_inside_an_earlier_output_is_replaced_not_followed(inputs, tmp_path, capsys):
    """bench --overwrite into its own earlier folder, where bench.json was swapped for a link to someone's file."""
    out = tmp_path / "bench"
    argv = COMMANDS["bench"].argv(inputs, str(out)) + ["--quiet"]
    assert run(argv, capsys)[0] == 0
    target = victim(tmp_path, folder=False)
    (out / "bench.json").unlink()
    (out / "bench.json").symlink_to(target)
    assert run(argv + ["--overwrite"], capsys)[0] == 0
    assert target.read_text() == "precious" and not (out / "bench.json").is_symlink()
    assert json.loads((out / "bench.json").read_text())["rows"]


def test_a_path_through_a_linked_folder_is_judged_where_it_lands(inputs, tmp_path, capsys):
    """A link among the parent folders is followed to decide: into the model folder is into an input."""
    into_model = tmp_path / "linked"
    into_model.symlink_to(inputs.model)
    before = snapshot(inputs.root)
    for name in set(COMMANDS) - {"make-data"}:  # the one command without inputs
        out = into_model / ("out.onnx" if name == "export" else "out")
        refused(capsys, with_overwrite(name, COMMANDS[name].argv(inputs, str(out))), "--model folder")
    assert snapshot(inputs.root) == before


# --- an input is never overwritten -----------------------------------------------------------------------------

HOSTILE_TARGETS = {  # command: its (--out relative to the inputs' folder, what the error names)
    "score": [("model/model.safetensors", "--model folder"), ("data.csv", "--data input"), ("model", "is a folder")],
    "prune": [("model", "--model input"), ("model/slim", "--model folder"), (".", "contains the --model input"),
              ("scores.safetensors", "is a file")],
    "bench": [("model", "--model input")],
    "run": [("model", "--model input"), ("model/run", "--model folder"), (".", "contains the --model input")],
    "export": [("model/x.onnx", "--model folder")],
    "deploy": [("model", "--model input"), ("model/deployed", "--model folder"), (".", "contains the --model input")],
}


@pytest.mark.parametrize("name,target,message", [(name, *case) for name, cases in HOSTILE_TARGETS.items()
                                                 for case in cases])
def test_an_input_is_never_overwritten(name, target, message, inputs, capsys):
    before = snapshot(inputs.root)
    argv = COMMANDS[name].argv(inputs, str(inputs.root / target))
    refused(capsys, with_overwrite(name, argv), message)
    assert snapshot(inputs.root) == before


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


@pytest.mark.filterwarnings("ignore::UserWarning")  # data-free scores, a budget kept whole units miss
def test_the_api_never_saves_over_the_folder_a_model_came_from(model_dir, tmp_path):
    """The reported bug: from_pretrained(D), prune, save_pretrained(slim, D, overwrite=True) replaced the only
    copy of the dense weights (D was an earlier deepcuts output, so its manifest alone would allow it)."""
    dense = tmp_path / "dense"
    dc.save_pretrained(dc.from_pretrained(model_dir), dense)
    before = snapshot(tmp_path)
    model = dc.from_pretrained(dense)
    slim = dc.prune(model, dc.plan(model, dc.score(model, None, "magnitude", granularity="unit", progress=False),
                                   keep_flops=0.5, seq_len=16))
    with pytest.raises(DeepCutsError, match="is the model source input .* itself"):
        dc.save_pretrained(slim, dense, overwrite=True)
    with pytest.raises(DeepCutsError, match="is inside the model source folder"):
        dc.export(slim, dense / "model.onnx", overwrite=True)
    assert snapshot(tmp_path) == before


# --- existing outputs: replaced only when asked, and only what deepcuts wrote ------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_a_folder_we_did_not_write_is_never_written(name, inputs, tmp_path, capsys):
    """A non-empty folder without deepcuts' manifest is refused, --overwrite or not, whatever it looks like."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "thesis.tex").write_text("years of work")
    for entry in ("config.json", "deepcuts_plan.json", "bench.json", "results.json", "train.csv"):
        (out / entry).write_text("{}")  # names an earlier output of each command would have
    if name in ("score", "export"):
        out = out / ("s.safetensors" if name == "score" else "x.onnx")
        (out.parent / "x.onnx").write_text("old")
        if name == "export":  # the side folder x.onnx.d is not deepcuts'
            (out.parent / "x.onnx.d").mkdir()
            (out.parent / "x.onnx.d" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    words = {"score": (), "export": ("did not write",)}.get(name, ("did not write", "left alone"))
    if name == "score":  # a file: it is theirs, and --overwrite would replace it; without it, refused
        (out).write_text("mine")
        before = snapshot(tmp_path)
        refused(capsys, COMMANDS[name].argv(inputs, str(out)), "already exists", "--overwrite")
    else:
        refused(capsys, with_overwrite(name, COMMANDS[name].argv(inputs, str(out))), *words)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["prune", "bench", "export", "make-data", "deploy"])
def test_overwrite_replaces_only_what_deepcuts_wrote(name, inputs, tmp_path, capsys):
    """--overwrite replaces the earlier output's own files; the user's files beside them stay; without
    --overwrite the earlier output is refused."""
    out = tmp_path / ("out.onnx" if name == "export" else "out")
    folder = out.with_name(out.name + ".d") if name == "export" else out
    argv = COMMANDS[name].argv(inputs, str(out)) + ["--quiet"]
    assert run(argv, capsys)[0] == 0
    written = read_manifest(folder)["files"]
    (folder / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(capsys, argv, "already exists", "--overwrite")
    assert snapshot(tmp_path) == before
    assert run(argv + ["--overwrite"], capsys)[0] == 0
    assert (folder / "notes.txt").read_text() == "mine" and read_manifest(folder)["files"] == written
    assert sorted(p.name for p in folder.iterdir()) == sorted([*written, MANIFEST, "notes.txt"])
    assert not list(tmp_path.glob("**/*.lock")) and not list(tmp_path.glob(".*"))  # no lock or temporary left


def test_overwrite_never_drops_earlier_files_it_does_not_rewrite(tmp_path, capsys):
    """The reported bug: make-data --validation 0 --test 0 --overwrite deleted the earlier validation and test
    splits. An earlier file the new output would not write again is neither deleted nor left stale: refused."""
    out = tmp_path / "d2"
    assert run(COMMANDS["make-data"].argv(None, str(out)), capsys)[0] == 0
    before = snapshot(tmp_path)
    refused(capsys, ["make-data", "imbalanced", str(out), "--train", "20", "--validation", "0", "--test", "0",
                     "--overwrite"], "validation.csv", "test.csv", "does not write again")
    assert snapshot(tmp_path) == before


def test_overwrite_never_replaces_a_name_deepcuts_did_not_write(tmp_path):
    """An earlier model folder saved without a tokenizer, where the user then put their own tokenizer.json: a new
    save with a tokenizer would replace it, so it is refused, naming the file."""
    from conftest import tiny_model

    out = tmp_path / "slim"
    dc.save_pretrained(tiny_model("bert"), out)
    (out / "tokenizer.json").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(DeepCutsError, match="holds tokenizer.json, which deepcuts did not write"):
        dc.save_pretrained(tiny_model("bert"), out, tokenizer=dc.load_tokenizer("minilm"), overwrite=True)
    assert snapshot(tmp_path) == before


def test_the_api_replaces_an_existing_file_only_with_overwrite(model_dir, tmp_path):
    """The reported bug: dc.export replaced an existing file with no overwrite flag."""
    model = dc.from_pretrained(model_dir)
    out = tmp_path / "e8.onnx"
    out.write_text("old")
    with pytest.raises(DeepCutsError, match="already exists.*overwrite=True"):
        dc.export(model, out)
    scores = dc.score(model, None, "magnitude", granularity="unit", progress=False)
    with pytest.raises(DeepCutsError, match="already exists.*overwrite=True"):
        scores.save(out)
    assert out.read_text() == "old"
    dc.export(model, out, overwrite=True)
    assert out.read_bytes()[:8] != b"old\n"


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


def test_a_run_resumes_only_its_own_folder(inputs, tmp_path, capsys):
    """run reuses a folder marked as a run's, and refuses another command's output."""
    out = tmp_path / "out"
    assert run(COMMANDS["prune"].argv(inputs, str(out)) + ["--quiet"], capsys)[0] == 0
    before = snapshot(tmp_path)
    refused(capsys, COMMANDS["run"].argv(inputs, str(out)), "holds a deepcuts model output", "choose")
    assert snapshot(tmp_path) == before


# --- links, devices and fifos ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,message", [
    ("fifo", "is a fifo"),
    ("device", "is a device"),
    ("link to a device", "is a symbolic link"),
    ("dangling link", "is a symbolic link"),
    ("link loop", "is a symbolic link"),
    ("dangling link among the folders", "dangling symbolic link"),
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
    elif kind == "link loop":
        out.symlink_to(tmp_path / "loop")
        (tmp_path / "loop").symlink_to(out)
    else:
        (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
        out = tmp_path / "gone" / "out.safetensors"
    refused(capsys, with_overwrite("score", COMMANDS["score"].argv(inputs, str(out))), message)
    assert not (tmp_path / "nowhere").exists()
    if kind == "fifo":
        assert not out.is_file() and out.exists()


def test_writes_never_replace_a_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DeepCutsError, match="is a fifo"):
        with write_file(fifo, overwrite=True):
            pytest.fail("must refuse before writing")
    assert not fifo.is_file() and [p.name for p in tmp_path.iterdir()] == ["fifo"]


# --- one writer per output -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_a_concurrent_writer_of_the_same_output_is_refused(name, inputs, tmp_path, capsys):
    out = tmp_path / ("out.onnx" if name == "export" else "out")
    with output_lock(out) as lock:
        assert lock.read_text() == f"deepcuts output lock, pid {os.getpid()}\n"
        refused(capsys, COMMANDS[name].argv(inputs, str(out)), "another deepcuts process", f"pid {os.getpid()}")
    assert not lock.exists() and not out.exists()


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
        from deepcuts_fast.locks import output_lock
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


def test_check_file_names_the_output_and_the_input(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,label\n")
    with pytest.raises(DeepCutsError, match=r"--report .*is the --data input .* itself.*choose"):
        check_file(data, {"--data": data, "--model": "a-hub-name"}, overwrite=True, name="--report")
