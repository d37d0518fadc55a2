"""What the commands load and lock: the task model of --model, with the labelled --data it runs on, and the
output locks held while a command writes."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from ..locks import output_lock


def classifier(args: argparse.Namespace, num_labels: int | None, head_free: bool = False,
               task: str | None = None) -> tuple:
    """(model, tokenizer) for the --model of score, eval, prune and export, --max-length checked against its
    positions: a saved model of any task keeps its own head, unless the command needs `task` (then another task's
    head is refused); a bare encoder is refused (`deepcuts run` fine-tunes it first), unless what follows reads no
    head (`head_free`: data-free scores), when it gets a fresh head with `num_labels` outputs (2 when None)."""
    from ..task import task_model

    task = task_model(args.model, on_bare="random-head" if head_free else "refuse", num_labels=num_labels,
                      progress=not args.quiet, max_length=getattr(args, "max_length", None), task=task)
    return task.model, task.tokenizer


def model_and_data(args: argparse.Namespace, split: str, head_free: bool = False, labels: bool = True) -> tuple:
    """(model, tokenizer, dataset) for the --model / --data of a command, labels checked and numbered as
    the model's head numbers them (its named labels, else sorted class names); `head_free` as in `classifier`.
    With `labels` False (a label-free objective) the data may be unlabelled text and a bare encoder is taken with
    its fresh head marked untrained, which the objective never reads, and a model of any task is taken (its own
    head distills on the texts); with labels, one per text, the model must be a sequence classifier."""
    from ..data import encode_labels, load_dataset
    from ..tasks import SEQUENCE

    dataset = load_dataset(args.data, split, require_labels=labels)
    model, tokenizer = classifier(args, dataset.num_labels if dataset.labelled else None, head_free or not labels,
                                  task=SEQUENCE if labels else None)
    return model, tokenizer, encode_labels(dataset, model.config)


def is_onnx_file(model: str) -> bool:
    """Whether a --model value names an ONNX file (by its suffix) rather than a model folder or alias."""
    return str(model).lower().endswith(".onnx")


@contextlib.contextmanager
def output_locks(paths: list, held: bool = True) -> Iterator[None]:
    """Hold `output_lock` on each distinct path of `paths` (None skipped) when `held` (on the rank that writes)."""
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(str(p) for p in paths if p is not None and held):
            stack.enter_context(output_lock(path))
        yield
