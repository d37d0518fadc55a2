"""The folder written beside an exported .onnx file (`model.onnx` -> `model.onnx.d`): config.json, the tokenizer
files and the export's report, which any runtime reads to tokenize the file's inputs and number its labels."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DeepCutsError, first_line
from ..outputs import write_folder

SIDE_SUFFIX = ".d"
REPORT_FILE = "deepcuts_export.json"
SIDE_FOLDER_KIND = "onnx side folder"  # the manifest kind of the folder beside an .onnx file


def side_folder(path: str | os.PathLike) -> Path:
    """The folder written beside an exported .onnx file: `model.onnx` -> `model.onnx.d`."""
    path = Path(path)
    return path.with_name(path.name + SIDE_SUFFIX)


def write_side_folder(folder: Path, model: nn.Module, tokenizer, report: dict[str, Any], overwrite: bool) -> None:
    """Write config.json, the tokenizer files and the export `report` to `folder` atomically (replacing an
    earlier export's folder only with `overwrite`)."""
    with write_folder(folder, kind=SIDE_FOLDER_KIND, overwrite=overwrite,
                      name="the folder beside the .onnx file") as tmp:
        model.config.save_pretrained(tmp)
        _drop_auto_map(tmp / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")


def _drop_auto_map(config_file: Path) -> None:
    """Remove a slim config's `auto_map`: it names modeling code that lives in the model folder, not here."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.pop("auto_map", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_config(path: Path):
    """The model config written beside the exported file `path`."""
    from transformers import AutoConfig

    folder = side_folder(path)
    if not (folder / "config.json").is_file():
        raise DeepCutsError(f"{folder}/config.json is missing: {path} needs the folder its export writes beside it "
                            f"(config.json and tokenizer files); export again with `deepcuts export` / dc.export")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"{folder}/config.json is unreadable: {first_line(e)}") from e


def read_tokenizer(path: Path):
    """The tokenizer written beside the exported file `path`."""
    from ..models import load_tokenizer

    try:
        return load_tokenizer(str(side_folder(path)))
    except DeepCutsError as e:
        raise DeepCutsError(f"{path} has no usable tokenizer beside it ({first_line(e)}); export with a tokenizer: "
                            "dc.export(model, path, tokenizer), or `deepcuts export`") from e
