"""Keep a sentence-transformers model one when it is saved: the files that make a model folder a
sentence-transformers one (`modules.json`, `sentence_bert_config.json`, the pooling and other module folders) are
copied from the folder the embedding model was loaded from, so `SentenceTransformer(folder, trust_remote_code=True)`
loads the slim encoder with the same pooling, normalization and max_seq_length."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from ..errors import DeepCutsError
from ..tasks import EMBEDDING, model_task

MODULES_FILE = "modules.json"
SETTINGS_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")
"""The Transformer module's settings (max_seq_length, lowercasing) and the library's own record, when present."""
TRANSFORMER = "sentence_transformers.models.Transformer"


def sentence_source(model: nn.Module) -> Path | None:
    """The sentence-transformers folder an embedding model was loaded from (its config's `_name_or_path`), or None
    for another task's model or a folder without `modules.json`."""
    task = model_task(model)
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    if task is None or task.name != EMBEDDING or not source or not (Path(source) / MODULES_FILE).is_file():
        return None
    return Path(source)


def copy_sentence_files(source: Path, folder: Path) -> None:
    """Copy `source`'s sentence-transformers files into the saved model `folder`: modules.json, the settings files
    and every module folder but the Transformer's, which is the model itself at the folder's root."""
    try:
        modules = json.loads((source / MODULES_FILE).read_text(encoding="utf-8"))
        paths = [(str(m["type"]), str(m.get("path", ""))) for m in modules]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DeepCutsError(f"{source / MODULES_FILE} is not a readable sentence-transformers module list ({e}); fix "
                            "it, or load the model from a folder without it") from e
    if any(kind.endswith(".Transformer") and path not in ("", ".") for kind, path in paths):
        raise DeepCutsError(f"{source / MODULES_FILE} keeps its Transformer module in a subfolder, while the model was "
                            "loaded from the folder's root; load it from the Transformer's own folder")
    shutil.copyfile(source / MODULES_FILE, folder / MODULES_FILE)
    for name in SETTINGS_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    for _, path in paths:
        if path not in ("", ".") and (source / path).is_dir():
            shutil.copytree(source / path, folder / path, symlinks=False)
