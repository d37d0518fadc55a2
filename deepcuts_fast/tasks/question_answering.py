"""Extractive question answering: start and end logits over the tokens; labels are the answer's token positions.

Measured by exact match and F1 of the predicted answer span against the gold span, in token positions: the batches
carry `start_positions` / `end_positions` and no answer text, so this is the token-span form of SQuAD's metrics,
without SQuAD's text normalisation (lower-casing, dropping articles and punctuation), and it is not the text-level
score a SQuAD evaluation script reports."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..errors import DeepCutsError
from .base import Collected, Measured, Task, require_examples

MAX_ANSWER_LENGTH = 30
"""Longest predicted answer, in tokens: transformers' question-answering postprocessing default."""
NO_ANSWER = (0, 0)
"""The span of an unanswerable question: start and end at the first (CLS) token, transformers' convention."""


def best_span(start: torch.Tensor, end: torch.Tensor, real: torch.Tensor | None = None,
              max_length: int = MAX_ANSWER_LENGTH) -> tuple[int, int]:
    """The (start, end) of one example with the highest start + end logit among start <= end < start + `max_length`
    over the `real` tokens (all when None), as transformers' postprocessing picks a span; ties go to the first
    start, then the first end."""
    positions = torch.arange(start.shape[-1])
    allowed = (positions[None, :] >= positions[:, None]) & (positions[None, :] < positions[:, None] + max_length)
    if real is not None:
        real = real.bool()
        allowed &= real[:, None] & real[None, :]
    scores = (start[:, None] + end[None, :]).masked_fill(~allowed, float("-inf"))
    best = int(scores.flatten().argmax())
    return divmod(best, start.shape[-1])


def span_f1(predicted: tuple[int, int], gold: tuple[int, int]) -> float:
    """SQuAD's token-overlap F1 of two inclusive position ranges; an unanswerable span (`NO_ANSWER`) scores 1 only
    against itself, as SQuAD scores an empty answer."""
    if NO_ANSWER in (predicted, gold):
        return float(predicted == gold)
    overlap = min(predicted[1], gold[1]) - max(predicted[0], gold[0]) + 1
    if overlap <= 0:
        return 0.0
    precision = overlap / (predicted[1] - predicted[0] + 1)
    recall = overlap / (gold[1] - gold[0] + 1)
    return 2 * precision * recall / (precision + recall)


def _checked(positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """The gold (start, end) positions (batch, 2), refused where they are no span of the batch's tokens."""
    if positions.is_floating_point():
        raise DeepCutsError("start_positions and end_positions are real numbers; write token positions as integers")
    positions = positions.long()
    if positions.numel() and (positions.min() < 0 or positions.max() >= tokens):
        raise DeepCutsError(f"an answer position is outside the batch's {tokens} tokens; give positions in "
                            f"[0, {tokens - 1}] (0 and 0 for an unanswerable question)")
    if (positions[:, 0] > positions[:, 1]).any():
        raise DeepCutsError("an answer's end_position is before its start_position; give the first and the last "
                            "token of each answer")
    return positions


def metric(batches: Iterable[Collected], config) -> Measured:
    """Exact match and F1 (headline) of each example's best span against its gold span, averaged over the examples
    (fractions in [0, 1]); the loss is the mean of the start and end cross-entropies, as the head computes it."""
    loss, exact, f1, n = 0.0, 0.0, 0.0, 0
    for logits, positions, mask in batches:
        positions = _checked(positions, logits.shape[-1])
        loss += sum(F.cross_entropy(logits[:, i], positions[:, i], reduction="sum").item() for i in (0, 1)) / 2
        for row, gold in enumerate(map(tuple, positions.tolist())):
            predicted = best_span(logits[row, 0], logits[row, 1], None if mask is None else mask[row])
            exact += float(predicted == gold)
            f1 += span_f1(predicted, gold)
        n += len(positions)
    require_examples(n)
    return Measured({"exact_match": exact / n, "f1": f1 / n}, "f1", loss=loss / n, n=n)


TASK = Task(name="question-answering", suffix="ForQuestionAnswering", auto_class="AutoModelForQuestionAnswering",
            outputs=("start_logits", "end_logits"), labels=("start_positions", "end_positions"), token_axis=True,
            metric=metric, position=2)
