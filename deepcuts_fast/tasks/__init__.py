"""The registry of tasks: the only place that knows a task's transformers class suffix.

Every module of this package (but `base`) declares `TASK`, a `base.Task`, for a supported task, or `REFUSED`,
{class suffix: what such a model is, for a message}, for one deepcuts-fast refuses. The registry imports them all,
so adding a task is adding its module (and its case in `tests/test_tasks.py`). Everything else asks `task_named`,
`saved_task(config)` (what a folder was saved as) and `model_task(model)` (what a loaded model is).
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import DeepCutsError
from .base import IGNORED, Task

TASKS: dict[str, Task] = {}
"""name -> its Task, in `position` order."""
REFUSED: dict[str, str] = {}
"""class suffix -> what a model of that refused task is."""
SEQUENCE = "sequence-classification"
"""The task a bare encoder gets a fresh head for unless asked otherwise (fine-tuning, the text data's labels)."""
EMBEDDING = "embedding"


def _collect() -> None:
    found: list[Task] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if getattr(module, "TASK", None) is not None:
            found.append(module.TASK)
        REFUSED.update(getattr(module, "REFUSED", {}))
    TASKS.update((t.name, t) for t in sorted(found, key=lambda t: t.position))


_collect()


def without_labels(batch):
    """`batch` without any task's label keys (`labels`, `start_positions`, ...): what a model's forward takes as
    inputs alone, so no loss is computed where only the activations are wanted."""
    keys = {k for task in TASKS.values() for k in task.labels}
    return {k: v for k, v in batch.items() if k not in keys}


def task_named(name: str | Task) -> Task:
    """The Task called `name` (a Task passes through), or one clear error listing the names."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise DeepCutsError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def _of_class(name: str) -> Task | None:
    """The task of a transformers class name (a head before the bare `Model`, which ends every name of it)."""
    return next((t for t in TASKS.values() if t.head and t.matches(name)), None) or (
        TASKS[EMBEDDING] if TASKS[EMBEDDING].matches(name) else None)


def saved_task(config, name: str = "the model") -> Task | None:
    """The task a folder's config says it was saved for (its `architectures`): a task head, the embedding task for
    a bare `<Stem>Model`, None when it names neither (a masked-LM or pretraining checkpoint, no architectures). A
    refused task is an error naming why."""
    architectures = (config.get("architectures") if isinstance(config, dict) else
                     getattr(config, "architectures", None)) or []
    for arch in architectures:
        refused = next((what for suffix, what in REFUSED.items() if arch.endswith(suffix)), None)
        if refused is not None:
            raise DeepCutsError(f"model {name!r} ({arch}) is {refused}; give a model of one of the tasks "
                                f"{', '.join(TASKS)}")
    return next((t for t in map(_of_class, architectures) if t is not None), None)


def model_task(model) -> Task | None:
    """The task of a loaded model, read from its class (a slim model's `DeepCuts<Stem>...` too); None for a class
    of no known task."""
    return _of_class(type(model).__name__)


def task_of_head(model) -> Task:
    """The task of a model with a head: its class's (sequence classification for a head class of no known task)."""
    return model_task(model) or task_named(SEQUENCE)


__all__ = ["EMBEDDING", "IGNORED", "REFUSED", "SEQUENCE", "TASKS", "Task", "model_task", "saved_task", "task_named",
           "task_of_head", "without_labels"]
