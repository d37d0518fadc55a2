"""Dynamic int8 quantization of an exported graph (int8 weights, activations quantized at run time) with
onnxruntime.quantization: the smallest file, and the CPU deployment a slim model has to beat."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DeepCutsError, first_line
from .graph import weight_dtype
from .runtime import quiet_onnxruntime

QUANTIZE = ("int8",)


def check_quantize(quantize: str | None, model: nn.Module) -> str | None:
    """`quantize` after checking it is None or "int8", and that an int8 export starts from fp32 weights."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise DeepCutsError(f"quantize must be None or 'int8', got {quantize!r}")
    if weight_dtype(model) != torch.float32:
        raise DeepCutsError("int8 quantization starts from fp32 weights; export model.float() instead")
    return quantize


def quantize_int8(graph: Path, out: Path, per_channel: bool) -> Path:
    """Dynamic int8 quantization of `graph` (MatMul, attention and embedding weights; activations quantized at run
    time), written to `out`."""
    import onnx

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise DeepCutsError(f"quantize='int8' needs onnxruntime.quantization ({first_line(e)}): "
                            "pip install onnxruntime") from e
    with quiet_onnxruntime():
        # The optimizer's fused operators have no ONNX type inference; their outputs are fp32 (int8 needs fp32)
        quantize_dynamic(str(graph), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=_empty_weight_nodes(onnx.load(str(graph))),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _empty_weight_nodes(graph) -> list[str]:
    """Nodes with a weight of size 0 (a layer pruned to no heads or no FFN neurons): they cost nothing, and the
    quantizer cannot compute scales for them."""
    empty = {i.name for i in graph.graph.initializer if 0 in i.dims}
    return [node.name for node in graph.graph.node if empty.intersection(node.input)]
