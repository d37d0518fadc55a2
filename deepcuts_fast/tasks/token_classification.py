"""Token classification (NER, POS): logits per token; labels (batch, tokens), -100 where a token has none.

Measured by entity-level precision, recall and F1 over the BIO (IOB2) chunks of the labelled tokens, as seqeval's
default mode computes them (`entities`, the one chunker), and by token accuracy; labels without B- / I- prefixes
(POS tags, the default `LABEL_<i>` names) have no chunks, so they are measured by token accuracy, and the result
says so."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import DeepCutsError
from .base import IGNORED, Collected, Measured, Task, require_examples

OUTSIDE = "O"
CHUNK_PREFIXES = ("B-", "I-", "E-", "S-")  # IOB2, and IOBES which the same chunker reads
Entity = tuple[str, int, int]  # (type, first token, last token), over a sequence's labelled tokens


def _parts(label: str) -> tuple[str, str]:
    """(tag, type) of a label as seqeval's default mode splits it: 'B-PER' -> ('B', 'PER'), 'O' -> ('O', '_')."""
    return label[:1], label[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether the chunk open before this token ends before it (seqeval's `end_of_chunk`)."""
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at this token (seqeval's `start_of_chunk`)."""
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entities(labels: Sequence[str]) -> list[Entity]:
    """The chunks of one sequence of label names, as seqeval's `get_entities` finds them: a chunk starts at a B-
    and runs over the following I- of its type; an I- after an O or after another type starts one too."""
    found: list[Entity] = []
    prev_tag, prev_type, begin = OUTSIDE, "", 0
    for i, label in enumerate([*labels, OUTSIDE]):
        tag, type_ = _parts(label)
        if _ends(prev_tag, tag, prev_type, type_):
            found.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 of the predicted chunks against the gold chunks of the same sequences (a chunk
    counts when its type, first and last token match); 0 where a ratio has nothing to divide by, as seqeval."""
    if len(gold) != len(predicted):
        raise ValueError(f"entity_scores needs as many predicted sequences as gold ones ({len(predicted)}, "
                         f"{len(gold)})")
    true = {(row, *e) for row, labels in enumerate(gold) for e in entities(labels)}
    found = {(row, *e) for row, labels in enumerate(predicted) for e in entities(labels)}
    hits = len(true & found)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def is_bio(names: Iterable[str]) -> bool:
    """Whether label names are chunk tags: each one O or prefixed B- / I- (E- / S-), some B- or I-."""
    names = list(names)
    return (all(n == OUTSIDE or n.startswith(CHUNK_PREFIXES) for n in names)
            and any(n.startswith(("B-", "I-")) for n in names))


def label_names(config) -> dict[int, str]:
    """Class id -> label name, from the model config's `id2label` (keys are strings after a JSON round trip)."""
    return {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}


def _checked(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """The labels as class ids, refused where they are not ids of the head's classes (or -100)."""
    if labels.is_floating_point():
        raise DeepCutsError("the token labels are real numbers; write class ids as integers (-100 where a token "
                            "has no label)")
    labels = labels.long()
    real = labels[labels != IGNORED]
    if real.numel() and (real.min() < 0 or real.max() >= classes):
        raise DeepCutsError(f"token label {int(real.max() if real.max() >= classes else real.min())} is not a class "
                            f"of the model's head (0 to {classes - 1}, or {IGNORED} for no label)")
    return labels


def _unchunked_note(names: dict[int, str]) -> str:
    """What a result measured by token accuracy says: its labels have no chunks."""
    shown = ", ".join(list(names.values())[:4]) + (", ..." if len(names) > 4 else "")
    what = f"the model's labels ({shown}) are not" if names else "the model's config names no labels, so not"
    return (f"token accuracy, not entity F1: {what} BIO tags (O, B-TYPE, I-TYPE) for every class of the head, so "
            "there are no entity chunks to score")


def metric(batches: Iterable[Collected], config) -> Measured:
    """Entity F1 (headline), precision and recall and token accuracy over the labelled tokens (label -100 skipped);
    the loss is the mean cross-entropy per labelled token, as the head computes it."""
    names = label_names(config)
    chunked = is_bio(names.values()) and set(names) == set(range(getattr(config, "num_labels", len(names))))
    gold: list[list[str]] = []
    predicted: list[list[str]] = []
    loss, correct, tokens, n = 0.0, 0, 0, 0
    for logits, labels, _ in batches:
        labels = _checked(labels, logits.shape[-1])
        real, guess = labels != IGNORED, logits.argmax(-1)
        loss += F.cross_entropy(logits[real], labels[real], reduction="sum").item() if real.any() else 0.0
        correct += int((guess[real] == labels[real]).sum())
        tokens += int(real.sum())
        n += len(labels)
        if chunked:
            for row_gold, row_guess, row_real in zip(labels, guess, real):
                gold.append([names[i] for i in row_gold[row_real].tolist()])
                predicted.append([names.get(i, OUTSIDE) for i in row_guess[row_real].tolist()])
    require_examples(n)
    if tokens == 0:
        raise DeepCutsError(f"no token of the evaluation batches has a label (all are {IGNORED}); label the first "
                            "sub-word of each word")
    metrics: dict[str, float | None] = {"accuracy": correct / tokens}
    if not chunked:
        return Measured(metrics, "accuracy", loss=loss / tokens, n=n, note=_unchunked_note(names))
    return Measured({**entity_scores(gold, predicted), **metrics}, "f1", loss=loss / tokens, n=n)


TASK = Task(name="token-classification", suffix="ForTokenClassification",
            auto_class="AutoModelForTokenClassification", outputs=("logits",), labels=("labels",), per_token=True,
            token_axis=True, num_labels=True, metric=metric, position=1)
