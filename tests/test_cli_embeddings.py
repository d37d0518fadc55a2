"""`deepcuts eval --model SLIM --baseline DENSE`: embedding metrics of a slim encoder against its dense model."""
from __future__ import annotations

import json

import pytest
from conftest import split_csv

import deepcuts_fast as dc
from deepcuts_fast.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def split_data(data_csv, tmp_path_factory):
    """A folder with train.csv and test.csv: the tiny CSV's first 12 rows and its last 12."""
    folder = tmp_path_factory.mktemp("splits")
    split_csv(data_csv, folder, 12)
    return folder


@pytest.fixture(scope="module")
def slim_dir(encoder_dir, tmp_path_factory):
    """The tiny bare encoder pruned to half its FLOPs by data-free magnitude scores, saved as a slim folder."""
    model = dc.load_model(str(encoder_dir))
    scores = dc.score(model, None, criterion="magnitude", granularity="unit", progress=False)
    with pytest.warns(UserWarning):
        slim = dc.prune(model, dc.plan(model, scores, keep_flops=0.5, seq_len=16))
    out = tmp_path_factory.mktemp("slim") / "slim"
    dc.save_pretrained(slim, out, tokenizer=dc.load_tokenizer(str(encoder_dir)))
    return out


def test_eval_baseline_prints_the_embedding_metrics(slim_dir, encoder_dir, split_data, capsys):
    code, stdout, _ = run(["eval", "--model", str(slim_dir), "--baseline", str(encoder_dir), "--data",
                           str(split_data), "--neighbours", "3", "--json", "--quiet"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["n"] == 12 and result["k"] == 3 and result["dtype"] == "fp32" and result["pooling"] == "mean"
    assert 0 <= result["overlap"] <= 1 and -1 <= result["cosine"] < 1
    assert result["probe"]["a"] == "slim" and result["probe"]["n"] == 12 and result["probe"]["test"] == "mcnemar"
    code, stdout, _ = run(["eval", "--model", str(encoder_dir), "--baseline", str(encoder_dir), "--data",
                           str(split_data), "--quiet"], capsys)
    assert code == 0
    assert "cosine=1.0000" in stdout and "overlap@10=1.0000" in stdout and "dtype=fp32" in stdout
    assert "probe_diff=+0.00 [+0.00, +0.00] points" in stdout


def test_eval_baseline_refuses_bad_input_in_one_line(slim_dir, encoder_dir, data_csv, capsys):
    code, _, err = run(["eval", "--model", str(slim_dir), "--baseline", str(encoder_dir), "--data", str(data_csv),
                        "--quiet"], capsys)
    assert code == 2 and "--probe-split none" in err and len(err.strip().splitlines()) == 1
    code, stdout, err = run(["eval", "--model", str(slim_dir), "--baseline", str(encoder_dir), "--data",
                             str(data_csv), "--probe-split", "none", "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(stdout)["probe"] is None
    code, _, err = run(["eval", "--model", str(slim_dir), "--baseline", str(encoder_dir), "--data", str(data_csv),
                        "--neighbours", "0", "--quiet"], capsys)
    assert code == 2 and "--neighbours must be an integer >= 1" in err


def test_eval_baseline_on_plain_text_has_no_probe(slim_dir, encoder_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"good film {i} plot actor {'dull ' * (i % 4)}" for i in range(15)) + "\n")
    code, stdout, err = run(["eval", "--model", str(slim_dir), "--baseline", str(encoder_dir), "--data", str(texts),
                             "--quiet"], capsys)
    assert code == 0 and "no probe" in err
    assert "overlap@10=" in stdout and "probe" not in stdout
