"""Data files of token classification (words with tags) and extractive QA (SQuAD rows): their labels checked by hand
on known examples, the refusals of a file that does not fit the model, and `deepcuts eval` / `prune` on them."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.data import (AnswerDataset, TaggedDataset, encode_task_data, load_task_data, make_batches)
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.models import load_config
from deepcuts_fast.tasks import IGNORED

from conftest import TINY

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
CONTEXT = "The Eiffel Tower stands in Paris, the capital of France, beside the river Seine."
SENTENCES = [(["EU", "rejects", "Germanyyy", "call"], ["B-ORG", "O", "B-ORG", "O"]),
             (["John", "Smith", "visits", "Acme", "Corp"], ["B-PER", "I-PER", "O", "B-ORG", "I-ORG"]),
             (["Mary", "works", "at", "Globex"], ["B-PER", "O", "O", "B-ORG"]),
             (["The", "EU", "and", "Bob", "met"], ["O", "B-ORG", "O", "B-PER", "O"])]


def answer(question: str, text: str) -> dict:
    """A SQuAD row about CONTEXT whose answer is `text` (empty: no answer)."""
    starts = [CONTEXT.index(text)] if text else []
    return {"question": question, "context": CONTEXT,
            "answers": {"text": [text] if text else [], "answer_start": starts}}


QUESTIONS = [answer("Where is the tower?", "Paris"), answer("Which river?", "river Seine"),
             answer("Capital of what?", "France"), answer("Who built it?", "")]


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def save_folder(head: str, folder, **labels):
    """A tiny BERT folder with `head` (a transformers class suffix) and the MiniLM tokenizer; weights drawn with a
    large std so outputs depend on the text and change when units are pruned."""
    tokenizer = dc.load_tokenizer("minilm")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"],
                                     num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"],
                                     num_hidden_layers=TINY["layers"], max_position_embeddings=64,
                                     initializer_range=0.5, **labels)
    torch.manual_seed(0)
    getattr(transformers, f"Bert{head}")(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return save_folder("ForTokenClassification", tmp_path_factory.mktemp("tagger"), num_labels=len(TAGS),
                       id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    return save_folder("ForQuestionAnswering", tmp_path_factory.mktemp("reader"))


@pytest.fixture(scope="module")
def tags_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("tags") / "tags.jsonl",
                       [{"tokens": words, "tags": tags} for words, tags in SENTENCES])


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl", QUESTIONS)


def run(argv: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


# --- labels ---------------------------------------------------------------------------------------------------


def test_the_first_sub_token_of_each_word_carries_its_tag_and_every_other_token_none(tagger, tmp_path):
    tokenizer = dc.load_tokenizer("minilm")
    assert len(tokenizer.tokenize("Germanyyy")) == 3  # one word, three sub-tokens
    data = tmp_path / "tags.json"  # a JSON list, ner_tags as class ids
    data.write_text(json.dumps([{"tokens": ["EU", "rejects", "Germanyyy", "call"], "ner_tags": [3, 0, 3, 0]},
                                {"tokens": ["John", "Smith"], "ner_tags": ["B-PER", "I-PER"]}]))
    dataset = load_task_data(str(data), "test", "token-classification")
    assert isinstance(dataset, TaggedDataset)
    batch = make_batches(encode_task_data(dataset, load_config(str(tagger))), tokenizer, batch_size=2)[0]
    # [CLS] eu rejects german ##y ##y call [SEP] / [CLS] john smith [SEP] padding
    assert batch["labels"].tolist() == [[IGNORED, 3, 0, 3, IGNORED, IGNORED, 0, IGNORED],
                                        [IGNORED, 1, 2, IGNORED, *[IGNORED] * 4]]
    assert batch["labels"].shape == batch["input_ids"].shape


def test_answer_positions_decode_back_to_the_answer_and_a_cut_answer_is_no_answer(qa_file, tmp_path):
    tokenizer = dc.load_tokenizer("minilm")
    dataset = load_task_data(str(qa_file), "test", "question-answering")
    assert isinstance(dataset, AnswerDataset)
    batch = make_batches(dataset, tokenizer, batch_size=4, max_length=64)[0]
    spans = list(zip(batch["start_positions"].tolist(), batch["end_positions"].tolist()))
    decoded = [tokenizer.decode(ids[start:end + 1]) for ids, (start, end) in zip(batch["input_ids"], spans)]
    assert decoded[:3] == ["paris", "river seine", "france"] and spans[3] == (0, 0)  # unanswerable: CLS
    short = make_batches(dataset, tokenizer, batch_size=4, max_length=16)[0]  # "river Seine" and "France" cut off
    start, end = int(short["start_positions"][0]), int(short["end_positions"][0])
    assert tokenizer.decode(short["input_ids"][0][start:end + 1]) == "paris"
    assert short["start_positions"][1:].tolist() == [0, 0, 0] and short["end_positions"][1:].tolist() == [0, 0, 0]
    nested = tmp_path / "squad.json"  # SQuAD's nested form reads as the same rows
    qas = [{"id": str(i), "question": row["question"],
            "answers": [{"text": t, "answer_start": s} for t, s in zip(*row["answers"].values())]}
           for i, row in enumerate(QUESTIONS)]
    nested.write_text(json.dumps({"version": "1.1", "data": [{"title": "Paris",
                                                              "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    assert load_task_data(str(nested), "test", "question-answering") == AnswerDataset(
        dataset.questions, dataset.contexts, dataset.spans, str(nested))


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, words", [
    ({"tokens": ["a", "b"], "tags": ["B-FOO", "O"]}, ["'B-FOO'", "O, B-PER, I-PER, B-ORG, I-ORG"]),
    ({"tokens": ["a", "b"], "tags": [9, 0]}, ["tag id 9", "0 to 4"]),
    ({"tokens": ["a", "b"], "tags": ["O"]}, ["row 1 (line 1)", "2 words but 1 tags"]),
    ({"tokens": "a b", "tags": ["O"]}, ["row 1 (line 1)", "not a non-empty list of words"]),
    ({"tokens": ["a"]}, ["no `tags` column"]),
])
def test_a_bad_token_file_is_refused_by_what_to_fix(row, words, tagger, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DeepCutsError) as e:
        encode_task_data(load_task_data(str(data), "test", "token-classification"), load_config(str(tagger)))
    assert all(w in str(e.value) for w in words), e.value


@pytest.mark.parametrize("answers, words", [
    ({"text": ["Paris"], "answer_start": [3]}, ["row 1 (line 1)", "'Paris' is not at answer_start 3", "found ' Eiff'"]),
    ({"text": ["Paris"]}, ["row 1 (line 1)", '"answer_start"']),
])
def test_a_bad_qa_file_is_refused_by_what_to_fix(answers, words, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Where?", "context": CONTEXT, "answers": answers}])
    with pytest.raises(DeepCutsError) as e:
        load_task_data(str(data), "test", "question-answering")
    assert all(w in str(e.value) for w in words), e.value


def test_a_file_of_another_kind_than_the_models_task_is_refused_in_one_line(tagger, reader, model_dir, data_csv,
                                                                             tags_file, capsys):
    for model, data, words in [
        (reader, data_csv, ["is a question-answering model", "columns text, label", '"question"', '"answers"']),
        (tagger, data_csv, ["is a token-classification model", "BertForTokenClassification", '"tokens"', "`ner_tags`"]),
        (model_dir, tags_file, ["is not a token-classification or QA model", "columns tokens, tags", "`label`"]),
    ]:
        code, out, err = run(["eval", "--model", str(model), "--data", str(data)], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert all(w in err for w in words), err


# --- the command line -----------------------------------------------------------------------------------------


def test_eval_prints_a_taggers_entity_f1_and_a_readers_exact_match_and_f1(tagger, reader, tags_file, qa_file,
                                                                          capsys):
    code, out, err = run(["eval", "--model", str(tagger), "--data", str(tags_file), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["metric"] == "f1" and result["n"] == len(SENTENCES), err
    assert {"precision", "recall", "accuracy"} <= set(result)
    code, out, err = run(["eval", "--model", str(reader), "--data", str(qa_file)], capsys)
    assert code == 0 and "exact_match=" in out and " f1=" in out and f"n={len(QUESTIONS)}" in out, err


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_prune_scores_on_the_files_labels_and_compares_on_its_held_out_split(task, tagger, reader, tmp_path,
                                                                              capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ([{"tokens": words, "tags": tags} for words, tags in SENTENCES] if task == "token-classification"
            else QUESTIONS)
    for split in ("train", "test"):
        write_jsonl(folder / f"{split}.jsonl", rows)
    model = tagger if task == "token-classification" else reader
    code, out, err = run(["prune", "--model", str(model), "--data", str(folder), "--keep-flops", "0.5",
                          "--max-length", "32", "--out", str(tmp_path / "slim"), "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and "distillation" not in err, err
    held_out = summary["held_out"]
    assert held_out["split"] == "test" and held_out["n"] == len(rows) and held_out["metric"] == "f1", held_out
    assert dc.from_pretrained(tmp_path / "slim").config.architectures == json.loads(
        (model / "config.json").read_text())["architectures"]
