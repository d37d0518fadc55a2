"""Data other than the embedded two-class reviews: the synthetic generator (`deepcuts make-data`), and the main job
end to end on each kind (multi-class string labels with long texts, sentence pairs, imbalanced classes) with a
tiny bare encoder that the job fine-tunes first; plus the clear errors for data that cannot work."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.data import TextDataset, check_seen, load_dataset, make_batches, make_task_data, truncation
from deepcuts_fast.data.synthetic import KINDS, make_rows
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.outputs import MANIFEST

# The portable pass (make test-portable) skips this file: the data generator, data errors, and the job on each data
# kind, which asserts how the data was read (sizes, class names, lengths); the job's ISA- and thread-dependent steps
# (scoring, pruning, latency, deployment) run in that pass through test_main_job.py and test_cli.py
pytestmark = pytest.mark.isa_independent

SMALL = {"train": 40, "validation": 12, "test": 5}  # a test split of 5 misses classes of the 6-class kind


@pytest.fixture(scope="module")
def tokenizer():
    return dc.load_tokenizer("minilm")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _job(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A quick `deepcuts run` small enough for the tiny encoder (64 positions) and two CPU cores."""
    return ["run", "--quick", "--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "4",
            "--calibration-batches", "2", "--latency-batch", "2", "--latency-seq", "16", "--quiet", *extra]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


# --- the generator ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_data_is_deterministic_and_loads_as_documented(kind, tmp_path):
    files = make_task_data(kind, tmp_path / "a", sizes=SMALL)
    assert {split: p.name for split, p in files.items()} == {s: f"{s}.csv" for s in SMALL}
    again = make_task_data(kind, tmp_path / "b", sizes=SMALL)
    assert all(files[s].read_bytes() == again[s].read_bytes() for s in SMALL)  # same arguments, same bytes
    other = make_task_data(kind, tmp_path / "c", sizes=SMALL, seed=1)
    assert files["train"].read_bytes() != other["train"].read_bytes()
    train, test = load_dataset(str(tmp_path / "a"), "train"), load_dataset(str(tmp_path / "a"), "test")
    assert len(train) == 40 and len(test) == 5 and train.texts != test.texts  # each split its own draw
    assert (train.text_pairs is not None) == (kind == "pairs")
    assert train.has_names and set(train.labels) <= set(KINDS[kind][1])
    jsonl = make_task_data(kind, tmp_path / "d", sizes=SMALL, fmt="jsonl")
    assert load_dataset(str(jsonl["train"])).labels == train.labels


def test_multiclass_has_many_string_classes_and_long_learnable_texts(tokenizer):
    rows = make_rows("multiclass", 600)
    counts = Counter(r["label"] for r in rows)
    assert len(counts) == 6 and min(counts.values()) >= 80  # balanced up to the 5% wrong labels
    lengths = [len(tokenizer(r["text"])["input_ids"]) for r in rows[:100]]
    assert min(lengths) > 128 and max(lengths) <= 256
    # the signal: counting each topic's words finds the label far above chance (1/6), and the wrong
    # labels and the mixed-in words of other topics keep it from being perfect
    from deepcuts_fast.data.synthetic import TOPICS

    topic = {w: t for t, words in TOPICS.items() for w in words.split()}
    hits = sum(Counter(topic[w] for w in r["text"].lower().replace(".", "").split() if w in topic).most_common(1)[0][0]
               == r["label"] for r in rows)
    assert 0.7 < hits / len(rows) < 0.97


def test_imbalanced_share_and_pairs_labels():
    assert Counter(r["label"] for r in make_rows("imbalanced", 1000)) == {"routine": 900, "urgent": 100}
    assert Counter(r["label"] for r in make_rows("imbalanced", 1000, minority=0.3))["urgent"] == 300
    pairs = make_rows("pairs", 300)
    assert set(Counter(r["label"] for r in pairs)) == {"entailment", "neutral", "contradiction"}
    assert all(r["text"] and r["text_pair"] for r in pairs)


def test_make_data_command_and_its_refusals(tmp_path, capsys):
    out = tmp_path / "mc"
    code, stdout, _ = _run(["make-data", "multiclass", str(out), "--train", "12", "--validation", "0", "--test", "6",
                            "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)["splits"]
    assert set(summary) == {"train", "test"} and summary["train"]["rows"] == 12
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "test.csv", "train.csv"]
    code, _, err = _run(["make-data", "multiclass", str(out)], capsys)  # never over existing data unasked
    assert code == 2 and "--overwrite" in err
    code, _, err = _run(["make-data", "pairs", str(out), "--overwrite", "--format", "jsonl", "--train", "8",
                         "--quiet"], capsys)  # the earlier csv splits would go stale beside the new jsonl ones
    assert code == 2 and "test.csv, train.csv" in err and "does not write again" in err
    code, _, _ = _run(["make-data", "pairs", str(out), "--overwrite", "--train", "8", "--quiet"], capsys)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == [MANIFEST, "test.csv", "train.csv", "validation.csv"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = _run(["make-data", "pairs", str(tmp_path / "mine"), "--overwrite"], capsys)
    assert code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(DeepCutsError, match="unknown kind"):
        make_task_data("multi-class", tmp_path / "x")
    with pytest.raises(DeepCutsError, match="at least 1 row"):
        make_task_data("pairs", tmp_path / "y", sizes={"train": 0})


# --- data helpers the job uses ---------------------------------------------------------------------------------


def test_truncation_share_and_pairs_in_batches(tokenizer):
    data = TextDataset(["a b c d e f g h"] * 3 + ["a b"], ["x", "y", "x", "y"])
    share, whole = truncation(data, tokenizer, max_length=6)
    assert share == 0.75 and whole == 10  # [CLS] 8 words [SEP]
    assert truncation(data, tokenizer, max_length=64)[0] == 0.0
    pairs = TextDataset(["the man is running ."] * 2, ["neutral", "entailment"], ["a man runs .", "he is tall ."])
    (batch,) = make_batches(pairs, tokenizer, batch_size=2, max_length=8)
    assert batch["input_ids"].shape[1] <= 8 and batch["token_type_ids"].max() == 1  # both texts, cut together
    assert batch["labels"].tolist() == [1, 0]


def test_check_seen_names_the_classes_training_lacks():
    train = TextDataset(["a", "b"], ["sports", "music"])
    check_seen(TextDataset(["c"], [" music "]), train)  # a class missing from a split is fine
    with pytest.raises(DeepCutsError, match=r"'finance' \(2 rows\)"):
        check_seen(TextDataset(["c", "d", "e"], ["finance", "music", "finance"], name="test"), train)
    with pytest.raises(DeepCutsError, match="3 \\(1 rows\\)"):
        check_seen(TextDataset(["c"], [3]), TextDataset(["a", "b"], [0, 1]))
    check_seen(TextDataset(["c"], [0.5]), TextDataset(["a"], [1.5]))  # regression targets are not classes


# --- the main job on each kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_job_runs_end_to_end_on_every_kind(kind, encoder_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / kind
    make_task_data(kind, data, sizes=SMALL)
    out = tmp_path / "run"
    code, _, err = _run(_job(encoder_dir, data, out, "--max-length", "48"), capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    test = load_dataset(str(data), "test")
    assert results["dense"]["n"] == len(test) and results["settings"]["max_length"] == 48
    assert results["settings"]["validation_examples"] == SMALL["validation"]
    assert all(0 <= r["accuracy"] <= 1 for r in results["paper_mode"] + results["structured_mode"])
    classes = sorted(KINDS[kind][1])
    slim = dc.from_pretrained(out / "slim-keep0.5")  # the saved model keeps the class names of the data
    assert slim.config.num_labels == len(classes) and slim.config.label2id == {c: i for i, c in enumerate(classes)}
    (entry,) = (tmp_path / "cache" / "finetuned").iterdir()  # fine-tuned at the job's length, not the recipe's 64
    assert json.loads((entry / "deepcuts_finetune.json").read_text())["fields"]["data"]["max_length"] == 48
    if kind == "multiclass":  # texts of 150+ words: the job says they are cut, and how long would keep them
        assert "are longer than --max-length 48 tokens" in err


def test_a_held_out_class_never_trained_on_is_a_clear_error(encoder_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "train.csv", [("good match", "sports"), ("stock price", "finance")] * 4)
    _write(data / "validation.csv", [("good match", "sports")])
    _write(data / "test.csv", [("new album", "music"), ("stock fell", "finance")])
    code, _, err = _run(_job(encoder_dir, data, tmp_path / "run"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "'music' (1 rows)" in err and "train split" in err and "Add training examples" in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_max_length_beyond_the_models_positions_is_refused_before_fine_tuning(encoder_dir, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    make_task_data("imbalanced", data, sizes=SMALL)
    code, _, err = _run(_job(encoder_dir, data, tmp_path / "run", "--max-length", "256"), capsys)
    assert code == 2 and "--max-length 256 is longer than model" in err and "--max-length 64 or less" in err
    assert not (tmp_path / "cache" / "finetuned").exists()  # refused before any training
