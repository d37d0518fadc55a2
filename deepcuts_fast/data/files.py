"""Reading one local data file (CSV, TSV, JSON, JSON lines, or plain text with one text a line) into named columns,
strictly: a row whose fields do not match the header, a repeated column name or JSON key, a blank line of a text
file, or a line that is not valid is refused by its line, never guessed at, because a guess silently shifts texts
and labels. A JSON file in SQuAD's nested form (`{"data": [{"paragraphs": [...]}]}`) is read as one row per
question."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DeepCutsError
from .dataset import row_name

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".txt")
TEXT_SUFFIX = ".txt"  # plain text: one text a line, no labels
# Characters one CSV/TSV field may hold (the csv module's default is 131,072). Long texts are fine, tokenization
# cuts them; a field longer than this is more likely an unclosed quote that swallowed the rest of the file.
FIELD_LIMIT = 16 * 1024 * 1024


def read_columns(path: Path) -> tuple[dict[str, list], list[int] | None]:
    """The columns of a data file with at least one row, and the file line each row starts on (None for a JSON
    list, whose rows are named by number only)."""
    rows, lines = _read_rows(path)
    if not rows:
        raise DeepCutsError(f"data file {str(path)!r} has no rows; add rows with a text and a label")
    return _to_columns(rows, lines, str(path)), lines


def _read_rows(path: Path) -> tuple[list, list[int] | None]:
    """The file's rows (column -> value) in file order, with the line each starts on."""
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DeepCutsError(f"data file {str(path)!r} is not UTF-8 text; save it as UTF-8") from e
    suffix = path.suffix.lower()
    if not content.strip():
        needs = "one text a line" if suffix == TEXT_SUFFIX else "a `text` column (and a `label` column for labels)"
        raise DeepCutsError(f"data file {str(path)!r} is empty; it needs {needs}")
    if suffix == TEXT_SUFFIX:
        return _read_text_lines(content, str(path))
    if suffix in (".csv", ".tsv"):
        return _read_delimited(content, str(path), tsv=suffix == ".tsv")
    if suffix == ".json":
        return _read_json(content, str(path))
    return _read_json_lines(content, str(path))


def _read_delimited(content: str, name: str, tsv: bool) -> tuple[list[dict[str, str]], list[int]]:
    """CSV (quoted fields allowed, strictly), or TSV read literally as GLUE ships it; the first non-blank line is
    the header, blank lines are skipped, and every other line must have one field per header column."""
    csv.field_size_limit(FIELD_LIMIT)  # a process-wide setting, raised from the default
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    reader = csv.reader(io.StringIO(content), strict=True, **options)
    header: list[str] | None = None
    rows, lines, end = [], [], 0
    while True:
        start = end + 1
        try:
            fields = next(reader, None)
        except csv.Error as e:
            raise DeepCutsError(_csv_error(name, start, str(e), tsv)) from e
        end = reader.line_num
        if fields is None:
            return rows, lines
        if not fields:
            continue
        if header is None:
            header = _header(fields, name, start)
            continue
        if len(fields) != len(header):
            raise DeepCutsError(_field_count_error(name, start, len(fields), header, tsv))
        rows.append(dict(zip(header, fields)))
        lines.append(start)


def _read_text_lines(content: str, name: str) -> tuple[list[dict[str, str]], list[int]]:
    """One text a line (a `text` column, no labels); a blank line is refused, since it would be an empty text (one
    final newline is fine). Lines end at newlines only, as in JSON lines."""
    rows, lines = [], []
    for number, line in enumerate(content.removesuffix("\n").split("\n"), 1):
        text = line.removesuffix("\r")
        if not text.strip():
            raise DeepCutsError(f"{name}: line {number} is blank; a text file holds one non-empty text a line, so "
                                "remove the blank line")
        rows.append({"text": text})
        lines.append(number)
    return rows, lines


def _header(fields: list[str], name: str, line: int) -> list[str]:
    """The header's column names, none of them repeated (a repeated name would hide one column's values)."""
    repeated = [column for column, n in Counter(fields).items() if n > 1]
    if repeated:
        raise DeepCutsError(f"{name}: line {line} (the header) repeats the column {', '.join(map(repr, repeated))}; "
                            "rename or remove the repeated column so each name is used once")
    return fields


def _field_count_error(name: str, line: int, count: int, header: list[str], tsv: bool) -> str:
    """What is wrong with a row of `count` fields under `header`, and how to fix it."""
    if count > len(header):
        fix = "TSV is read literally, so remove the tabs inside texts" if tsv else "quote fields that contain commas"
    else:
        fix = "add the missing fields" + ("" if tsv else ", quote a text that spans lines,") + " or remove the line"
    fields = f"{count} {'TSV' if tsv else 'CSV'} field{'s' * (count != 1)}"
    return f"{name}: line {line} has {fields} but the header has {len(header)} ({', '.join(header)}); {fix}"


def _csv_error(name: str, line: int, problem: str, tsv: bool) -> str:
    """A csv module error at the row starting on `line`, in words that say what to fix."""
    if problem.startswith("field larger than field limit"):
        hint = "" if tsv else ", or close the quote left open on or after that line"
        return (f"{name}: line {line} has a field of over {FIELD_LIMIT:,} characters, more than a data file may "
                f"hold; shorten that text (only its first --max-length tokens are read){hint}")
    if problem == "unexpected end of data":
        return (f"{name}: the row from line {line} opens a quoted field that is never closed; close that quote, and "
                'double each quote inside a quoted field ("")')
    return (f"{name}: line {line} is not valid {'TSV' if tsv else 'CSV'} ({problem}); put fields that contain "
            'commas, quotes or line breaks in double quotes, and double each quote inside them ("")')


class _RepeatedKeys(dict):
    """A JSON object that repeats a key (the json module silently keeps the last value); refused as a row."""

    repeated: list[str]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict, marked as `_RepeatedKeys` when a key occurs twice (json's object_pairs_hook)."""
    repeated = [key for key, n in Counter(key for key, _ in pairs).items() if n > 1]
    if not repeated:
        return dict(pairs)
    marked = _RepeatedKeys(pairs)
    marked.repeated = repeated
    return marked


def _read_json(content: str, name: str) -> tuple[list, list[int] | None]:
    """A JSON list of row objects, or one row object; a file that is not one JSON value is read as JSON lines
    (unless it opens a list, whose error is then named by its line)."""
    try:
        data = json.loads(content, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        if content.lstrip().startswith("["):
            raise DeepCutsError(f"{name}: line {e.lineno} is not valid JSON ({e.msg}); fix the list there") from e
        return _read_json_lines(content, name)
    if isinstance(data, list):
        return data, None
    if isinstance(data, dict) and _is_squad(data):
        return _squad_rows(data, name), None
    if isinstance(data, dict):
        _check_unwrapped(data, name)
    return [data], None


def _is_squad(data: dict) -> bool:
    """Whether one JSON object is a file in SQuAD's nested form: `{"data": [{"paragraphs": [...]}, ...]}`."""
    articles = data.get("data")
    return isinstance(articles, list) and bool(articles) and all(
        isinstance(article, dict) and "paragraphs" in article for article in articles)


def _squad_rows(data: dict, name: str) -> list[dict]:
    """One row per question of a nested SQuAD file ({"question", "context", "answers"}, the flat form the hub's
    `squad` data sets use), answers as `{"text": [...], "answer_start": [...]}` (empty for an unanswerable one)."""
    rows = []
    for article in data["data"]:
        if not isinstance(article["paragraphs"], list) or not all(map(_squad_paragraph, article["paragraphs"])):
            raise DeepCutsError(f"{name}: is nested SQuAD data with a paragraph that is not "
                                '{"context": ..., "qas": [{"question": ..., "answers": [...]}]}; fix it, or '
                                "flatten the file to one JSON row per question")
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                rows.append({"question": qa.get("question"), "context": paragraph.get("context"),
                             "answers": {"text": [a.get("text") for a in answers],
                                         "answer_start": [a.get("answer_start") for a in answers]}})
    return rows


def _squad_paragraph(paragraph: Any) -> bool:
    """Whether a nested SQuAD paragraph has the form rows are read from: a `qas` list of question objects, each
    with a list of answer objects."""
    return (isinstance(paragraph, dict) and isinstance(paragraph.get("qas"), list)
            and all(isinstance(qa, dict) and isinstance(qa.get("answers", []), list)
                    and all(isinstance(a, dict) for a in qa.get("answers", [])) for qa in paragraph["qas"]))


def _check_unwrapped(data: dict, name: str) -> None:
    """Refuse one object that holds the rows under a key (`{"data": [{...}, ...]}`) rather than being a row."""
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            raise DeepCutsError(
                f"{name}: holds one object whose {key!r} is a list of objects, not the rows themselves; "
                'write the file as a JSON list of rows ([{"text": ..., "label": ...}, ...]) or one row per line'
            )


def _read_json_lines(content: str, name: str) -> tuple[list, list[int]]:
    """One JSON object per line; blank lines are skipped. Lines end at newlines only: a JSON string may hold other
    line separators (U+2028, ...) unescaped."""
    rows, lines = [], []
    for number, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, object_pairs_hook=_unique_keys))
        except json.JSONDecodeError as e:
            raise DeepCutsError(f"{name}: line {number} is not valid JSON ({e.msg}); fix or remove that line") from e
        lines.append(number)
    return rows, lines


def _to_columns(rows: list, lines: list[int] | None, name: str) -> dict[str, list]:
    """Column name -> values (None where a row lacks the column); every row must be an object without repeated
    keys."""
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DeepCutsError(
                f'{name}: {row_name(index, lines)} is not an object; write each row as {{"text": ..., "label": ...}}'
            )
        if isinstance(row, _RepeatedKeys):
            raise DeepCutsError(f"{name}: {row_name(index, lines)} repeats the key "
                                f"{', '.join(map(repr, row.repeated))}; keep one value per key")
    names = dict.fromkeys(key for row in rows for key in row)
    return {key: [row.get(key) for row in rows] for key in names}
