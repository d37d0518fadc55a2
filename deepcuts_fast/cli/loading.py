"""What the commands load and lock: the task model of --model, with the labelled --data it runs on (of the kind
its task reads), and the output locks held while a command writes."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from ..errors import DeepCutsError
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
    A token-classification or QA model reads a data file of its task (words with tags, SQuAD rows; `load_task_data`),
    any other model texts with one label each. With `labels` False (a label-free objective) the data may be
    unlabelled text and a bare encoder is taken with its fresh head marked untrained, which the objective never reads,
    and a model of any task is taken with text data (its own head distills on the texts); with labels, text data
    needs a sequence classifier."""
    from ..data import TextDataset, encode_task_data, load_task_data
    from ..tasks import SEQUENCE

    task, named = saved_task_of(args.model)
    dataset = load_task_data(args.data, split, task, named, require_labels=labels)
    if isinstance(dataset, TextDataset):
        model, tokenizer = classifier(args, dataset.num_labels if dataset.labelled else None, head_free or not labels,
                                      task=SEQUENCE if labels else None)
    else:
        model, tokenizer = classifier(args, None, task=task)
    return model, tokenizer, encode_task_data(dataset, model.config)


def saved_task_of(model: str) -> tuple[str | None, str]:
    """(the task of the head --model was saved with, None for the packaged task model, a bare encoder or a config
    that cannot be read, which loading the model then explains; how messages name the model, with its classes)."""
    from ..models import load_config, saved_head
    from ..task import TASK_MODEL_ALIAS

    if model == TASK_MODEL_ALIAS:
        return None, f"model {model!r}"
    try:
        config = load_config(model)
    except DeepCutsError:
        return None, f"model {model!r}"
    saved = saved_head(config, model)
    classes = "/".join(getattr(config, "architectures", None) or [])
    return (None if saved is None else saved.name), f"model {model!r}" + (f" ({classes})" if classes else "")


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
