"""One benchmarked model: a torch module (cast copy on the target device), an ONNX file under onnxruntime, or
a session of a `deepcuts_fast.runtimes` artifact (torch, ONNX Runtime, OpenVINO, ...).

A runner turns the shared token ids into its own inputs, runs one forward pass, times it (CUDA
events on a GPU, `time.perf_counter` otherwise) and measures its peak extra memory.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError, first_line
from ..flops import encoder_flops
from ..models import max_positions
from ..precision import NAMES
from ..runtimes.base import Session
from . import memory

_ONNX_DTYPES = {"tensor(float)": "fp32", "tensor(bfloat16)": "bf16", "tensor(float16)": "fp16",
                "tensor(double)": "fp64"}
_ONNX_INTS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
# Integer-arithmetic nodes of quantized graphs (onnxruntime.quantization's dynamic and QOperator
# formats; QDQ graphs show as int8 / uint8 initializers). Their outputs stay fp32, so the output
# type alone would label an int8 model fp32.
_QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "DynamicQuantizeMatMul",
                            "MatMulIntegerToFloat", "QAttention", "QGemm", "ConvInteger", "QLinearConv"})
_MB = 2**20


def flops_or_none(model: nn.Module | None, seq_len: int) -> int | None:
    """Encoder FLOPs of one sequence, or None for a model whose architecture has no cost model."""
    if model is None:
        return None
    try:
        return encoder_flops(model, seq_len)
    except DeepCutsError:
        return None


def max_seq_len(model: nn.Module) -> int | None:
    """Longest sequence the model's position embeddings allow (None when the config does not say)."""
    return max_positions(getattr(model, "config", None))


def onnx_quantized(path: str | os.PathLike) -> bool:
    """Whether an ONNX file is an int8-quantized graph: quantization nodes or int8 / uint8 weights.

    Only the graph is read (`load_external_data=False`), so this is cheap even for large models.
    """
    try:
        import onnx
    except ImportError as e:
        raise DeepCutsError(f"benchmarking {path} needs onnx to tell its precision: pip install onnx") from e
    graph = onnx.load(str(path), load_external_data=False).graph
    int8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return (any(node.op_type in _QUANTIZED_OPS for node in graph.node)
            or any(init.data_type in int8 for init in graph.initializer))


class TorchRunner:
    """A copy of `model` in eval mode, moved to `device` and cast to `dtype`.

    bf16 is a cast copy (`.to(bfloat16)`), not `torch.autocast`: autocast re-casts every weight on
    every call and keeps LayerNorm / softmax in fp32; on a tiny BERT and a 2-layer hidden-256 BERT
    (AMX CPU) the cast copy was as fast or faster at every shape tried (up to 1.5x at batch 8 x 64).
    It is also what a bf16 deployment runs.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype,
                 flops_model: nn.Module | None = None):
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        self.device = device
        self.dtype = NAMES[dtype]
        self.vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        self.flops_model = flops_model if flops_model is not None else model
        tensors = [*self.model.parameters(), *self.model.buffers()]
        self.weights_mb = sum(t.numel() * t.element_size() for t in tensors) / _MB

    def inputs(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.vocab is not None and self.vocab < int(ids.max()) + 1:
            ids = ids.remainder(self.vocab)
        ids = ids.to(self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def run(self, inputs: dict[str, torch.Tensor]) -> None:
        self.model(**inputs)

    def time_ms(self, inputs: dict[str, torch.Tensor]) -> float:
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            self.model(**inputs)
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        self.model(**inputs)
        return (time.perf_counter() - t0) * 1e3

    def peak_mb(self, inputs: dict[str, torch.Tensor]) -> float | None:
        if self.device.type == "cuda":
            return memory.cuda_peak_mb(lambda: self.run(inputs), self.device)
        return memory.cpu_peak_mb(lambda: self.run(inputs)) if memory.rss_available() else None

    def flops(self, seq_len: int) -> int | None:
        return flops_or_none(self.flops_model, seq_len)


class OnnxRunner:
    """An onnxruntime session on an exported model; runs in the precision it was exported in, which
    labels its rows: the output type (fp32 / fp16 / ...), or int8 for a quantized graph.

    Time includes onnxruntime's host/device copies of inputs and outputs (numpy feeds). Peak memory
    is measured on CPU only (the GPU allocations of onnxruntime are invisible to torch), in a second
    session without onnxruntime's memory arena: the timed session's arena keeps its memory between
    runs, which would hide every run's allocations from the RSS probe.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: torch.device, threads: int,
                 flops_model: nn.Module | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DeepCutsError(f"benchmarking {path} needs onnxruntime: pip install onnxruntime "
                                "(onnxruntime-gpu for device cuda)") from e
        self._ort, self._path, self._threads = ort, str(path), threads
        self._provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        if self._provider not in ort.get_available_providers():
            raise DeepCutsError(f"onnxruntime has no {self._provider} here (available: "
                                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
        self.session = self._session(arena=True)
        self._memory_session = None
        self.device = device
        output_type = self.session.get_outputs()[0].type
        self.dtype = "int8" if onnx_quantized(path) else _ONNX_DTYPES.get(output_type, output_type)
        self.flops_model = flops_model
        self.weights_mb = Path(path).stat().st_size / _MB  # the initializers dominate the file
        self.onnxruntime_version = ort.__version__
        self._feeds = [(i.name, i.type) for i in self.session.get_inputs()]
        for name, kind in self._feeds:
            if name not in ("input_ids", "attention_mask", "token_type_ids") or kind not in _ONNX_INTS:
                raise DeepCutsError(f"{path}: unsupported input {name!r} ({kind}); expected int32/int64 "
                                    "input_ids, attention_mask and optionally token_type_ids")

    def _session(self, arena: bool):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self._threads  # same thread count as torch, so the backends compare
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = arena
        options.log_severity_level = 3
        try:
            return self._ort.InferenceSession(self._path, sess_options=options, providers=[self._provider])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise DeepCutsError(f"onnxruntime cannot load {self._path}: {first_line(e)}") from e

    def inputs(self, ids: torch.Tensor) -> dict[str, np.ndarray]:
        values = {"input_ids": ids.numpy(), "attention_mask": np.ones(tuple(ids.shape)),
                  "token_type_ids": np.zeros(tuple(ids.shape))}
        return {name: values[name].astype(_ONNX_INTS[kind]) for name, kind in self._feeds}

    def run(self, inputs: dict[str, np.ndarray]) -> None:
        self.session.run(None, inputs)

    def time_ms(self, inputs: dict[str, np.ndarray]) -> float:
        t0 = time.perf_counter()
        self.session.run(None, inputs)
        return (time.perf_counter() - t0) * 1e3

    def peak_mb(self, inputs: dict[str, np.ndarray]) -> float | None:
        if self.device.type == "cuda" or not memory.rss_available():
            return None
        if self._memory_session is None:
            self._memory_session = self._session(arena=False)
        self._memory_session.run(None, inputs)  # one-time work of this shape stays out of the peak
        return memory.cpu_peak_mb(lambda: self._memory_session.run(None, inputs))

    def flops(self, seq_len: int) -> int | None:
        return flops_or_none(self.flops_model, seq_len)


class SessionRunner:
    """A loaded `deepcuts_fast.runtimes` artifact (`Runtime.load`: tokenizer arrays -> logits) on the CPU, labelled
    with its runtime (`backend`) and precision (`dtype`); `folder` is the artifact, whose weight files give
    `weights_mb`. Peak memory is not measured (None): runtimes that keep a memory arena between passes would hide
    a pass's allocations from the RSS probe, so no number is better than a wrong one."""

    _WEIGHTS = (".onnx", ".bin", ".safetensors")

    def __init__(self, session: Session, backend: str, dtype: str, folder: str | os.PathLike,
                 flops_model: nn.Module | None = None):
        self.session, self.backend, self.dtype = session, backend, dtype
        self.device = torch.device("cpu")
        self.flops_model = flops_model
        self.vocab = getattr(getattr(flops_model, "config", None), "vocab_size", None)
        self.weights_mb = sum(f.stat().st_size for f in Path(folder).iterdir() if f.suffix in self._WEIGHTS) / _MB

    def inputs(self, ids: torch.Tensor) -> dict[str, np.ndarray]:
        if self.vocab is not None and self.vocab < int(ids.max()) + 1:
            ids = ids.remainder(self.vocab)
        ids = ids.numpy().astype(np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    def run(self, inputs: dict[str, np.ndarray]) -> None:
        self.session(inputs)

    def time_ms(self, inputs: dict[str, np.ndarray]) -> float:
        t0 = time.perf_counter()
        self.session(inputs)
        return (time.perf_counter() - t0) * 1e3

    def peak_mb(self, inputs: dict[str, np.ndarray]) -> None:
        return None

    def flops(self, seq_len: int) -> int | None:
        return flops_or_none(self.flops_model, seq_len)
