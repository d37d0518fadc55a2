"""Torch -> ONNX: the model traced with eager attention, dynamic batch and sequence axes and every tokenizer input,
the task's outputs (`tasks`: logits, token logits, start and end logits, a pooled embedding),
then each attention layer's head count pinned as a constant, the form ONNX Runtime's optimizer can fuse."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError
from ..models import max_positions, model_device
from .inputs import TokenizerInputs, graph_task, sample_inputs


def check_traceable(model: nn.Module, seq_len: int, opset: int) -> tuple[int, int]:
    """(seq_len, opset) as ints after checking them and that `model` is an fp32 / fp16 torch model, as ONNX export
    needs (bf16 weights fail deep inside the exporter otherwise)."""
    from ..scoring.options import whole_number

    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"export takes a torch model, got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32, torch.float16}
    if dtypes:
        raise DeepCutsError(f"ONNX export takes fp32 or fp16 models, this one has {', '.join(map(str, dtypes))} "
                            "weights; cast it first (model.float(), or model.half() for an fp16 file)")
    longest = int(max_positions(getattr(model, "config", None)) or 512)
    return whole_number("seq_len", seq_len, minimum=2, maximum=longest), whole_number("opset", opset, minimum=7)


def weight_dtype(model: nn.Module) -> torch.dtype:
    """fp16 when any floating-point weight is fp16 (an fp16 export), else fp32."""
    return torch.float16 if any(p.dtype == torch.float16 for p in model.parameters()) else torch.float32


def trace(model: nn.Module, names: tuple[str, ...], seq_len: int, opset: int, out: Path) -> None:
    """Export `model` with eager attention, dynamic axes and inputs `names` to `out`, then pin head counts."""
    example = sample_inputs(model, names, batch=2, seq_len=seq_len, device=model_device(model))
    task = graph_task(model)
    outputs = {name: {0: "batch", 1: "sequence"} if task.token_axis else {0: "batch"} for name in task.graph_outputs}
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | outputs
    with torch.no_grad(), TokenizerInputs(model, names) as wrapped, _eager_attention(model), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about HF's Python-level shape checks; outputs are checked
        torch.onnx.export(wrapped, tuple(example[n] for n in names), str(out), input_names=list(names),
                          output_names=list(outputs), dynamic_axes=axes, opset_version=opset, dynamo=False,
                          external_data=False)
    import onnx

    graph = onnx.load(str(out))
    keep_inputs(graph, names)
    _pin_head_counts(graph)
    onnx.save(graph, str(out))


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with eager attention (explicit MatMul / Softmax, the pattern ONNX Runtime fuses) and restore
    its attention implementation afterwards; transformers reads it from the config at every forward."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before is None or before == "eager":
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def keep_inputs(graph, names: Sequence[str]) -> None:
    """Add back any of `names` the exporter (or an optimizer) dropped because the model ignores it, so the
    tokenizer's whole output can still be fed (onnxruntime refuses unknown input names)."""
    import onnx

    present = {i.name for i in graph.graph.input}
    for name in names:
        if name not in present:
            graph.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64,
                                                                        ["batch", "sequence"]))


def _pin_head_counts(graph) -> int:
    """Replace the -1 head count of every attention Reshape (B, S, -1, head_dim) by the layer's constant head count,
    read off its projection's width; ONNX Runtime's optimizer needs the constant to fuse attention (and takes one
    per layer, so slim layers can fuse too). Returns how many Reshapes were pinned."""
    import onnx
    from onnx import numpy_helper

    producers = {out: node for node in graph.graph.node for out in node.output}
    initializers = {i.name: i for i in graph.graph.initializer}
    pinned = 0
    for node in graph.graph.node:
        concat = producers.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, head_dim = (_constant(name, producers, initializers) for name in concat.input[2:])
        width = _projection_width(node.input[0], producers, initializers)
        if heads != [-1] or head_dim is None or len(head_dim) != 1 or head_dim[0] <= 0 or not width \
                or width % head_dim[0]:
            continue
        name = f"{concat.name or concat.output[0]}/deepcuts_heads"
        graph.graph.initializer.append(numpy_helper.from_array(np.array([width // head_dim[0]], np.int64), name))
        concat.input[2] = name
        pinned += 1
    _drop_unused_constants(graph)
    onnx.checker.check_model(graph)
    return pinned


def _drop_unused_constants(graph) -> None:
    """Remove Constant nodes nothing reads any more (the -1s replaced above), which onnxruntime warns about."""
    used = {name for node in graph.graph.node for name in node.input} | {o.name for o in graph.graph.output}
    unused = [n for n in graph.graph.node if n.op_type == "Constant" and not used.intersection(n.output)]
    for node in unused:
        graph.graph.node.remove(node)


def _constant(name: str, producers: dict, initializers: dict) -> list[int] | None:
    """The integer values of a graph constant (an initializer or a Constant node), or None when not constant."""
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name]).reshape(-1).tolist()
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t).reshape(-1).tolist()
    return None


def _projection_width(name: str, producers: dict, initializers: dict) -> int | None:
    """Output width of the Linear producing `name` (MatMul by a weight, plus a bias), or None for anything else."""
    node = producers.get(name)
    if node is not None and node.op_type == "Add":
        bias = [initializers[i] for i in node.input if i in initializers and len(initializers[i].dims) == 1]
        if bias:
            return int(bias[0].dims[0])
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    if node is not None and node.op_type == "MatMul" and node.input[1] in initializers:
        return int(initializers[node.input[1]].dims[-1])
    return None
