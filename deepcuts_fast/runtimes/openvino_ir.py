"""OpenVINO: an IR folder as optimum-intel writes it (`openvino_model.xml` / `.bin` beside config.json and the
tokenizer files), converted from this package's checked ONNX export; fp32, bf16 where the CPU has it (as both
`deepcuts_fast.precision` and OpenVINO's own capabilities say), and int8 by NNCF post-training quantization
calibrated on the user's batches. Optional: `pip install 'deepcuts-fast[openvino]'`."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Feeds, Runtime, Session, feeds_of
from .ort import flatten_side_folder

XML = "openvino_model.xml"
ONNX = "model.onnx"  # the intermediate graph, removed once converted

# OpenVINO's TBB aborts compile_model under an LD_PRELOADed allocator unless told to tolerate it; set before the
# first `import openvino`, which this module only does inside its functions.
if any(lib in os.environ.get("LD_PRELOAD", "") for lib in ("tcmalloc", "jemalloc")):
    os.environ.setdefault("TBB_ENABLE_SANITIZERS", "1")


def precisions() -> tuple[str, ...]:
    """fp32 and int8, plus bf16 where this CPU runs bf16 natively and OpenVINO's CPU plugin offers it."""
    from ..precision import choose

    if choose("infer", "cpu", "auto").dtype != torch.bfloat16:
        return ("fp32", "int8")
    import openvino as ov

    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("fp32", "bf16", "int8") if native else ("fp32", "int8")


def build(model: nn.Module, tokenizer, precision: str, out: Path, calibration: Sequence[Feeds]) -> None:
    """The IR (fp32 weights; int8 quantized by NNCF on `calibration`) with config.json, tokenizer files and the
    ONNX export's report in `out`; bf16 is an inference-precision hint set at load time."""
    import openvino as ov

    from ..export import export

    result = export(model, out / ONNX, tokenizer)  # plain ONNX graph: OpenVINO fuses it itself
    converted = ov.convert_model(str(out / ONNX))
    if precision == "int8":
        converted = _quantize(converted, calibration)
    ov.save_model(converted, str(out / XML), compress_to_fp16=False)
    (out / ONNX).unlink()
    flatten_side_folder(result.folder, out)


def _quantize(model, calibration: Sequence[Feeds]):
    """NNCF's post-training int8 quantization of `model` (transformer preset), calibrated on every batch given."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    names = [port.get_any_name() for port in model.inputs]
    dataset = nncf.Dataset(list(calibration), lambda batch: feeds_of(batch, names))
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))


def load(folder: Path, precision: str, threads: int) -> Session:
    """The IR compiled for the CPU with `threads` threads, in bf16 for "bf16" and explicitly in f32 otherwise
    (the CPU plugin would pick bf16 by itself on CPUs that have it)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(folder / XML), "CPU", config)
    request = compiled.create_infer_request()
    names = [port.get_any_name() for port in compiled.inputs]

    def run(feeds: Feeds) -> np.ndarray:
        request.infer(feeds_of(feeds, names))
        return request.get_output_tensor(0).data.copy()

    return run


RUNTIME = Runtime("openvino", ("onnx", "onnxruntime", "openvino", "nncf"), "openvino", precisions, build, load,
                  position=2)
