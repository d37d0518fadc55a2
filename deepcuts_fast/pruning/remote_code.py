"""Make slim folders loadable by stock transformers (`trust_remote_code=True`), without deepcuts-fast.

`dc.save_pretrained` copies `modeling_deepcuts_slim.py` (this package's template, which imports only torch and
transformers) beside the weights and adds to config.json an `auto_map` naming its classes for the model's family
and the task it was saved for, and that family's layer layout (`deepcuts_layout`), so the file itself knows no
family and no task. The config keeps the
family's own class, so `AutoConfig` needs no remote code.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..families import family, modeling_deepcuts_slim
from ..tasks import EMBEDDING, SEQUENCE, saved_task, task_named

TEMPLATE = Path(modeling_deepcuts_slim.__file__)
MODELING_FILE = TEMPLATE.name
LAYOUT_KEY = "deepcuts_layout"
"""The config.json key holding the family's layer layout (`families.Family.layout`), which the modeling file reads."""


def is_slim(config: dict) -> bool:
    """Whether a config (as saved in config.json) records per-layer widths, so stock classes cannot load it."""
    return config.get("deepcuts_heads") is not None and config.get("deepcuts_ffn") is not None


def auto_map(config: dict) -> dict[str, str]:
    """The config.json `auto_map` that sends AutoModel, and the auto class of the task the model was saved for
    (its `architectures`; sequence classification when they name none), to the template's classes for the
    config's family: `DeepCuts<Stem><task suffix>`."""
    module, stem = MODELING_FILE.removesuffix(".py"), family(config).class_stem
    saved = saved_task(config) or task_named(SEQUENCE)
    return {task.auto_class: f"{module}.DeepCuts{stem}{task.suffix}" for task in (task_named(EMBEDDING), saved)}


def add_remote_code(folder: Path) -> bool:
    """Copy the modeling file into the saved model `folder` and point its config's `auto_map` at it, when the
    model is slim; returns whether it did, so dense folders stay plain transformers folders."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not is_slim(config):
        return False
    config["auto_map"] = {**(config.get("auto_map") or {}), **auto_map(config)}
    config[LAYOUT_KEY] = family(config).layout()
    (folder / MODELING_FILE).write_bytes(TEMPLATE.read_bytes())
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True
