"""ONNX Runtime: an ORTModel-style folder (`model.onnx` beside config.json and the tokenizer files) made by this
package's `export` (transformer-optimized graph, checked against torch), in fp32 or with dynamic int8 quantization."""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .base import Feeds, Runtime, Session, feeds_of

GRAPH = "model.onnx"


def precisions() -> tuple[str, ...]:
    """fp32 and dynamic int8 (int8 weights, activations quantized per batch at run time)."""
    return ("fp32", "int8")


def build(model: nn.Module, tokenizer, precision: str, out: Path, calibration: Sequence[Feeds]) -> None:
    """`model.onnx` (optimized; int8-quantized for "int8") with config.json, tokenizer files and the export
    report in `out`; dynamic quantization needs no calibration data."""
    from ..export import export

    result = export(model, out / GRAPH, tokenizer, optimize=True, quantize="int8" if precision == "int8" else None)
    flatten_side_folder(result.folder, out)


def flatten_side_folder(side: Path, out: Path) -> None:
    """Move the files `export` wrote beside the graph (config, tokenizer, report) into `out` itself, the layout
    optimum's ORTModel and OpenVINO folders have, leaving the side folder's own manifest behind."""
    from ..outputs import MANIFEST

    for entry in os.listdir(side):
        if entry != MANIFEST:
            os.replace(side / entry, out / entry)
    shutil.rmtree(side)


def load(folder: Path, precision: str, threads: int) -> Session:
    """An onnxruntime CPU session on the folder's graph with `threads` intra-op threads."""
    from ..export import onnx_session

    session = onnx_session(folder / GRAPH, threads)
    names = [i.name for i in session.get_inputs()]

    def run(feeds: Feeds) -> np.ndarray:
        return session.run(["logits"], feeds_of(feeds, names))[0]

    return run


RUNTIME = Runtime("ort", ("onnx", "onnxruntime"), "onnx", precisions, build, load, position=1)
