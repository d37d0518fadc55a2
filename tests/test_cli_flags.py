"""`deepcuts` flags: global flags on either side of the command, --version, help with defaults, early value
checks in flag names (every command's --seed), data-free scores per weight, noise too large for the model, JSON
errors, and `deepcuts prune` through the retraining-free pipeline (tiny models)."""
from __future__ import annotations

import json

import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast._version import __version__
from deepcuts_fast.cli import build_parser, loading, main
from deepcuts_fast.data import load_dataset, make_batches
from deepcuts_fast.scoring.criteria import CRITERIA

REQUIRED = {  # the least each command needs to parse
    "score": ["--data", "d.csv", "--out", "s.safetensors"],
    "eval": ["--data", "d.csv"],
    "prune": ["--data", "d.csv", "--keep-flops", "0.5", "--out", "slim"],
    "bench": ["--model", "m"],
    "run": [],
    "make-data": ["multiclass", "out"],
}
GLOBAL = ("debug", "json", "quiet")


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", list(REQUIRED))
def test_global_flags_work_before_and_after_every_command(command):
    parser = build_parser()
    plain = parser.parse_args([command, *REQUIRED[command]])
    assert [getattr(plain, f) for f in GLOBAL] == [False, False, False]
    for flag in GLOBAL:
        before = parser.parse_args([f"--{flag}", command, *REQUIRED[command]])
        after = parser.parse_args([command, *REQUIRED[command], f"--{flag}"])
        for args in (before, after):
            assert getattr(args, flag) is True, (flag, command)
            assert [getattr(args, f) for f in GLOBAL if f != flag] == [False, False]


def test_debug_after_the_command_shows_the_traceback(model_dir, data_csv, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(loading, "classifier", broken)
    argv = ["eval", "--model", str(model_dir), "--data", str(data_csv)]
    assert run(argv, capsys)[0] == 1
    with pytest.raises(RuntimeError, match="simulated failure"):
        main([*argv, "--debug"])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"deepcuts {__version__}\n"


def help_text(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside names such as smooth-cam-cut-shift
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(REQUIRED))
def test_help_of_every_command_shows_defaults(command, capsys, monkeypatch):
    text = help_text([command], capsys, monkeypatch)
    assert text.startswith(f"usage: deepcuts {command}") and "(default: " in text
    assert all(f"--{flag}" in text for flag in GLOBAL)
    expected = {"score": ["number of calibration batches (default: 8)", "(default: smooth-cut)", "unit (default)",
                          "42 MB"],
                "eval": ["--batch-size BATCH_SIZE", "(default: 16)", "(default: test)"],
                "prune": ["(default: cam-cut", "(default: 512)", "(default: 128)", "--no-rearrange",
                          "--no-reconstruct", "--method {one-shot,iterative}"],
                "bench": ["(default: 20)"], "run": ["(default: rotten_tomatoes)"],
                "make-data": ["multiclass: 6 topics", "(default: csv)"]}[command]
    assert all(piece in text for piece in expected), [p for p in expected if p not in text]


@pytest.mark.parametrize("command", ["score", "prune"])
def test_criterion_help_lists_every_criterion(command, capsys, monkeypatch):
    line = next(x for x in help_text([command], capsys, monkeypatch).splitlines() if x.strip().startswith("--criterion"))
    assert all(name in line for name in CRITERIA)


def test_score_defaults_to_unit_granularity(model_dir, data_csv, tmp_path, capsys):
    assert build_parser().parse_args(["score", *REQUIRED["score"]]).granularity == "unit"
    out = tmp_path / "s.safetensors"
    code, stdout, _ = run(["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", "gradient",
                           "--batches", "1", "--batch-size", "4", "--out", str(out), "--quiet", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["granularity"] == "unit"
    assert dc.Scores.load(out).granularity == "unit"


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command loads a model or data."""
    def loaded(*args, **kwargs):
        pytest.fail("loaded a model or data before checking the flags")

    for target in ("deepcuts_fast.cli.loading.classifier", "deepcuts_fast.cli.loading.model_and_data",
                   "deepcuts_fast.task.task_model", "deepcuts_fast.data.load_dataset",
                   "deepcuts_fast.scoring.Scores.load"):
        monkeypatch.setattr(target, loaded)


PRUNE = ["prune", "--data", "d.csv", "--keep-flops", "0.5"]
SCORE = ["score", "--data", "d.csv"]


@pytest.mark.parametrize("argv,message", [
    (["prune", "--data", "d.csv", "--keep-flops", "50"], "--keep-flops is a fraction in [0, 1], got 50"),
    (["prune", "--scores", "s", "--keep-params", "-0.1"], "--keep-params is a fraction in [0, 1], got -0.1"),
    (["prune", "--scores", "s", "--keep-heads", "1.5"], "--keep-heads is a fraction in [0, 1], got 1.5"),
    (["prune", "--scores", "s", "--keep-neurons", "nan"], "--keep-neurons is a fraction in [0, 1], got nan"),
    (PRUNE + ["--seq-len", "0"], "--seq-len must be an integer >= 1, got 0"),
    (PRUNE + ["--min-heads", "-1"], "--min-heads must be an integer >= 0, got -1"),
    (PRUNE + ["--min-neurons", "-2"], "--min-neurons must be an integer >= 0, got -2"),
    (PRUNE + ["--multiple-of", "0"], "--multiple-of must be an integer >= 1, got 0"),
    (PRUNE + ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (PRUNE + ["--max-length", "0"], "--max-length must be an integer >= 1, got 0"),
    (PRUNE + ["--calibration-examples", "0"], "--calibration-examples must be an integer >= 1, got 0"),
    (SCORE + ["--batches", "0"], "--batches must be an integer >= 1, got 0"),
    (SCORE + ["--batch-size", "-3"], "--batch-size must be an integer >= 1, got -3"),
    (SCORE + ["--max-length", "0"], "--max-length must be an integer >= 1, got 0"),
    (SCORE + ["--noise-samples", "0"], "--noise-samples must be an integer >= 1, got 0"),
    (SCORE + ["--noise-std=-1e-3"], "--noise-std must be a finite number >= 0, got -0.001"),
    (SCORE + ["--noise-std", "inf"], "--noise-std must be a finite number >= 0, got inf"),
    (SCORE + ["--noise-std", "nan"], "--noise-std must be a finite number >= 0, got nan"),
    (SCORE + ["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (SCORE + ["--seed", str(2**64)], "--seed must be below 2**64"),
    (PRUNE + ["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["prune", "--scores", "s", "--keep-flops", "0.5", "--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["run", "--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["eval", "--data", "d.csv", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["eval", "--data", "d.csv", "--limit", "0"], "--limit must be an integer >= 1, got 0"),
    (["prune", "--keep-flops", "0.5"], "give --data DATA"),
    (["prune", "--data", "d.csv"], "give a budget: --keep-flops"),
    (["prune", "--data", "d.csv", "--keep-params", "0.5"], "does not take --keep-params"),
    (PRUNE + ["--scope", "layer"], "does not take --scope layer"),
    (PRUNE + ["--multiple-of", "8"], "does not take --multiple-of 8"),
    (PRUNE + ["--criterion", "smoth_cut"], "Did you mean 'smooth-cut'"),
    (["prune", "--scores", "s", "--keep-flops", "0.5", "--criterion", "gradient"], "drop --criterion"),
    (["prune", "--scores", "s", "--keep-flops", "0.5", "--keep-params", "0.5"],
     "give one budget, not --keep-flops and --keep-params"),
])
def test_bad_flags_fail_at_once_in_flag_names(argv, message, tmp_path, no_loading, capsys):
    out = tmp_path / ("slim" if argv[0] == "prune" else "s.safetensors")
    extra = ["--out", str(out)] if argv[0] != "eval" else []
    code, stdout, err = run(argv + extra, capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert err.startswith("deepcuts: error: ") and err.count("\n") == 1 and message in err, err
    assert "keep_" not in err and "Traceback" not in err


def test_make_data_refuses_a_negative_seed(tmp_path, capsys):
    out = tmp_path / "data"
    code, stdout, err = run(["make-data", "imbalanced", str(out), "--seed", "-1"], capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert err == "deepcuts: error: --seed must be a whole number >= 0, got -1\n"


@pytest.mark.parametrize("criterion", ["magnitude", "random"])
def test_data_free_weight_scores_for_the_paper_masks(criterion, model_dir, data_csv, tmp_path, capsys):
    """`--granularity weight` with a data-free criterion used to fail asking Fisher for weight scores."""
    out = tmp_path / "w.safetensors"
    code, stdout, err = run(["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", criterion,
                             "--granularity", "weight", "--batch-size", "4", "--batches", "2", "--out", str(out),
                             "--quiet", "--json"], capsys)
    assert code == 0 and err == "" and json.loads(stdout)["granularity"] == "weight"
    got = dc.Scores.load(out)
    want = dc.score(dc.load_model(str(model_dir)), None, criterion, granularity="weight")
    assert got.granularity == "weight" and set(got.keys()) == set(want.keys())
    assert all(torch.equal(got[k], want[k]) for k in want.keys())
    assert got.fisher is not None and got.fisher.granularity == "unit"  # Fisher of the labelled data, per unit
    masks = got.masks(1.5, params="encoder")
    assert set(masks) == set(want.keys()) and any(not m.all() for m in masks.values())


def test_too_large_noise_is_blamed_on_the_noise(model_dir, data_csv, tmp_path, capsys):
    """Noise that makes the loss non-finite used to be reported as a problem of the model weights and labels."""
    out = tmp_path / "s.safetensors"
    for scale, default in (("absolute", "0.001"), ("relative", "0.15")):
        code, stdout, err = run(["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion",
                                 "smooth-cut", "--noise-scale", scale, "--noise-std", "1e30", "--batches", "1",
                                 "--batch-size", "4", "--noise-samples", "2", "--out", str(out), "--quiet"], capsys)
        assert code == 2 and stdout == "" and err.count("\n") == 1 and not out.exists()
        assert f"noise is too large for this model: with noise_std=1e+30 ({scale})" in err
        assert "without the noise it is finite" in err and "lower --noise-std" in err and default in err
        assert "model weights" not in err


def test_a_non_finite_loss_without_noise_is_still_blamed_on_the_model_or_labels():
    from conftest import tiny_batches, tiny_model

    batches = tiny_batches(1, num_labels=1)
    batches[0]["labels"][0] = float("inf")
    with pytest.raises(dc.DeepCutsError, match=r"non-finite loss \(inf\) on calibration batch 0; check the model "
                                               "weights and labels"):
        dc.score(tiny_model(num_labels=1), batches, "smooth-cut", noise_samples=2, with_fisher=False, progress=False)


def test_the_issue_example_message_is_exact(tmp_path, no_loading, capsys):
    code, _, err = run(["prune", "--data", "rotten_tomatoes", "--keep-flops", "50", "--out", str(tmp_path / "s")],
                       capsys)
    assert code == 2 and err == "deepcuts: error: --keep-flops is a fraction in [0, 1], got 50\n"


@pytest.mark.parametrize("failure,code", [
    (None, 2), (RuntimeError("boom\nsecond line"), 1), (KeyboardInterrupt(), 130)])
@pytest.mark.parametrize("where", ["before", "after"])
def test_json_errors_are_one_object_with_the_same_exit_code(failure, code, where, model_dir, data_csv, tmp_path,
                                                           monkeypatch, capsys):
    if failure is not None:
        def fail(*args, **kwargs):
            raise failure

        monkeypatch.setattr(loading, "classifier", fail)
    argv = ["eval", "--model", str(model_dir), "--data", str(data_csv), "--quiet"]
    if failure is None:
        argv = ["prune", "--data", str(data_csv), "--keep-flops", "50", "--out", str(tmp_path / "slim")]
    plain_code, _, plain_err = run(argv, capsys)
    json_code, stdout, err = run(["--json", *argv] if where == "before" else [*argv, "--json"], capsys)
    assert plain_code == json_code == code and stdout == ""
    assert err.count("\n") == 1
    error = json.loads(err)
    assert error["exit_code"] == code and set(error) == {"error", "exit_code"}
    assert plain_err.startswith("deepcuts: ") and error["error"] in plain_err
    if code == 1:
        assert error["error"].startswith("RuntimeError: boom") and "second line" not in error["error"]


# ---------------------------------------------------------------------------------------------
# deepcuts prune --data: the retraining-free pipeline

def prune_argv(model_dir, data_csv, out, *extra):
    return ["prune", "--model", str(model_dir), "--data", str(data_csv), "--keep-flops", "0.5", "--seq-len", "16",
            "--calibration-examples", "16", "--batch-size", "8", "--out", str(out), "--quiet", "--json", *extra]


def api_pipeline(model_dir, data_csv, **kwargs):
    """`dc.prune_without_retraining` on the batches `deepcuts prune` draws with the flags of `prune_argv`."""
    model, tok = dc.load_model(str(model_dir)), dc.load_tokenizer(str(model_dir))
    batches = make_batches(load_dataset(str(data_csv), "train"), tok, batch_size=8, max_length=64, shuffle=True,
                           seed=0, limit=16)
    return dc.prune_without_retraining(model, batches, 0.5, seq_len=16, **kwargs)


def test_prune_with_data_runs_the_pipeline(model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "slim"
    code, stdout, _ = run(prune_argv(model_dir, data_csv, out), capsys)
    assert code == 0
    s = json.loads(stdout)
    assert (s["path"], s["criterion"], s["scores"], s["rearranged"], s["reconstructed"]) == (
        "pipeline", "cam-cut", None, True, True)
    assert s["data"] == s["reconstructed_on"] == str(data_csv) and s["calibration_examples"] == 16
    assert set(s["timings"]) == {"score", "search", "rearrange", "prune", "reconstruct", "total"}
    assert s["flops_kept"] <= 0.5 and s["params"] < s["dense_params"]
    slim, plan, info = api_pipeline(model_dir, data_csv)
    got, want = dc.from_pretrained(out).state_dict(), slim.state_dict()
    assert s["heads"] == info["heads"] and s["ffn"] == info["neurons"]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_prune_pipeline_text_summary_says_what_ran(model_dir, data_csv, tmp_path, capsys):
    argv = [a for a in prune_argv(model_dir, data_csv, tmp_path / "slim", "--criterion", "CAM_cut") if a != "--json"]
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    assert ("retraining-free pipeline (cam-cut scores, Fisher-referenced allocation, rearranged, "
            f"reconstructed on {data_csv})") in stdout
    assert "on 16 calibration examples" in stdout and "timings: score " in stdout and "reconstruct " in stdout


def test_no_rearrange_and_no_reconstruct_change_what_runs(model_dir, data_csv, tmp_path, capsys):
    runs = {}
    for name, extra in {"full": [], "no-reconstruct": ["--no-reconstruct"], "no-rearrange": ["--no-rearrange"]}.items():
        out = tmp_path / name
        code, stdout, _ = run(prune_argv(model_dir, data_csv, out, *extra), capsys)
        assert code == 0
        runs[name] = (json.loads(stdout), dc.from_pretrained(out).state_dict())
    full, plain, searched = runs["full"], runs["no-reconstruct"], runs["no-rearrange"]
    assert (plain[0]["rearranged"], plain[0]["reconstructed"], plain[0]["reconstructed_on"]) == (True, False, None)
    assert "reconstruct" not in plain[0]["timings"]
    assert (searched[0]["rearranged"], searched[0]["reconstructed"]) == (False, True)
    # same plan, so the same shapes: reconstruction refit the output projections
    assert (plain[0]["heads"], plain[0]["ffn"]) == (full[0]["heads"], full[0]["ffn"])
    assert any(not torch.equal(full[1][k], plain[1][k]) for k in full[1])
    for name, kwargs in {"no-reconstruct": {"reconstruct": False}, "no-rearrange": {"rearrange": False}}.items():
        want = api_pipeline(model_dir, data_csv, **kwargs)[0].state_dict()
        got = runs[name][1]
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name
