"""The `deepcuts` command line on a tiny model folder and a tiny CSV (no real model needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.pruning.io import PLAN_FILE
from deepcuts_fast.data import load_dataset, make_batches


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_score_writes_the_same_scores_as_the_api(model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "scores.safetensors"
    code, stdout, _ = run(["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", "cam-cut",
                           "--granularity", "weight", "--batches", "2", "--batch-size", "4", "--out", str(out),
                           "--quiet", "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["batches"] == 2 and summary["criterion"] == "cam-cut"
    got = dc.Scores.load(out)
    model = dc.load_model(str(model_dir))
    batches = make_batches(load_dataset(str(data_csv)), dc.load_tokenizer(str(model_dir)), batch_size=4,
                           shuffle=True, seed=0, limit=8)
    want = dc.score(model, batches, "cam-cut", progress=False)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_eval_reports_accuracy(model_dir, data_csv, capsys):
    code, stdout, _ = run(["eval", "--model", str(model_dir), "--data", str(data_csv), "--json", "--quiet"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["n"] == 24 and 0.0 <= result["accuracy"] <= 1.0
    assert result["dtype"] == "fp32"  # "auto", which the test suite pins to fp32
    code, stdout, _ = run(["eval", "--model", str(model_dir), "--data", str(data_csv), "--json", "--quiet",
                           "--dtype", "bf16"], capsys)
    bf16 = json.loads(stdout)
    assert code == 0 and bf16["dtype"] == "bf16" and bf16["n"] == 24
    assert abs(bf16["loss"] - result["loss"]) < 0.05 * max(result["loss"], 1e-3) + 0.02


def test_run_quick_writes_results(model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(["run", "--quick", "--model", str(model_dir), "--data", str(data_csv), "--out", str(out),
                           "--batch-size", "4", "--quiet"], capsys)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    structured = results["structured_mode"]
    assert [r["criterion"] for r in structured] == ["magnitude", "gradient", "cam-cut", "smooth-cut"]
    for r in structured:
        assert r["keep_flops"] == 0.5 and r["flop_ratio"] >= 2.0 and r["speedup_fp32"] > 0
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["accuracy_reconstructed"] <= 1
        assert len(r["heads"]) == len(r["ffn"]) == 2
    rows = results["paper_mode"]
    assert {r["criterion"] for r in rows} == {"magnitude", "gradient", "cam-cut", "smooth-cut"}
    assert {r["compression"] for r in rows} == {2.0, 3.0, 3.5, 4.0}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["kept_fraction"] < 1.0
    assert results["paper_recovery"] == results["paper_rewind"] == []  # --quick does no fine-tuning
    assert "| magnitude |" in stdout and "| cam-cut | 0.5 |" in stdout and "## Quality goals" in stdout


@pytest.mark.parametrize("argv,message", [
    (["score", "--criterion", "smoth-cut"], "Did you mean 'smooth-cut'"),
    (["score", "--out", "/proc/deepcuts/x.safetensors"], "cannot write"),
    (["score", "--model", "{empty}"], "cannot load"),
    (["score", "--data", "{empty_csv}"], "no rows"),
    (["score", "--data", "{bad_labels}"], "label"),
    (["score", "--model", "{gpt2}"], "supported: bert, camembert, deberta-v2, distilbert, electra, modernbert, mpnet, "
                                     "roberta, xlm-roberta"),
])
def test_errors_are_one_line_with_non_zero_exit_and_no_output_file(
        argv, message, model_dir, data_csv, tmp_path, capsys):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "bad.csv").write_text("text,label\ngood film,7\nbad film,0\n")
    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "gpt2")
    subs = {"{empty}": tmp_path / "empty", "{empty_csv}": tmp_path / "empty.csv", "{bad_labels}": tmp_path / "bad.csv",
            "{gpt2}": tmp_path / "gpt2"}
    argv = [str(subs.get(a, a)) for a in argv]
    capsys.readouterr()  # drop the setup's output (transformers' progress bars, shown unless an earlier test hid them)
    out = tmp_path / "scores.safetensors"
    base = {"--model": str(model_dir), "--data": str(data_csv), "--out": str(out)}
    for flag, value in base.items():
        if flag not in argv:
            argv += [flag, value]
    code, _, err = run(argv + ["--quiet", "--batches", "1", "--batch-size", "4"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("deepcuts: error:") and message in err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scores")]


@pytest.mark.isa_independent  # help texts and one refusal: the portable pass skips it
def test_console_script_help_and_clean_failure(tmp_path):
    exe = [sys.executable, "-m", "deepcuts_fast.cli"]
    for sub in ([], ["score"], ["eval"], ["run"]):
        proc = subprocess.run(exe + sub + ["--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: deepcuts" in proc.stdout
    proc = subprocess.run(exe + ["score", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "s"),
                                 "--model", "minilm"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope.csv" in proc.stderr


def unit_scores(model_dir, data_csv, tmp_path, criterion: str, capsys) -> Path:
    """`deepcuts score --granularity unit` on 2 batches of the tiny CSV; the scores file it wrote."""
    scores = tmp_path / "s.safetensors"
    assert run(["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", criterion,
                "--granularity", "unit", "--batches", "2", "--batch-size", "4", "--out", str(scores), "--quiet"],
               capsys)[0] == 0
    return scores


def test_prune_writes_a_slim_folder_that_loads(model_dir, data_csv, tmp_path, capsys):
    scores = unit_scores(model_dir, data_csv, tmp_path, "gradient", capsys)
    out = tmp_path / "slim"
    code, stdout, _ = run(["prune", "--model", str(model_dir), "--scores", str(scores), "--keep-flops", "0.5",
                           "--seq-len", "16", "--out", str(out), "--json", "--quiet"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["flops_kept"] <= 0.5 and summary["params"] < summary["dense_params"]
    slim = dc.from_pretrained(out)
    assert [layer.num_heads for layer in dc.arch.encoder_layers(slim)] == summary["heads"]
    assert (out / "tokenizer.json").is_file()
    # the slim folder is a valid --model for eval, and a second prune into it is refused
    assert run(["eval", "--model", str(out), "--data", str(data_csv), "--quiet"], capsys)[0] == 0
    code, _, err = run(["prune", "--model", str(model_dir), "--scores", str(scores), "--keep-flops", "0.5",
                        "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err


def test_prune_scores_and_data_reconstructs_to_the_api_result(model_dir, data_csv, tmp_path, capsys):
    scores = unit_scores(model_dir, data_csv, tmp_path, "cam-cut", capsys)
    out = tmp_path / "slim"
    code, stdout, _ = run(["prune", "--model", str(model_dir), "--scores", str(scores), "--keep-flops", "0.5",
                           "--seq-len", "16", "--data", str(data_csv), "--calibration-examples", "16",
                           "--out", str(out), "--quiet", "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert (summary["path"], summary["criterion"], summary["rearranged"], summary["reconstructed"]) == (
        "scores", "cam-cut", False, True)
    assert summary["reconstructed_on"] == str(data_csv) and summary["calibration_examples"] == 16
    assert set(summary["timings"]) == {"search", "prune", "reconstruct", "total"}
    model, tok = dc.load_model(str(model_dir)), dc.load_tokenizer(str(model_dir))
    plan = dc.plan(model, dc.Scores.load(scores), keep_flops=0.5, seq_len=16)
    batches = make_batches(load_dataset(str(data_csv)), tok, batch_size=16, shuffle=True, seed=0, limit=16)
    want = dc.reconstruct(dc.prune(model, plan), model, batches).state_dict()
    plain = dc.prune(model, plan).state_dict()
    got = dc.from_pretrained(out).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(got[k], plain[k]) for k in plain)  # the refit changed the output projections
    bf16_out = tmp_path / "slim-bf16"  # --dtype reaches the reconstruction's forwards
    assert run(["prune", "--model", str(model_dir), "--scores", str(scores), "--keep-flops", "0.5", "--seq-len", "16",
                "--data", str(data_csv), "--calibration-examples", "16", "--dtype", "bf16",
                "--out", str(bf16_out), "--quiet"], capsys)[0] == 0
    want_bf16 = dc.reconstruct(dc.prune(model, plan), model, batches, dtype=torch.bfloat16).state_dict()
    got_bf16 = dc.from_pretrained(bf16_out).state_dict()
    assert all(torch.equal(got_bf16[k], want_bf16[k]) for k in want_bf16)
    assert any(not torch.equal(got_bf16[k], got[k]) for k in got)
    skipped = tmp_path / "slim-plain"  # --no-reconstruct: the plain pruned model, though --data is given
    code, stdout, _ = run(["prune", "--model", str(model_dir), "--scores", str(scores), "--keep-flops", "0.5",
                           "--seq-len", "16", "--data", str(data_csv), "--no-reconstruct", "--out", str(skipped),
                           "--quiet", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["reconstructed"] is False
    got_plain = dc.from_pretrained(skipped).state_dict()
    assert all(torch.equal(got_plain[k], plain[k]) for k in plain)


def test_prune_rejects_scores_of_another_model(model_dir, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    dc.score(dc.load_model("minilm"), None, "magnitude").save(other)
    code, _, err = run(["prune", "--model", str(model_dir), "--scores", str(other), "--keep-flops", "0.5",
                        "--out", str(tmp_path / "slim")], capsys)
    assert code == 2 and "layers" in err and not (tmp_path / "slim").exists()


def test_prune_allocates_by_the_fisher_scores_the_file_carries(model_dir, data_csv, tmp_path, capsys):
    """`deepcuts score` files carry Fisher's scores, so `prune --scores` gets the Fisher-referenced plan by
    default; `--allocation raw` is the summed-score baseline, a different plan here."""
    scores = unit_scores(model_dir, data_csv, tmp_path, "gradient", capsys)
    loaded = dc.Scores.load(scores)
    assert loaded.fisher is not None
    model = dc.load_model(str(model_dir))
    kept = {}
    for allocation in ("auto", "raw"):
        code, stdout, _ = run(["prune", "--model", str(model_dir), "--scores", str(scores), "--keep-flops", "0.4",
                               "--seq-len", "16", "--allocation", allocation, "--out", str(tmp_path / allocation),
                               "--json", "--quiet"], capsys)
        assert code == 0
        summary = json.loads(stdout)
        assert summary["allocation"] == ("fisher" if allocation == "auto" else "raw")
        kept[allocation] = dc.Plan.from_dict(json.loads((tmp_path / allocation / PLAN_FILE).read_text()))
    want = dc.plan(model, loaded, keep_flops=0.4, seq_len=16, reference=loaded.fisher)
    raw = dc.plan(model, loaded, keep_flops=0.4, seq_len=16, allocation="raw")
    assert (kept["auto"].heads, kept["auto"].neurons) == (want.heads, want.neurons)
    assert (kept["raw"].heads, kept["raw"].neurons) == (raw.heads, raw.neurons)
    assert (want.heads, want.neurons) != (raw.heads, raw.neurons)


def test_prune_refuses_scores_of_a_model_with_the_same_shapes(model_dir, data_csv, tmp_path, capsys):
    scores = unit_scores(model_dir, data_csv, tmp_path, "gradient", capsys)
    other = dc.load_model(str(model_dir))
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # same shapes, other weights
    other_dir = tmp_path / "other-model"
    other.save_pretrained(other_dir)
    dc.load_tokenizer(str(model_dir)).save_pretrained(other_dir)
    code, _, err = run(["prune", "--model", str(other_dir), "--scores", str(scores), "--keep-flops", "0.5",
                        "--out", str(tmp_path / "slim")], capsys)
    assert code == 2 and "computed on" in err and "not on this model" in err
    assert not (tmp_path / "slim").exists()
