"""`export`: a torch model -> a checked .onnx file and its side folder, running this package's steps (trace, fusion,
int8, the check against torch) in a scratch folder and publishing only what passed the check."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DeepCutsError
from ..families import family
from ..outputs import check_file, check_folder, write_file
from ..pruning.io import model_source
from .check import TOLERANCE, check_against_torch
from .fusion import NO_FUSION, attention_layers, fuse
from .graph import check_traceable, trace, weight_dtype
from .inputs import model_inputs, pads_left
from .quantize import check_quantize, quantize_int8
from .side import SIDE_FOLDER_KIND, side_folder, write_side_folder
from .summary import OnnxExport


@dataclass(frozen=True)
class _Settings:
    """How one export traces, fuses, quantizes and checks the graph."""

    names: tuple[str, ...]  # graph inputs, in INPUT_NAMES order
    seq_len: int  # tracing length
    opset: int
    optimizer_type: str | None  # what onnxruntime's transformer optimizer calls the family (None: no fusion)
    quantize: str | None
    per_channel: bool
    left_padding: bool  # the tokenizer pads on the left, so fused attention must read the raw mask


def export(model: nn.Module, path: str | os.PathLike, tokenizer=None, *, optimize: bool = False,
           quantize: str | None = None, per_channel: bool = True, seq_len: int = 16, opset: int = 17,
           check: bool = True, overwrite: bool = False) -> OnnxExport:
    """Write `model` as ONNX at `path` (a .onnx file; an existing one is replaced only with `overwrite`) plus the
    side folder `path.d`, checked against torch first, so a deployment gets a file whose logits are known to match.

    The inputs are the tensors `tokenizer` returns (without one, those of the family's default tokenizer class),
    with dynamic batch and sequence axes. `optimize` writes ONNX Runtime's transformer-optimized graph (fused
    attention where the shapes allow; it reads row lengths off the mask, as right padding allows, unless the
    tokenizer pads on the left); a family whose layout the optimizer does not know (`onnx_model_type` None) is
    written unfused, as the summary says. `quantize="int8"`
    stores the MatMul, attention and embedding weights as int8 and quantizes activations at run time
    (`per_channel`, the default: one scale per weight column, which cut MiniLM's logit error against torch
    2-3x compared with one scale per tensor). The check runs a fixed random batch through both: fp32 logits must
    agree to 1e-4 (fp16 to 1e-2), int8's difference is only reported. Nothing is written when a step or the
    check fails.
    """
    target = _onnx_path(path)
    seq_len, opset = check_traceable(model, seq_len, opset)
    optimizer_type = family(model).onnx_model_type if optimize else None
    settings = _Settings(model_inputs(model, tokenizer), seq_len, opset, optimizer_type,
                         check_quantize(quantize, model), bool(per_channel), pads_left(tokenizer))
    _check_outputs(target, model, overwrite)
    _require(["onnx"] + (["onnxruntime"] if check or optimize or quantize else []))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work:
        graph, fused = _build(model, settings, Path(work))
        dtype = weight_dtype(model)
        tolerance = None if settings.quantize else TOLERANCE[dtype]
        diff, agreement = check_against_torch(graph, model, settings.names, settings.left_padding,
                                              optimizer_type is not None, tolerance) if check else (None, None)
        result = OnnxExport(target, side_folder(target), settings.names,
                            settings.quantize or {torch.float16: "fp16"}.get(dtype, "fp32"), optimizer_type is not None,
                            settings.per_channel if settings.quantize else None, graph.stat().st_size,
                            tokenizer is not None, fused, attention_layers(model), diff, agreement, tolerance,
                            NO_FUSION if optimize and optimizer_type is None else None)
        _publish(graph, result, model, tokenizer, overwrite)
    return result


def _build(model: nn.Module, settings: _Settings, work: Path) -> tuple[Path, dict[str, int]]:
    """(the final graph in `work`, fused operator counts): traced, then fused and / or quantized as asked."""
    graph, fused = work / "model.onnx", {}
    trace(model, settings.names, settings.seq_len, settings.opset, graph)
    if settings.optimizer_type is not None:
        graph, fused = fuse(graph, work / "optimized.onnx", settings.names, settings.left_padding,
                            settings.optimizer_type)
    if settings.quantize:
        graph = quantize_int8(graph, work / "int8.onnx", settings.per_channel)
    return graph, fused


def _onnx_path(path) -> Path:
    """`path` as a Path after checking it names a .onnx file."""
    target = Path(path) if isinstance(path, (str, os.PathLike)) else None
    if target is None or target.suffix != ".onnx":
        raise DeepCutsError(f"ONNX export needs a .onnx path, got {path if target is not None else repr(path)}")
    return target


def _check_outputs(target: Path, model: nn.Module, overwrite: bool) -> None:
    """Refuse, before any work, an .onnx path or side folder that the export may not write (see `outputs`)."""
    check_file(target, model_source(model), overwrite=overwrite, name="the .onnx file")
    check_folder(side_folder(target), model_source(model), overwrite=overwrite, kind=SIDE_FOLDER_KIND,
                 name="the folder beside the .onnx file")


def _require(packages: list[str]) -> None:
    """Fail before any work when a package the export needs is missing, saying how to install it."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise DeepCutsError(f"ONNX export needs {' and '.join(missing)}: pip install 'deepcuts-fast[onnx]' (or pip "
                            f"install {' '.join(missing)})")


def _publish(graph: Path, result: OnnxExport, model: nn.Module, tokenizer, overwrite: bool) -> None:
    """Write the side folder, then move the checked graph to its path (each atomically)."""
    write_side_folder(result.folder, model, tokenizer, result.report(), overwrite)
    with write_file(result.path, overwrite=overwrite, name="the .onnx file") as tmp:
        shutil.copyfile(graph, tmp)
