"""Hardening: only safetensors are ever read (no pickle), CLI failures end in one line with no
traceback (unless --debug), and no partial output survives a failure or Ctrl-C."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast import cli
from deepcuts_fast.errors import DeepCutsError

# The portable pass (make test-portable) skips this file: what is read (safetensors only), one-line CLI failures,
# no partial outputs, the benchmark scripts' --help
pytestmark = pytest.mark.isa_independent

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = re.compile(r"\btorch\.load\(|\bimport pickle|\bpickle\.|\bcloudpickle|\bdill\b|\bjoblib\b|allow_pickle"
                    r"|use_safetensors\s*=\s*False|safe_serialization\s*=\s*False|_object_list\(|_object\(")


def test_no_pickle_loading_anywhere_in_the_package():
    offenders = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                 for path in sorted((ROOT / "deepcuts_fast").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1)
                 if UNSAFE.search(line) and not line.lstrip().startswith("#")]
    assert not offenders, "pickle-based loading found:\n" + "\n".join(offenders)


class _Bomb:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_files_are_refused_and_never_unpickled(model_dir, tmp_path):  # noqa: F811
    import shutil

    marker = tmp_path / "unpickled"
    folder = tmp_path / "pickled_model"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"bomb": _Bomb(marker)}, folder / "pytorch_model.bin")
    fake = tmp_path / "scores.safetensors"
    torch.save(_Bomb(marker), fake)
    for load in (lambda: dc.load_model(str(folder)), lambda: dc.from_pretrained(folder), lambda: dc.Scores.load(fake),
                 lambda: dc.score_run(dc.load_model(str(model_dir)), [{"input_ids": torch.ones(1, 3, dtype=torch.long),
                                                                       "labels": torch.zeros(1, dtype=torch.long)}],
                                      "gradient", checkpoint=fake, progress=False)):
        with pytest.raises(DeepCutsError):
            load()
    assert not marker.exists()


def score_argv(model_dir, data_csv, out):
    return ["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", "gradient", "--batches", "2",
            "--batch-size", "4", "--quiet", "--out", str(out)]


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(model_dir, data_csv, tmp_path,  # noqa: F811
                                                                         monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure\nwith a second line")

    monkeypatch.setattr("deepcuts_fast.scoring.runner.score_many", broken)
    out = tmp_path / "s.safetensors"
    assert cli.main(score_argv(model_dir, data_csv, out)) == 1
    err = capsys.readouterr().err
    assert err == "deepcuts: error: RuntimeError: simulated failure (rerun with --debug for the traceback)\n"
    with pytest.raises(RuntimeError, match="simulated failure"):
        cli.main(["--debug", *score_argv(model_dir, data_csv, out)])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_ctrl_c_or_a_failure_while_writing_leaves_no_partial_file(model_dir, data_csv, tmp_path,  # noqa: F811
                                                                  monkeypatch, capsys, interrupt):
    import safetensors.torch

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise interrupt(28, "No space left on device") if interrupt is OSError else interrupt()

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    out = tmp_path / "s.safetensors"
    code = cli.main(score_argv(model_dir, data_csv, out))
    assert code == (130 if interrupt is KeyboardInterrupt else 1)
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_keeps_the_last_checkpoint_and_no_output(model_dir, data_csv, tmp_path, monkeypatch,  # noqa: F811
                                                        capsys):
    from deepcuts_fast.scoring import runner

    save, saves = runner.save_checkpoint, []

    def interrupted(*args, **kwargs):
        save(*args, **kwargs)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", interrupted)
    out = tmp_path / "s.safetensors"
    argv = score_argv(model_dir, data_csv, out) + ["--checkpoint-every", "1", "--json"]
    assert cli.main(argv) == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors.ckpt"]
    monkeypatch.setattr(runner, "save_checkpoint", save)
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    from deepcuts_fast.outputs import write_text

    old = os.umask(0o022)
    try:
        (tmp_path / "plain.txt").write_text("x")
        write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("atomic.txt") == mode("plain.txt") == 0o644


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_folders_get_the_permissions_of_makedirs(tmp_path, umask):
    """Slim model folders (and fine-tune cache entries, tests/test_train.py) must not be private 0700:
    shared stores and containers running as another user read them."""
    import os

    from conftest import tiny_model

    from deepcuts_fast.outputs import write_folder

    old = os.umask(umask)
    try:
        os.makedirs(tmp_path / "plain")
        with write_folder(tmp_path / "atomic", kind="test") as folder:
            (folder / "x.txt").write_text("x")
        dc.save_pretrained(tiny_model("bert"), tmp_path / "slim")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("atomic") == mode("slim") == mode("plain") == 0o777 & ~umask


def test_write_folder_replaces_safely_and_leaves_nothing_on_failure(tmp_path):
    from deepcuts_fast.outputs import MANIFEST, read_manifest, write_folder

    target = tmp_path / "out"
    with write_folder(target, kind="test") as folder:
        (folder / "old.txt").write_text("old")
    assert read_manifest(target)["files"] == ["old.txt"] and read_manifest(target)["kind"] == "test"
    with pytest.raises(DeepCutsError, match="already exists"):
        with write_folder(target, kind="test"):
            pytest.fail("the block must not run when the folder exists and overwrite is off")
    with pytest.raises(DeepCutsError, match="holds a deepcuts test output, not a other one"):
        with write_folder(target, kind="other", overwrite=True):
            pytest.fail("the block must not run over another kind of output")
    with pytest.raises(RuntimeError, match="disk full"):
        with write_folder(target, kind="test", overwrite=True) as folder:
            (folder / "old.txt").write_text("new")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "old.txt"] and (target / "old.txt").read_text() == "old"
    with write_folder(target, kind="test", overwrite=True) as folder:
        (folder / "old.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old.txt").read_text() == "new"


def test_write_folder_puts_everything_back_when_a_move_fails(tmp_path, monkeypatch):
    """A failure halfway through swapping an earlier output's files for the new ones restores the earlier ones."""
    from deepcuts_fast import outputs

    target = tmp_path / "out"
    with outputs.write_folder(target, kind="test") as folder:
        for name in ("a", "b"):
            (folder / name).write_text(f"old {name}")
    (target / "notes.txt").write_text("mine")
    real, calls = outputs._move, []

    def flaky(source, dest, moved):
        calls.append(source.name)
        if len(calls) == 4:  # both old entries moved aside, one new one in
            raise OSError("disk full")
        real(source, dest, moved)

    monkeypatch.setattr(outputs, "_move", flaky)
    with pytest.raises(OSError, match="disk full"):
        with outputs.write_folder(target, kind="test", overwrite=True) as folder:
            for name in ("a", "b"):
                (folder / name).write_text(f"new {name}")
    assert {p.name: p.read_text() for p in target.iterdir() if p.name != outputs.MANIFEST} == {
        "a": "old a", "b": "old b", "notes.txt": "mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("theirs_complete", [True, False])
def test_write_folder_keeps_a_complete_folder_published_meanwhile(tmp_path, theirs_complete):
    """The fine-tune cache's race: another process publishes the same entry while this one writes it. A
    folder that appeared meanwhile without deepcuts' manifest is not ours to replace."""
    from deepcuts_fast.outputs import write_folder

    target = tmp_path / "entry"
    complete = lambda folder: (folder / "done").is_file()  # noqa: E731
    context = contextlib.nullcontext() if theirs_complete else pytest.raises(DeepCutsError, match="did not write")
    with context:
        with write_folder(target, kind="test", overwrite=True, keep_existing=complete) as folder:
            (folder / "done").write_text("ours")
            target.mkdir()
            (target / ("done" if theirs_complete else "partial")).write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    assert sorted(p.name for p in target.iterdir()) == ["done" if theirs_complete else "partial"]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                                          if "__main__" in p.read_text()))
def test_benchmark_scripts_import_and_answer_help(script):
    """A renamed package module must not silently break a benchmark script nobody runs in CI."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
