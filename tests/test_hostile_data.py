"""Hostile local data files: rows with too many or too few fields, repeated column names or JSON keys, two files for
one split, over-long fields, JSON rows without their text or label or nested one level too deep. Each is refused with
one line that names the file, the line and the fix, through `load_dataset` and through `deepcuts eval`; valid files
with long texts, blank lines and quoted line breaks still load."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deepcuts_fast.cli import main
from deepcuts_fast.data import load_dataset
from deepcuts_fast.data.files import FIELD_LIMIT
from deepcuts_fast.errors import DeepCutsError

# The portable pass (make test-portable) skips this file: malformed data files refused with one line
pytestmark = pytest.mark.isa_independent

EXTRA_CSV = "text,label\ngood film,1\nbad film,0\nit was 1,0,1\nawful,0\n"  # unquoted comma on line 4
EXTRA_TSV = "text\tlabel\ngood film\t1\nit was\t1\t0\n"
DUPLICATE = "text,label,label\ngood film,1,0\n"

HOSTILE = [  # (file name, content, words the refusal must hold besides the file's name)
    ("extra.csv", EXTRA_CSV,
     ["line 4", "3 CSV fields", "header has 2 (text, label)", "quote fields that contain commas"]),
    ("extra.tsv", EXTRA_TSV, ["line 3", "3 TSV fields", "header has 2", "remove the tabs inside texts"]),
    ("short.csv", "text,label\ngood film,1\nit was 1\n", ["line 3", "1 CSV field", "add the missing fields"]),
    ("short.tsv", "text\tlabel\ngood film\t1\nawful\n", ["line 3", "1 TSV field", "add the missing fields"]),
    ("late.csv", 'text,label\n"two\nlines",1\n\nx,1,2\n', ["line 5", "3 CSV fields"]),  # a quoted break, a blank line
    ("labels.csv", DUPLICATE, ["line 1", "repeats the column 'label'", "rename or remove"]),
    ("texts.tsv", "text\tlabel\ttext\na\t1\tb\n", ["line 1", "repeats the column 'text'", "rename or remove"]),
    ("open.csv", 'text,label\ngood,1\n"bad,0\nfine,1\n', ["line 3", "never closed", "close that quote"]),
    ("stray.csv", 'text,label\n"bad" film,0\n', ["line 2", "not valid CSV", "double quotes"]),
    ("nolabel.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b"}\n', ["row 2 (line 3)", "no label", "fill it in"]),
    ("notext.jsonl", '{"text": "a", "label": 0}\n{"label": 1}\n', ["row 2 (line 2)", "no `text`", "fill it in"]),
    ("nested.jsonl", '{"text": "a", "label": 1}\n{"text": {"en": "b"}, "label": 0}\n',
     ["row 2 (line 2)", "`text` {'en': 'b'}, a JSON dict, not a text", "write each text as a string"]),
    ("rowlist.jsonl", '[{"text": "a", "label": 1}, {"text": "b", "label": 0}]\n',
     ["row 1 (line 1)", "not an object", "write each row as"]),
    ("wrapped.json", json.dumps({"data": [{"text": "a", "label": 1}]}),
     ["'data' is a list of objects, not the rows themselves", "JSON list of rows"]),
    ("twice.jsonl", '{"text": "a", "label": 1, "label": 0}\n',
     ["row 1 (line 1)", "repeats the key 'label'", "keep one"]),
    ("twice.json", '[{"text": "a", "label": 1},\n {"text": "b", "text": "c", "label": 0}]',
     ["row 2", "repeats the key 'text'", "keep one"]),
    ("broken.json", '[{"text": "a", "label": 1},\n {"text": "b", "label": 0},\n]', ["line 3", "not valid JSON"]),
]
CLI_CASES = ["extra.csv", "extra.tsv", "short.csv", "labels.csv", "nolabel.jsonl"]


def _error(path: Path, split: str = "test") -> str:
    """The one-line message of the DeepCutsError that loading `path` raises; it names the file."""
    with pytest.raises(DeepCutsError) as info:
        load_dataset(str(path), split)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def refused(capsys, argv: list[str], *words: str) -> str:
    """`deepcuts ARGV` must exit 2 with a single `deepcuts: error:` line on stderr holding every one of `words`."""
    code = main(argv + ["--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and not out, err
    assert err.startswith("deepcuts: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, content, words", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_file_is_refused_by_its_line(tmp_path, name, content, words):
    message = _error(_write(tmp_path / name, content))
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name, content, words", [case for case in HOSTILE if case[0] in CLI_CASES],
                         ids=CLI_CASES)
def test_eval_refuses_a_hostile_file_in_one_line(tmp_path, model_dir, capsys, name, content, words):
    path = _write(tmp_path / name, content)
    refused(capsys, ["eval", "--model", str(model_dir), "--data", str(path)], str(path), *words)


def test_two_files_for_one_split_are_refused_by_name(tmp_path, model_dir, capsys):
    _write(tmp_path / "train.csv", "text,label\na,0\nb,1\n")
    _write(tmp_path / "test.csv", "text,label\nc,1\n")
    _write(tmp_path / "test.jsonl", '{"text": "d", "label": 0}\n')
    words = ["2 files for the 'test' split", "test.csv, test.jsonl", "remove or rename all but one"]
    for split in ("test", "train"):  # train too: the test split's class names would be read from either file
        message = _error(tmp_path, split)
        assert all(word in message for word in words), message
    refused(capsys, ["eval", "--model", str(model_dir), "--data", str(tmp_path)], *words)


def test_a_field_over_the_limit_is_refused_with_what_to_do(tmp_path, model_dir, capsys):
    path = tmp_path / "huge.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], ["fine", 0], ["x" * (FIELD_LIMIT + 1), 1]])
    words = ["line 3", f"over {FIELD_LIMIT:,} characters", "shorten that text", "close the quote"]
    message = _error(path)
    assert all(word in message for word in words), message
    refused(capsys, ["eval", "--model", str(model_dir), "--data", str(path)], *words)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_long_text_loads_whole(tmp_path, model_dir, capsys, suffix):
    long_text = "a long review " * 20_000  # 280,000 characters, over the csv module's default field limit
    path = tmp_path / f"long{suffix}"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writerows([["text", "label"], [long_text, 1], ["short", 0]])
    data = load_dataset(str(path))
    assert data.texts == [long_text, "short"] and data.labels == [1, 0]
    assert main(["eval", "--model", str(model_dir), "--data", str(path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "n=2" in out and "error" not in err


def test_valid_files_with_blank_lines_breaks_and_separators_load(tmp_path):
    csv_path = _write(tmp_path / "ok.csv", 'text,label\n\n"one, with\na break",1\n\n"say ""hi""",0\n')
    data = load_dataset(str(csv_path))
    assert data.texts == ["one, with\na break", 'say "hi"'] and data.labels == [1, 0]
    indexed = load_dataset(str(_write(tmp_path / "indexed.csv", ",text,label\n0,a,1\n1,b,0\n")))  # pandas' index
    assert indexed.texts == ["a", "b"] and indexed.labels == [1, 0]
    text = "first part\u2028second part\x85third"  # line separators a JSON string may hold unescaped
    lines = json.dumps({"text": text, "label": 1}, ensure_ascii=False) + "\n\n" + json.dumps({"text": "b", "label": 0})
    data = load_dataset(str(_write(tmp_path / "ok.jsonl", lines)))
    assert data.texts == [text, "b"] and data.labels == [1, 0]
