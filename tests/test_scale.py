"""Scale-out scoring: torchrun shards, segments, resumable checkpoints, early stopping, memory cap."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_batches, tiny_model
from dist_worker import criteria

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.scoring import ScoreOptions, runner

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def child_env() -> dict[str, str]:
    """Environment for child processes: they import this worktree's package and the test helpers."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def assert_scores_close(got: dc.Scores, want: dc.Scores, tol: float = 1e-5) -> None:
    assert set(got) == set(want) and got.criterion == want.criterion
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=tol, atol=tol * float(want[k].abs().max()))
    for kind in ("heads", "neurons"):
        for g, w in zip(got.unit_scores()[kind], want.unit_scores()[kind]):
            torch.testing.assert_close(g, w, rtol=tol, atol=tol * float(w.abs().max()) if w.numel() else 0)


def cli_score(model_dir, data_csv, out, *extra):
    return ["--model", str(model_dir), "--data", str(data_csv), "--criterion", "smooth-cam-cut", "--noise-samples",
            "3", "--batch-size", "4", "--batches", "5", "--quiet", "--json", "--out", str(out), *extra]


def test_two_gloo_processes_equal_one_process(model_dir, data_csv, tmp_path, capsys):  # noqa: F811
    dist_out, cli_out = tmp_path / "dist", tmp_path / "cli.safetensors"
    dist_out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "dist_worker.py"), str(dist_out), *cli_score(model_dir, data_csv, cli_out)]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from dist_worker import RUNS

    model, batches = tiny_model("bert"), tiny_batches(n_batches=5, seed=3)
    facts = json.loads((dist_out / "facts.json").read_text())
    for name, options in RUNS.items():
        assert facts[name] == {"world_size": 2, "batches_used": 5}
        options = {k: v for k, v in options.items() if k != "checkpoint_every"}
        names = criteria(options["granularity"])
        want = dc.score_many(model, batches, names, noise_samples=3, noise_std=0.05, progress=False, **options)
        for crit in names:
            got = dc.Scores.load(dist_out / f"{name}-{crit}.safetensors")
            assert_scores_close(got, want[crit])
            assert got.meta["batches"] == (5 if dc.CRITERIA[crit].needs.data else 0)
    # `deepcuts score` under torchrun: one JSON summary (rank 0), the same file as one process writes
    summary = json.loads(proc.stdout.strip())
    assert summary["processes"] == 2 and summary["batches"] == 5
    single = tmp_path / "single.safetensors"
    assert main(["score", *cli_score(model_dir, data_csv, single)]) == 0
    assert_scores_close(dc.Scores.load(cli_out), dc.Scores.load(single))


def test_noise_is_keyed_by_global_batch_index_and_shards_add_up(bert):
    batches = tiny_batches(n_batches=3, seed=int(torch.randint(0, 10_000, (1,))))
    kw = dict(noise_samples=2, noise_std=0.05, progress=False)
    full = dc.score(bert, batches, "smooth-cut", **kw)
    odd = dc.score(bert, batches[1::2], "smooth-cut", batch_indices=[1], **kw)
    even = dc.score(bert, batches[0::2], "smooth-cut", batch_indices=[0, 2], **kw)
    assert_scores_close(even + odd, full)
    assert (even + odd).meta["batches"] == 3
    shifted = dc.score(bert, batches[1:2], "smooth-cut", **kw)  # position 0 draws other noise than position 1
    assert not torch.allclose(next(iter(shifted.values())), next(iter(odd.values())), atol=0)  # scores are ~1e-9
    with pytest.raises(DeepCutsError, match="cannot add"):
        full + dc.score(bert, batches, "gradient", **kw)
    with pytest.raises(DeepCutsError, match="batch_indices has 1 entries for 3 batches"):
        dc.score(bert, batches, "gradient", batch_indices=[0], **kw)


@pytest.mark.parametrize("granularity", ["weight", "unit"])
def test_segments_give_the_one_pass_result(bert, granularity):
    batches = tiny_batches(n_batches=3, seed=int(torch.randint(0, 10_000, (1,))))
    kw = dict(granularity=granularity, noise_samples=2, noise_std=0.05, progress=False)
    names = criteria(granularity)
    want = dc.score_many(bert, batches, names, **kw)
    run = dc.score_run(bert, batches, names, checkpoint_every=2, **kw)
    assert run.batches_used == 3 and not run.stopped_early
    for crit in names:
        assert_scores_close(run.scores[crit], want[crit])


def test_a_killed_run_resumes_to_the_uninterrupted_result(model_dir, data_csv, tmp_path, capsys):  # noqa: F811
    out, ckpt = tmp_path / "scores.safetensors", tmp_path / "run.ckpt"
    argv = ["score", *cli_score(model_dir, data_csv, out, "--checkpoint-every", "1", "--checkpoint", str(ckpt))]
    # the child SIGKILLs itself right after its second checkpoint is written (a deterministic hard kill)
    child = ("import os, signal, sys\n"
             "from deepcuts_fast import cli\nfrom deepcuts_fast.scoring import runner\n"
             "save, saves = runner.save_checkpoint, []\n"
             "def killed(*a, **k):\n    save(*a, **k); saves.append(1)\n"
             "    if len(saves) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
             "runner.save_checkpoint = killed\nsys.exit(cli.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", child, *argv], env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert ckpt.is_file() and not out.exists()
    # The child ran on one thread; CPU GEMMs may differ in their last bits across thread counts (AVX2
    # machines do), so the resumed and the uninterrupted runs use one thread too: bit-identity then holds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(argv)
        whole = tmp_path / "whole.safetensors"
        whole_code = main(["score", *cli_score(model_dir, data_csv, whole, "--checkpoint-every", "1")])
    finally:
        torch.set_num_threads(threads)
    resumed = json.loads(capsys.readouterr().out.splitlines()[0])  # the resumed run's summary comes first
    assert code == 0 and resumed["resumed_from"] == 2 and resumed["batches"] == 5
    assert not ckpt.exists()  # removed once the scores are written
    assert whole_code == 0
    got, want = dc.Scores.load(out), dc.Scores.load(whole)
    assert all(torch.equal(got[k], want[k]) for k in want)  # same segments, same order: bit-identical


def test_a_checkpoint_of_another_run_is_refused(bert, tmp_path):
    batches = tiny_batches(n_batches=3)
    ckpt = tmp_path / "c.ckpt"
    dc.score_run(bert, batches, "gradient", checkpoint=ckpt, checkpoint_every=1, progress=False)
    with pytest.raises(DeepCutsError, match="belongs to another run"):
        dc.score_run(bert, batches, "gradient", checkpoint=ckpt, checkpoint_every=1, seed=1, progress=False)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(DeepCutsError, match="delete it"):
        dc.score_run(bert, batches, "gradient", checkpoint=ckpt, checkpoint_every=1, progress=False)
    with pytest.raises(DeepCutsError, match="reference / train mode"):
        dc.score_run(bert, batches, "gradient", checkpoint_every=1, reference=True, progress=False)


def test_a_checkpoint_is_keyed_by_the_options_not_by_how_they_were_given(bert, tmp_path):
    batches = tiny_batches(n_batches=3)
    ckpt = tmp_path / "c.ckpt"
    kw = dict(noise_samples=2, noise_std=0.05, seed=1)
    first = dc.score_run(bert, batches, "smooth-cut", checkpoint=ckpt, checkpoint_every=1, progress=False, **kw)
    options = ScoreOptions(**kw, progress=False, backend="torch", max_memory=1 << 30)
    again = dc.score_run(bert, batches, "smooth-cut", checkpoint=ckpt, checkpoint_every=1, options=options)
    assert again.resumed_from == 3 and again.batches_used == 3
    assert all(torch.equal(again.scores["smooth-cut"][k], v) for k, v in first.scores["smooth-cut"].items())
    with pytest.raises(DeepCutsError, match="belongs to another run"):
        dc.score_run(bert, batches, "smooth-cut", checkpoint=ckpt, checkpoint_every=1,
                     options=ScoreOptions(**{**kw, "noise_std": 0.1}, progress=False))


def kept_change(before: dc.Scores, after: dc.Scores, keep: float) -> float:
    """Independent count: the fraction of the kept set (per tensor, scores at or above the
    round(keep * size)-th largest) that was replaced."""
    def kept(t):
        flat = t.reshape(-1)
        n = round(keep * flat.numel())
        return set() if n == 0 else set((flat >= flat.sort(descending=True).values[n - 1]).nonzero().view(-1).tolist())

    replaced = total = 0
    for k in before:
        a, b = kept(before[k]), kept(after[k])
        replaced, total = replaced + (len(a - b) + len(b - a)) / 2, total + len(b)
    return replaced / total


def test_until_stable_stops_at_the_first_small_change(bert):
    batches = tiny_batches(n_batches=5, seed=int(torch.randint(0, 10_000, (1,))))
    full = dc.score_run(bert, batches, "cam-cut", checkpoint_every=1, until_stable=0.0, stable_keep=0.3,
                        progress=False)
    assert not full.stopped_early and full.batches_used == 5 and len(full.changes) == 4
    prefixes = [dc.score(bert, batches[:1], "cam-cut", progress=False)]  # running sums of single-batch scores
    for i in range(1, 5):
        prefixes.append(prefixes[-1] + dc.score(bert, batches[i:i + 1], "cam-cut", batch_indices=[i], progress=False))
    want = [kept_change(a, b, 0.3) for a, b in zip(prefixes, prefixes[1:])]
    assert full.changes == pytest.approx(want, abs=1e-9)
    first = min(range(4), key=lambda i: want[i])
    early = dc.score_run(bert, batches, "cam-cut", checkpoint_every=1, until_stable=want[first] + 1e-9,
                         stable_keep=0.3, progress=False)
    stop = next(i for i, c in enumerate(want) if c < want[first] + 1e-9)
    assert early.stopped_early == (stop < 3) and early.batches_used == stop + 2
    assert early.scores["cam-cut"].meta["batches"] == stop + 2
    assert_scores_close(early.scores["cam-cut"], prefixes[stop + 1])


def test_memory_cap_picks_smaller_chunks_and_out_of_memory_retries(bert, monkeypatch):
    batches = tiny_batches(n_batches=2)
    kw = dict(noise_samples=4, noise_std=0.05, progress=False)
    want = dc.score(bert, batches, "smooth-cut", **kw)
    capped = dc.score_run(bert, batches, "smooth-cut", max_memory=1, **kw).scores["smooth-cut"]
    assert capped.meta["samples_per_chunk"] == 1 and want.meta["samples_per_chunk"] == 4
    assert_scores_close(capped, want)
    real, caps = runner.score_many, []

    def fails_above(limit):
        def fake(*args, options, **kwargs):
            caps.append(options.max_memory)
            if options.max_memory is None or options.max_memory > limit:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(*args, options=options, **kwargs)
        return fake

    monkeypatch.setattr(runner, "score_many", fails_above(1 << 30))
    run = dc.score_run(bert, batches, "smooth-cut", max_memory=3 << 30, **kw)
    assert caps == [3 << 30, 3 << 29, 3 << 28] and run.batches_used == 2
    assert_scores_close(run.scores["smooth-cut"], want)
    monkeypatch.setattr(runner, "score_many", fails_above(0))
    with pytest.raises(DeepCutsError, match="smaller --batch-size"):
        dc.score_run(bert, batches, "smooth-cut", **kw)


@pytest.mark.parametrize("text,size", [("2GiB", 2 << 30), ("500MB", 500_000_000), ("1.5g", 1_500_000_000),
                                       ("4096", 4096)])
def test_max_memory_sizes(text, size):
    from deepcuts_fast.cli.parsing import parse_size

    assert parse_size(text) == size


def test_bad_max_memory_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "--data", "x.csv", "--out", "s", "--max-memory", "lots"])
    assert e.value.code == 2 and "not a size" in capsys.readouterr().err


def test_cli_until_stable_and_option_errors(model_dir, data_csv, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "s.safetensors"
    argv = ["score", *cli_score(model_dir, data_csv, out, "--checkpoint-every", "1")]
    assert main(argv + ["--until-stable", "1.0"]) == 0  # any change < 1: stops at the first check
    summary = json.loads(capsys.readouterr().out)
    assert summary["batches"] == 2 and summary["batches_max"] == 5 and summary["stopped_early"]
    assert dc.Scores.load(out).meta["batches"] == 2 and not (tmp_path / "s.safetensors.ckpt").exists()
    for extra, message in ((["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
                           (["--until-stable", "2"], "tolerance in [0, 1]"),
                           (["--stable-keep", "1"], "kept fraction"),
                           (["--device", "tpu"], "unknown --device")):
        assert main(argv + ["--overwrite"] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
