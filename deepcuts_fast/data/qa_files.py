"""Extractive question-answering data files: SQuAD rows (`question`, `context`, `answers` as
`{"text": [...], "answer_start": [...]}`) as an `AnswerDataset`, and their token batches, whose `start_positions` /
`end_positions` are the first and last token of the first answer, or the first (CLS) token, "no answer", for a
question without answers and for an answer that truncation cut out of the context, as transformers' run_qa.py
labels them. The QA metric reads only these positions, so nothing else of the answers is carried."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DeepCutsError
from ..tasks.question_answering import NO_ANSWER
from .dataset import row_name, short_value

QA_COLUMNS = ("question", "context", "answers")
QA_TASK = "question-answering"
Span = tuple[int, int]  # an answer's characters in its context: first, one past the last


@dataclass
class AnswerDataset:
    """Questions, each with the context it is answered from and its first answer's character span in that context
    (None: unanswerable)."""

    questions: list[str]
    contexts: list[str]
    spans: list[Span | None]
    name: str = ""

    def __len__(self) -> int:
        return len(self.questions)

    def chars(self, i: int) -> int:
        """Characters in example `i`: a cheap proxy for its token count, to batch similar lengths together."""
        return len(self.questions[i]) + len(self.contexts[i])

    def encode(self, rows: np.ndarray, tokenizer, max_length: int, padding: str) -> dict[str, torch.Tensor]:
        """The batch of the given rows: question and context as a pair, only the context truncated to fit
        `max_length` tokens, with each answer's `start_positions` and `end_positions` (0 and 0 when there is none
        among the tokens kept)."""
        if not getattr(tokenizer, "is_fast", False):
            raise DeepCutsError("question-answering data needs a fast tokenizer (one with offset mappings) to find "
                                "each answer's tokens; give a model folder with a tokenizer.json")
        try:
            encoded = tokenizer([self.questions[i] for i in rows], [self.contexts[i] for i in rows],
                                truncation="only_second", max_length=max_length, padding=padding,
                                return_offsets_mapping=True, return_tensors="pt")
        except Exception as e:  # the fast tokenizer raises a bare Exception when the question alone is too long
            if "Truncation error" not in str(e):
                raise
            raise DeepCutsError(f"dataset {self.name!r} has a question that leaves no room for its context in "
                                f"--max-length {max_length} tokens; raise --max-length or shorten the question") from e
        offsets = encoded.pop("offset_mapping").tolist()
        positions = [_token_span(encoded.sequence_ids(row), offsets[row], self.spans[i])
                     for row, i in enumerate(rows)]
        batch = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
        return {**batch, "start_positions": torch.tensor([start for start, _ in positions]),
                "end_positions": torch.tensor([end for _, end in positions])}


def _token_span(sequence_ids: list[int | None], offsets: list[list[int]], span: Span | None) -> tuple[int, int]:
    """The first and last token of the answer `span` among the context tokens (sequence 1), `NO_ANSWER` when there
    is no answer or it is not wholly among the tokens kept."""
    context = [i for i, sequence in enumerate(sequence_ids) if sequence == 1]
    if span is None or not context:
        return NO_ANSWER
    start, end = span
    if offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return NO_ANSWER
    first = max(i for i in context if offsets[i][0] <= start)
    last = min(i for i in context if offsets[i][1] >= end)
    return first, last


def answers_from_columns(columns: dict[str, list], name: str, lines: Sequence[int] | None = None) -> AnswerDataset:
    """The rows of a SQuAD file, each checked: a non-empty question and context, and answers whose first one is
    found in the context at its `answer_start` (no answers: unanswerable)."""
    missing = [column for column in QA_COLUMNS if column not in columns]
    if missing:
        raise DeepCutsError(f"{name}: no {', '.join(f'`{c}`' for c in missing)} column (found: {', '.join(columns)}); "
                            'a question-answering file has rows like {"question": ..., "context": ..., "answers": '
                            '{"text": [...], "answer_start": [...]}}')
    spans = []
    for index, (question, context, answers) in enumerate(zip(*(columns[c] for c in QA_COLUMNS))):
        where = f"{name}: {row_name(index, lines)}"
        for column, text in (("question", question), ("context", context)):
            if not isinstance(text, str) or not text.strip():
                raise DeepCutsError(f"{where} has `{column}` {short_value(text)}, not a text; fill it in or remove "
                                    "the row")
        spans.append(_first_span(answers, context, where))
    return AnswerDataset(list(columns["question"]), list(columns["context"]), spans, name)


def _first_span(answers: Any, context: str, where: str) -> Span | None:
    """The character span of the first answer (SQuAD's `{"text": [...], "answer_start": [...]}`, or its list of
    `{"text", "answer_start"}` objects), checked against `context`; None when there are no answers."""
    if isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        answers = {"text": [a.get("text") for a in answers], "answer_start": [a.get("answer_start") for a in answers]}
    if (not isinstance(answers, dict) or not isinstance(answers.get("text"), list)
            or not isinstance(answers.get("answer_start"), list)
            or len(answers["text"]) != len(answers["answer_start"])):
        raise DeepCutsError(f"{where} has `answers` {short_value(answers)}; write them as "
                            '{"text": ["..."], "answer_start": [character offset]}, both lists of one entry per '
                            "answer (empty lists for a question without an answer)")
    if not answers["text"]:
        return None
    text, start = answers["text"][0], answers["answer_start"][0]
    if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
        raise DeepCutsError(f"{where} has the answer {short_value(text)} at {short_value(start)}; give a non-empty "
                            "answer text and its start as a character offset (an integer)")
    found = context[start:start + len(text)] if start >= 0 else ""
    if found != text:
        raise DeepCutsError(f"{where}: its answer {short_value(text)} is not at answer_start {start} of the context "
                            f"(found {short_value(found)} there); give the character offset where the answer starts")
    return start, start + len(text)
