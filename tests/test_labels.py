"""Class labels: names map through the model's `label2id`, else sorted over all splits of the data, and a
fine-tuned model records the mapping it was trained with."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from conftest import TINY, tiny_batches, tiny_model

from deepcuts_fast.data import TextDataset, check_labels, encode_labels, load_dataset, make_batches, named_labels
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.train import evaluate

# The portable pass (make test-portable) skips this file: class-name mappings, asserted as mappings
pytestmark = pytest.mark.isa_independent

MNLI = {"entailment": 0, "neutral": 1, "contradiction": 2}


def _error(func, *args, **kwargs) -> str:
    """The one-line message of the DeepCutsError that func raises."""
    with pytest.raises(DeepCutsError) as info:
        func(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def _csv(path, labels, texts=None):
    """Write a `text,label` CSV with one row per label."""
    texts = texts or [f"row {i}" for i in range(len(labels))]
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels)), encoding="utf-8")
    return path


def _named_config(label2id=MNLI):
    """The config of a tiny classifier whose head names its classes."""
    config = tiny_model("bert", num_labels=len(label2id)).config
    config.label2id = dict(label2id)
    config.id2label = {i: name for name, i in label2id.items()}
    return config


# --- mapping through the model's label2id ----------------------------------------------------------


def test_names_map_through_the_models_label2id_not_alphabetically(tmp_path):
    data = load_dataset(str(_csv(tmp_path / "mnli.csv", ["entailment", "neutral", "contradiction", " neutral "])))
    assert data.labels == ["entailment", "neutral", "contradiction", "neutral"] and data.num_labels == 3
    assert encode_labels(data, _named_config()).labels == [0, 1, 2, 1]
    assert encode_labels(data).labels == [1, 2, 0, 2]  # sorted names, what a model without named labels gets


def test_id2label_alone_names_the_labels_and_case_may_differ():
    config = tiny_model("bert", num_labels=3).config
    config.id2label = {0: "Entailment", 1: "Neutral", 2: "Contradiction"}
    config.label2id = {f"LABEL_{i}": i for i in range(3)}  # a config saved with default label2id only
    assert named_labels(config) == {"Entailment": 0, "Neutral": 1, "Contradiction": 2}
    data = TextDataset(["a", "b", "c"], ["contradiction", "entailment", "NEUTRAL"], name="cased")
    assert encode_labels(data, config).labels == [2, 0, 1]


def test_ambiguous_case_insensitive_match_is_an_error():
    data = TextDataset(["a"], ["POS"], name="amb")
    message = _error(encode_labels, data, _named_config({"pos": 0, "Pos": 1}))
    assert "'POS'" in message and "pos, Pos" in message


def test_unknown_label_name_lists_the_models_labels(tmp_path):
    data = load_dataset(str(_csv(tmp_path / "typo.csv", ["entailment", "netural", "contradicton"])))
    message = _error(encode_labels, data, _named_config())
    assert str(tmp_path / "typo.csv") in message
    assert "'contradicton', 'netural'" in message and "entailment, neutral, contradiction" in message
    assert "Rename" in message
    assert message == _error(check_labels, data, _named_config())


def test_default_label_names_mean_sorted_order():
    config = tiny_model("bert", num_labels=3).config
    assert named_labels(config) is None  # LABEL_0, LABEL_1, LABEL_2
    data = TextDataset(["a", "b", "c"], ["pos", "neg", "mid"], name="toy")
    assert encode_labels(data, config).labels == [2, 1, 0] == encode_labels(data, 3).labels
    assert "3 class names" in _error(encode_labels, data, 2) and "3 labels" in _error(encode_labels, data, 2)
    assert "regression head" in _error(encode_labels, data, 1)


def test_integer_labels_stay_and_are_checked_against_named_heads():
    data = TextDataset(["a", "b"], [2, 0], name="ids")
    assert encode_labels(data, _named_config()).labels == [2, 0]
    assert "(0..2)" in _error(encode_labels, TextDataset(["a"], [3], name="ids"), _named_config())


# --- the same ids in every split ---------------------------------------------------------------------


def test_split_files_of_a_folder_share_one_numbering(tmp_path):
    _csv(tmp_path / "train.csv", ["b", "c", "b"])
    (tmp_path / "test.jsonl").write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": "c"}\n',
                                         encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text('{"description": "not a split"}', encoding="utf-8")
    train, test = load_dataset(str(tmp_path), "train"), load_dataset(str(tmp_path), "test")
    assert train.classes == test.classes == ("a", "b", "c")
    assert encode_labels(train).labels == [1, 2, 1] and encode_labels(test).labels == [0, 2]
    assert make_batches(test, _Tokenizer(), batch_size=4)[0]["labels"].tolist() == [0, 2]


def test_hub_class_names_are_numbered_over_all_splits(monkeypatch):
    splits = {"train": {"text": ["x", "y"], "label": ["pos", "neg"]}, "test": {"text": ["z"], "label": ["meh"]}}

    def fake_load(path, config, split):
        if split is None:  # the whole DatasetDict
            return {name: _HubSplit(columns) for name, columns in splits.items()}
        return _HubSplit(splits[split])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    train = load_dataset("someone/reviews", "train")
    assert train.classes == ("meh", "neg", "pos") and encode_labels(train).labels == [2, 1]


class _HubSplit(dict):
    """A stand-in for one split of a hub dataset: column access by name, `to_dict`."""

    def to_dict(self) -> dict:
        return dict(self)


class _Tokenizer:
    """The least of a tokenizer `make_batches` needs: one token per text."""

    def __call__(self, texts, pairs=None, **kwargs):
        n = len(texts)
        return {"input_ids": torch.ones(n, 1, dtype=torch.long), "attention_mask": torch.ones(n, 1, dtype=torch.long)}


# --- bad labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, kind", [({"a": 1}, "dict"), ([1, 2], "list")])
def test_a_json_object_or_list_label_is_an_error_naming_the_row(tmp_path, label, kind):
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "pos"}) + "\n" + json.dumps({"text": "x", "label": label}),
                    encoding="utf-8")
    message = _error(load_dataset, str(path))
    assert "row 2" in message and kind in message and "class name or number" in message


def test_real_labels_never_become_classes(tmp_path):
    _csv(tmp_path / "train.csv", [0, 1])
    _csv(tmp_path / "test.csv", ["1.0", "0.5"])
    test = load_dataset(str(tmp_path), "test")
    assert test.is_regression and test.labels == [1.0, 0.5]
    assert "regression" in _error(encode_labels, test, tiny_model("bert", num_labels=2).config)
    batches = [{**b, "labels": b["labels"].float() + 0.5} for b in tiny_batches(1)]
    assert "real numbers" in _error(evaluate, tiny_model("bert", num_labels=2), batches)


# --- the whole path: eval of a named-label model, and the fine-tune cache -----------------------------


@pytest.fixture(scope="module")
def mnli_model_dir(tmp_path_factory):
    """A tiny MNLI-style classifier folder that always predicts class 0 ("entailment")."""
    from transformers import BertConfig, BertForSequenceClassification

    import deepcuts_fast as dc

    tokenizer = dc.load_tokenizer("minilm")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"],
                        num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"],
                        num_hidden_layers=TINY["layers"], max_position_embeddings=64,
                        id2label={i: name for name, i in MNLI.items()}, label2id=dict(MNLI))
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    path = tmp_path_factory.mktemp("mnli_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_eval_of_a_named_label_model_uses_its_label2id(mnli_model_dir, tmp_path, capsys):
    from deepcuts_fast.cli import main

    data = _csv(tmp_path / "mnli.csv", ["entailment"] * 9 + ["neutral"], [f"premise {i}" for i in range(10)])
    assert main(["eval", "--model", str(mnli_model_dir), "--data", str(data), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(0.9)  # alphabetical ids gave 0.0
    bad = _csv(tmp_path / "bad.csv", ["entailment", "positive"])
    assert main(["eval", "--model", str(mnli_model_dir), "--data", str(bad), "--quiet"]) == 2
    assert "'positive'" in capsys.readouterr().err


def test_fine_tune_records_the_class_names(encoder_dir, tmp_path, monkeypatch):
    from deepcuts_fast.task import finetuned_task_model

    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    _csv(data / "train.csv", ["pos", "neg", "pos", "neg"], ["good film", "bad film", "great", "awful"])
    _csv(data / "test.csv", ["meh", "pos"], ["fine", "good"])
    task = finetuned_task_model(str(encoder_dir), str(data), progress=False)
    names = {"meh": 0, "neg": 1, "pos": 2}
    assert task.model.config.num_labels == 3 and task.model.config.label2id == names
    (entry,) = (tmp_path / "cache" / "finetuned").iterdir()
    meta = json.loads((entry / "deepcuts_finetune.json").read_text())
    assert meta["label2id"] == names and meta["fields"]["labels"] == ["meh", "neg", "pos"]
    saved = json.loads((entry / "config.json").read_text())
    assert saved["id2label"] == {"0": "meh", "1": "neg", "2": "pos"}
    again = finetuned_task_model(str(encoder_dir), str(data), progress=False)
    assert again.cached and again.model.config.label2id == names
    assert encode_labels(load_dataset(str(data), "test"), again.model.config).labels == [0, 2]
    assert task.initial_model().config.label2id == names
    _csv(data / "test.csv", ["so-so", "pos"], ["fine", "good"])  # other class names: another cache entry
    renamed = finetuned_task_model(str(encoder_dir), str(data), progress=False)
    assert not renamed.cached and renamed.model.config.label2id == {"neg": 0, "pos": 1, "so-so": 2}
