"""ONNX export for deployment, and evaluation of the exported file under onnxruntime.

`export(model, "slim.onnx", tokenizer)` writes `slim.onnx` and, beside it, the folder `slim.onnx.d/` with
config.json, the tokenizer files and `deepcuts_export.json` (what was exported and how close its logits came to
torch's). The graph's inputs are exactly the tensors the tokenizer returns, with dynamic batch and sequence axes;
attention is traced in its eager form with each layer's head count as a constant, so ONNX Runtime's transformer
optimizer can fuse it (`optimize=True` writes that fused graph); `quantize="int8"` adds dynamic int8
quantization. Every graph is run against torch on a fixed random batch before anything is published.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DeepCutsError, first_line
from ..families import family, find
from ..models import max_positions, model_device
from ..outputs import check_file, check_folder, write_file, write_folder

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # what BERT-family tokenizers return
SIDE_SUFFIX = ".d"
REPORT_FILE = "deepcuts_export.json"
SIDE_FOLDER_KIND = "onnx side folder"  # the manifest kind of the folder beside an .onnx file
QUANTIZE = ("int8",)
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}  # abs and rel tolerance of the check, by weight dtype
CHECK_ROWS = 8  # rows of the fixed random check batch


@dataclass(frozen=True)
class OnnxExport:
    """What `export` wrote and how close it is to torch; usable as the .onnx path (`os.fspath`, `str`)."""

    path: Path
    folder: Path  # config.json, tokenizer files (when a tokenizer was given) and REPORT_FILE
    inputs: tuple[str, ...]
    precision: str  # fp32, fp16 or int8
    optimized: bool
    per_channel: bool | None  # int8 scales per weight column (None: not quantized)
    size_bytes: int
    tokenizer: bool  # whether the tokenizer files were written beside the file
    fused: dict[str, int] = field(default_factory=dict)  # fused operator counts of the optimized graph
    attention_layers: int = 0  # layers that kept heads, each of which could become one fused Attention node
    max_abs_diff: float | None = None  # largest |ONNX - torch| logit on the check batch (None: not checked)
    argmax_agreement: float | None = None  # fraction of check rows whose predicted class matches torch's
    tolerance: float | None = None  # abs / rel tolerance the check enforced (None: int8, reported only)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def fused_attention(self) -> int:
        """Fused attention nodes in the written graph (0 unless optimized)."""
        return sum(self.fused.get(op, 0) for op in ATTENTION_OPS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (paths as strings)."""
        return {**asdict(self), "path": str(self.path), "folder": str(self.folder), "inputs": list(self.inputs),
                "fused_attention": self.fused_attention}

    def summary(self) -> str:
        """One paragraph saying what was written, what fused, and how close the logits are to torch's."""
        kind = self.precision + (" per-channel" if self.per_channel else "")
        beside = ("config.json and tokenizer files" if self.tokenizer else
                  "config.json (no tokenizer was given: pass one, so the file can be evaluated and deployed as is)")
        lines = [f"wrote {self.path} ({self.size_bytes / 2**20:.2f} MiB, {kind}; inputs {', '.join(self.inputs)}); "
                 f"{beside} in {self.folder}"]
        if self.optimized:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.fused.items())) or "nothing"
            lines.append(f"optimized: {self.fused_attention} of {self.attention_layers} attention layers fused "
                         f"(fused ops: {ops})")
        if self.max_abs_diff is not None:
            bound = (f" (tolerance {self.tolerance:g})" if self.tolerance is not None
                     else " (int8: reported, not enforced)")
            lines.append(f"vs torch on {CHECK_ROWS} random rows: max |logit diff| {self.max_abs_diff:.3g}{bound}, "
                         f"argmax agrees on {self.argmax_agreement:.0%}")
        return "\n".join(lines)


def side_folder(path: str | os.PathLike) -> Path:
    """The folder written beside an exported .onnx file: `model.onnx` -> `model.onnx.d`."""
    path = Path(path)
    return path.with_name(path.name + SIDE_SUFFIX)


def export(model: nn.Module, path: str | os.PathLike, tokenizer=None, *, optimize: bool = False,
           quantize: str | None = None, per_channel: bool = True, seq_len: int = 16, opset: int = 17,
           check: bool = True, overwrite: bool = False) -> OnnxExport:
    """Write `model` as ONNX at `path` (a .onnx file; an existing one is replaced only with `overwrite`) plus the
    side folder `path.d`, checked against torch first, so a deployment gets a file whose logits are known to match.

    The inputs are the tensors `tokenizer` returns (without one, those of the family's default tokenizer class),
    with dynamic batch and sequence axes. `optimize` writes ONNX Runtime's transformer-optimized graph (fused
    attention where the shapes allow; it reads row lengths off the mask, as right padding allows, unless the
    tokenizer pads on the left); `quantize="int8"`
    stores the MatMul, attention and embedding weights as int8 and quantizes activations at run time
    (`per_channel`, the default: one scale per weight column, which cut MiniLM's logit error against torch
    2-3x compared with one scale per tensor). The check runs a fixed random batch through both: fp32 logits must
    agree to 1e-4 (fp16 to 1e-2), int8's difference is only reported. Nothing is written when a step or the
    check fails.
    """
    target = _onnx_path(path)
    seq_len, opset = _check_export(model, seq_len, opset)
    settings = _Settings(model_inputs(model, tokenizer), seq_len, opset, bool(optimize),
                         _check_quantize(quantize, model), bool(per_channel), _pads_left(tokenizer),
                         family(model).onnx_model_type if optimize else None)
    _check_outputs(target, model, overwrite)
    _require(["onnx"] + (["onnxruntime"] if check or optimize or quantize else []))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work:
        graph, fused = _build(model, settings, Path(work))
        tolerance = None if settings.quantize else TOLERANCE[_weight_dtype(model)]
        diff, agreement = _check_against_torch(graph, model, settings, tolerance) if check else (None, None)
        precision = settings.quantize or {torch.float16: "fp16"}.get(_weight_dtype(model), "fp32")
        result = OnnxExport(target, side_folder(target), settings.names, precision, settings.optimize,
                            settings.per_channel if settings.quantize else None, graph.stat().st_size,
                            tokenizer is not None, fused, _attention_layers(model), diff, agreement, tolerance)
        _publish(graph, result, model, tokenizer, overwrite)
    return result


@dataclass(frozen=True)
class _Settings:
    """How one export traces, optimizes, quantizes and checks the graph."""

    names: tuple[str, ...]  # graph inputs, in INPUT_NAMES order
    seq_len: int  # tracing length
    opset: int
    optimize: bool
    quantize: str | None
    per_channel: bool
    left_padding: bool  # the tokenizer pads on the left, so fused attention must read the raw mask
    optimizer_type: str | None = None  # what onnxruntime's transformer optimizer calls the family (when optimizing)


def _pads_left(tokenizer) -> bool:
    """Whether `tokenizer` pads on the left (BERT-family tokenizers pad on the right by default)."""
    return getattr(tokenizer, "padding_side", "right") == "left"


def _build(model: nn.Module, settings: _Settings, work: Path) -> tuple[Path, dict[str, int]]:
    """(the final graph in `work`, fused operator counts): traced, then optimized and / or quantized as asked."""
    graph, fused = work / "model.onnx", {}
    _trace(model, settings.names, settings.seq_len, settings.opset, graph)
    if settings.optimize:
        graph, fused = _optimize(graph, work / "optimized.onnx", settings.names, settings.left_padding,
                                 settings.optimizer_type)
    if settings.quantize:
        graph = _quantize(graph, work / "int8.onnx", settings.per_channel)
    return graph, fused


def _check_outputs(target: Path, model: nn.Module, overwrite: bool) -> None:
    """Refuse, before any work, an .onnx path or side folder that the export may not write (see `outputs`)."""
    from .io import model_source

    check_file(target, model_source(model), overwrite=overwrite, name="the .onnx file")
    check_folder(side_folder(target), model_source(model), overwrite=overwrite, kind=SIDE_FOLDER_KIND,
                 name="the folder beside the .onnx file")


def _publish(graph: Path, result: OnnxExport, model: nn.Module, tokenizer, overwrite: bool) -> None:
    """Write the side folder, then move the checked graph to its path (each atomically)."""
    _write_side_folder(result.folder, model, tokenizer, result, overwrite)
    with write_file(result.path, overwrite=overwrite, name="the .onnx file") as tmp:
        shutil.copyfile(graph, tmp)


def _require(packages: list[str]) -> None:
    """Fail before any work when a package the export needs is missing, saying how to install it."""
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise DeepCutsError(f"ONNX export needs {' and '.join(missing)}: pip install 'deepcuts-fast[onnx]' (or pip "
                            f"install {' '.join(missing)})")


def _onnx_path(path) -> Path:
    """`path` as a Path after checking it names a .onnx file."""
    target = Path(path) if isinstance(path, (str, os.PathLike)) else None
    if target is None or target.suffix != ".onnx":
        raise DeepCutsError(f"ONNX export needs a .onnx path, got {path if target is not None else repr(path)}")
    return target


def _check_export(model: nn.Module, seq_len: int, opset: int) -> tuple[int, int]:
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


def _check_quantize(quantize: str | None, model: nn.Module) -> str | None:
    """`quantize` after checking it is None or "int8", and that an int8 export starts from fp32 weights."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise DeepCutsError(f"quantize must be None or 'int8', got {quantize!r}")
    if _weight_dtype(model) != torch.float32:
        raise DeepCutsError("int8 quantization starts from fp32 weights; export model.float() instead")
    return quantize


def _weight_dtype(model: nn.Module) -> torch.dtype:
    """fp16 when any floating-point weight is fp16 (an fp16 export), else fp32."""
    return torch.float16 if any(p.dtype == torch.float16 for p in model.parameters()) else torch.float32


def model_inputs(model: nn.Module, tokenizer=None) -> tuple[str, ...]:
    """The graph's input names: the tensors `tokenizer` returns for a sentence pair (without a tokenizer, those of
    the model family's default tokenizer class in transformers), so its output can be fed as is."""
    names = _tokenizer_outputs(tokenizer) if tokenizer is not None else _default_tokenizer_inputs(model)
    missing = [n for n in ("input_ids", "attention_mask") if n not in names]
    if missing:
        raise DeepCutsError(f"the tokenizer returns no {' or '.join(missing)}; ONNX export needs a tokenizer that "
                            "returns input_ids and attention_mask (pass the model's own tokenizer)")
    return tuple(n for n in INPUT_NAMES if n in names)


def _tokenizer_outputs(tokenizer) -> set[str]:
    """Names of the tensors `tokenizer` returns for a sentence pair."""
    try:
        return set(tokenizer("a", "b"))
    except Exception as e:  # any tokenizer-like object may fail in its own way
        raise DeepCutsError(f"cannot run the tokenizer to find the model's inputs: {first_line(e)}; pass a "
                            "transformers tokenizer") from e


def _default_tokenizer_inputs(model: nn.Module) -> set[str]:
    """What the family's tokenizer returns (its `inputs`); for a model outside the registry, the `model_input_names`
    of the tokenizer class transformers picks for it."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    config = getattr(model, "config", None)
    known = find(config)
    if known is not None:
        return set(known.inputs)
    try:
        found = TOKENIZER_MAPPING[type(config)]
    except (KeyError, TypeError):
        found = None
    classes = found if isinstance(found, tuple) else (found,)
    names = next((c.model_input_names for c in classes if c is not None), None)
    return set(names) if names else {"input_ids", "attention_mask"}


# ---------------------------------------------------------------------------------------------
# Tracing


def _trace(model: nn.Module, names: tuple[str, ...], seq_len: int, opset: int, out: Path) -> None:
    """Export `model` with eager attention, dynamic axes and inputs `names` to `out`, then pin head counts."""
    example = sample_inputs(model, names, batch=2, seq_len=seq_len, device=model_device(model))
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with torch.no_grad(), _TokenizerInputs(model, names) as wrapped, _eager_attention(model), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about HF's Python-level shape checks; outputs are checked
        torch.onnx.export(wrapped, tuple(example[n] for n in names), str(out), input_names=list(names),
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
                          external_data=False)
    import onnx

    graph = onnx.load(str(out))
    _keep_inputs(graph, names)
    _pin_head_counts(graph)
    onnx.save(graph, str(out))


class _TokenizerInputs(nn.Module):
    """Adapter taking the tokenizer's tensors positionally (in `names` order) and returning the logits, as the
    exporter wants; an input the model's forward does not name (DistilBERT's token_type_ids) is accepted and
    ignored. As a context manager it holds the model in eval mode and restores its mode afterwards."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.used = accepted_inputs(model, names)
        self._was_training = model.training

    def __enter__(self) -> "_TokenizerInputs":
        return self.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self._was_training)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs))
        return self.model(**{n: given[n] for n in self.used}).logits


def accepted_inputs(model: nn.Module, names: Iterable[str]) -> tuple[str, ...]:
    """The `names` that `model.forward` takes as named parameters (the rest it would ignore or refuse)."""
    params = inspect.signature(model.forward).parameters
    return tuple(n for n in names if n in params)


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


def sample_inputs(model: nn.Module, names: Sequence[str], batch: int, seq_len: int, device: torch.device,
                  seed: int = 0, left_padding: bool = False) -> dict[str, torch.Tensor]:
    """A seeded random batch shaped like a tokenizer's output for sentence pairs: padding of varied length on the
    right (or left; the first row full, the last half padding), and token types 0 then 1 where the model has two
    segments."""
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 100))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=g)
    lengths = torch.randint(2, seq_len + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = seq_len, max(2, seq_len // 2)  # one full row, one padded (traced masking path)
    positions = torch.arange(seq_len)[None, :]
    mask = (positions < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, int(getattr(config, "pad_token_id", None) or 0))
    two_segments = int(getattr(config, "type_vocab_size", 2) or 1) > 1
    types = ((positions >= (lengths[:, None] + 1) // 2) & (mask == 1)).long() * int(two_segments)
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if left_padding:  # each row rolled right by its padding, so the padding comes first
        values = {k: torch.stack([row.roll(seq_len - int(n)) for row, n in zip(v, lengths)]) for k, v in values.items()}
    return {n: values[n].to(device) for n in names}


def _keep_inputs(graph, names: Sequence[str]) -> None:
    """Add back any of `names` the exporter dropped because the model ignores it, so the tokenizer's whole output
    can still be fed (onnxruntime refuses unknown input names)."""
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


def _attention_layers(model: nn.Module) -> int:
    """Encoder layers that kept at least one head (those an optimizer could turn into fused Attention nodes)."""
    from ..arch import encoder_layers

    try:
        return sum(1 for layer in encoder_layers(model) if layer.num_heads > 0)
    except DeepCutsError:
        return 0


# ---------------------------------------------------------------------------------------------
# Optimization and quantization


def _optimize(graph: Path, out: Path, names: tuple[str, ...], left_padding: bool,
              optimizer_type: str) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's transformer optimizer on `graph` (head counts and hidden sizes read from the graph), run as
    for its model type `optimizer_type` (the family's `onnx_model_type`), written to `out`; returns it with the
    counts of the operators it fused. Fused attention reads each row's length off the mask (fastest, right padding
    only) unless `left_padding`, when it takes the mask itself."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:
        raise DeepCutsError(f"optimize=True needs onnxruntime's transformer optimizer ({first_line(e)}): "
                            "pip install onnxruntime") from e
    with _quiet_onnxruntime():
        # opt_level 0: only the Python fusions; onnxruntime applies its own graph optimizations at load time
        options = FusionOptions(optimizer_type)
        options.use_raw_attention_mask(left_padding)
        optimized = optimize_model(str(graph), model_type=optimizer_type, num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=options)
    _keep_inputs(optimized.model, names)  # the optimizer drops inputs nothing reads
    optimized.save_model_to_file(str(out))
    return out, {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def _quantize(graph: Path, out: Path, per_channel: bool) -> Path:
    """Dynamic int8 quantization of `graph` (MatMul, attention and embedding weights; activations quantized at run
    time), written to `out`."""
    import onnx

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise DeepCutsError(f"quantize='int8' needs onnxruntime.quantization ({first_line(e)}): "
                            "pip install onnxruntime") from e
    with _quiet_onnxruntime():
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


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silence onnxruntime's Python tools (optimizer fusion notes, quantizer advice) and warnings for a block;
    what fused is reported in the export's summary instead."""
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(n) for n in ("onnxruntime", "onnx_model", "fusion_attention"))]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Checking against torch


def _check_against_torch(graph: Path, model: nn.Module, settings: _Settings,
                         tolerance: float | None) -> tuple[float, float]:
    """(max |logit difference|, argmax agreement) of `graph` and `model` on a fixed random batch padded as the
    tokenizer pads; an error when an enforced `tolerance` (abs and rel) is exceeded or an output is not finite."""
    longest = int(max_positions(getattr(model, "config", None)) or 512)
    inputs = sample_inputs(model, settings.names, batch=CHECK_ROWS, seq_len=min(longest, 21),
                           device=model_device(model), seed=1, left_padding=settings.left_padding)
    optimized = settings.optimize
    session = onnx_session(graph)
    got = session.run(["logits"], {n: t.cpu().numpy() for n, t in inputs.items()})[0].astype(np.float64)
    want = _torch_logits(model, inputs).astype(np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise DeepCutsError(f"the exported graph gives {'non-finite' if got.shape == want.shape else got.shape} "
                            f"logits where torch gives finite {want.shape} ones; nothing was written: "
                            f"{_retry_hint(optimized)}")
    diff = float(np.abs(got - want).max())
    agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    if tolerance is not None and not np.allclose(got, want, rtol=tolerance, atol=tolerance):
        raise DeepCutsError(f"the exported graph's logits differ from torch's by up to {diff:.3g} (tolerance "
                            f"{tolerance:g}) on a fixed random batch; nothing was written: {_retry_hint(optimized)}")
    return diff, agreement


def _retry_hint(optimized: bool) -> str:
    """What to try when an exported graph does not match torch."""
    if optimized:
        return "export without optimize=True (--optimize), whose fused graph is the likely cause"
    return "try another opset (opset=...), and report the model's config.json if it persists"


def _torch_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The model's fp32 logits on `inputs` (eval mode, no gradients; its mode is restored)."""
    names = tuple(inputs)
    with torch.no_grad(), _TokenizerInputs(model, names) as wrapped:
        return wrapped(*inputs.values()).float().cpu().numpy()


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session on `path` with `threads` intra-op threads (default: torch's thread count)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise DeepCutsError("running an ONNX file needs onnxruntime: pip install onnxruntime") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise DeepCutsError(f"onnxruntime cannot load {path}: {first_line(e)}") from e


# ---------------------------------------------------------------------------------------------
# The side folder, and evaluating an exported file


def _write_side_folder(folder: Path, model: nn.Module, tokenizer, result: OnnxExport, overwrite: bool) -> None:
    """Write config.json, the tokenizer files and the export report to `folder` atomically (replacing an
    earlier export's folder only with `overwrite`)."""
    with write_folder(folder, kind=SIDE_FOLDER_KIND, overwrite=overwrite,
                      name="the folder beside the .onnx file") as tmp:
        model.config.save_pretrained(tmp)
        _drop_auto_map(tmp / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(_report(result), indent=1), encoding="utf-8")


def _report(result: OnnxExport) -> dict[str, Any]:
    """The export's record for its side folder: paths as names (the pair may be moved together) and the versions
    that wrote and checked the file."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    packages = ("deepcuts-fast", "torch", "transformers", "onnx", "onnxruntime")
    return {**result.to_dict(), "path": result.path.name, "folder": result.folder.name,
            "versions": {p: installed(p) for p in packages}}


def _drop_auto_map(config_file: Path) -> None:
    """Remove a slim config's `auto_map`: it names modeling code that lives in the model folder, not here."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.pop("auto_map", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class OnnxClassifier:
    """An exported .onnx file under onnxruntime, with the config and tokenizer from its side folder; evaluates
    like `train.evaluate`, so an int8 file's accuracy can be re-measured."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeepCutsError(f"{self.path} does not exist or is not a file; give an .onnx file written by "
                                "`deepcuts export` / dc.export")
        self.folder = side_folder(self.path)
        self.config = _side_config(self.folder, self.path)
        self.tokenizer = _side_tokenizer(self.folder, self.path)
        self.session = onnx_session(self.path, threads)
        self.inputs = tuple(i.name for i in self.session.get_inputs())

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """fp32 logits (B, C) of one tokenized batch (extra keys such as labels are ignored)."""
        missing = [n for n in self.inputs if n not in batch]
        if missing:
            raise DeepCutsError(f"{self.path} needs {', '.join(missing)}, which the batch lacks; tokenize with the "
                                f"tokenizer in {self.folder}")
        feeds = {n: np.asarray(batch[n].cpu() if isinstance(batch[n], torch.Tensor) else batch[n], np.int64)
                 for n in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0]).float()

    def evaluate(self, batches: Iterable[dict[str, Any]], progress: bool = False):
        """`train.EvalResult` of the file on labelled `batches` (a regressor when config.num_labels is 1)."""
        from ..train import evaluate_logits

        pairs = ((self.logits(b), b["labels"].cpu()) for b in tqdm(batches, desc="evaluate", disable=not progress))
        return evaluate_logits(pairs, regression=getattr(self.config, "num_labels", None) == 1)


def _side_config(folder: Path, path: Path):
    """The model config written beside `path`."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise DeepCutsError(f"{folder}/config.json is missing: {path} needs the folder its export writes beside it "
                            f"(config.json and tokenizer files); export again with `deepcuts export` / dc.export")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"{folder}/config.json is unreadable: {first_line(e)}") from e


def _side_tokenizer(folder: Path, path: Path):
    """The tokenizer written beside `path`."""
    from ..models import load_tokenizer

    try:
        return load_tokenizer(str(folder))
    except DeepCutsError as e:
        raise DeepCutsError(f"{path} has no usable tokenizer beside it ({first_line(e)}); export with a tokenizer: "
                            "dc.export(model, path, tokenizer), or `deepcuts export`") from e
