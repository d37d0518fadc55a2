"""Save, load and export slim models (safetensors only; every write is atomic).

A slim directory is an ordinary HF model folder (`config.json`, `model.safetensors`, tokenizer
files) whose config also records the per-layer widths (`deepcuts_heads`, `deepcuts_ffn`), plus
`deepcuts_plan.json`. Stock `AutoModel.from_pretrained` cannot read it, because transformers has
one width for all layers; `dc.from_pretrained` rebuilds the slim shapes first, then loads the weights.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_folder, atomic_path, is_previous_output
from ..errors import DeepCutsError, first_line
from ..models import WEIGHTS_FILE, check_finite_weights, load_model, model_device, resolve_model_path, weight_problems
from ..planning.plan import Plan
from .slicing import shrink

PLAN_FILE = "deepcuts_plan.json"


def save_pretrained(model: nn.Module, path: str | os.PathLike, tokenizer=None, plan: Plan | None = None,
                    overwrite: bool = False) -> Path:
    """Write `model` (dense or slim) with its tokenizer and plan to folder `path`, atomically; an existing
    folder is replaced only with `overwrite`, and only when it is a model folder (has config.json) or empty,
    so a folder of other files is never deleted."""
    target = Path(path)
    with atomic_folder(target, overwrite=overwrite, replaceable=_is_model_folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            (tmp / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1), encoding="utf-8")
    return target


def _is_model_folder(folder: Path) -> bool:
    """Whether `folder` is empty or a model folder (config.json), which `save_pretrained` may replace."""
    return is_previous_output(folder, [("config.json",)])


def from_pretrained(path: str | os.PathLike, attn_implementation: str | None = None) -> nn.Module:
    """Any model as a classifier in eval mode: a slim folder written by `save_pretrained` is rebuilt
    exactly with its per-layer widths; dense folders, the `minilm` alias and hub names go through
    `load_model` (keeping a saved head)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(resolve_model_path(str(path)))
    if not folder.is_dir():  # a hub name
        return load_model(str(path), attn_implementation=attn_implementation)
    for name in ("config.json", WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise DeepCutsError(f"{folder} is not a complete model folder: {name} is missing")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise DeepCutsError(f"{folder}/config.json is unreadable: {first_line(e)}") from e
    heads, ffn = getattr(config, "deepcuts_heads", None), getattr(config, "deepcuts_ffn", None)
    if heads is None or ffn is None:  # an ordinary (dense) model folder
        return load_model(str(folder), attn_implementation=attn_implementation)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model = AutoModelForSequenceClassification.from_config(config)
    shrink(model, [range(h) for h in heads], [range(f) for f in ffn])
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise DeepCutsError(f"{folder}/{WEIGHTS_FILE} is corrupt or partial ({e})") from e
    missing, unexpected, wrong = _compare(model, state)
    problems = weight_problems(missing=missing, unexpected=unexpected, mismatched=wrong)
    if problems:
        raise DeepCutsError(f"slim folder {folder} does not match its config: its weights have {problems}; the "
                            "folder is corrupt or was not written by deepcuts: save the pruned model again")
    model.load_state_dict(state, strict=False)
    check_finite_weights(model, str(folder))
    model.tie_weights()
    return model.eval()


def _compare(model: nn.Module, state: dict) -> tuple[list, list, list]:
    """The missing, unexpected and wrong-shape weights of `state` for `model` (tied copies may be absent)."""
    expected = model.state_dict()
    tied = {n for n in expected if n not in state and _is_tied(model, n)}
    missing = sorted(n for n in expected if n not in state and n not in tied)
    unexpected = sorted(n for n in state if n not in expected)
    wrong = [f"{n} (saved {tuple(state[n].shape)}, model {tuple(t.shape)})"
             for n, t in sorted(expected.items()) if n in state and tuple(state[n].shape) != tuple(t.shape)]
    return missing, unexpected, wrong


def _is_tied(model: nn.Module, name: str) -> bool:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return name in keys


def export(model: nn.Module, path: str | os.PathLike, seq_len: int = 16, opset: int = 17) -> Path:
    """Write `model` as ONNX with dynamic batch and sequence axes (inputs: input_ids, attention_mask)."""
    target = Path(path) if isinstance(path, (str, os.PathLike)) else None
    if target is None or target.suffix != ".onnx":
        raise DeepCutsError(f"ONNX export needs a .onnx path, got {path if target is not None else repr(path)}")
    seq_len, opset = _check_export(model, seq_len, opset)
    ids, mask = _example_inputs(seq_len, model_device(model))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with atomic_path(target) as tmp, torch.no_grad(), _LogitsOnly(model) as wrapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about HF's Python-level shape checks; outputs are tested
        torch.onnx.export(wrapped, (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
                          external_data=False)
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
    longest = int(getattr(getattr(model, "config", None), "max_position_embeddings", 512))
    return whole_number("seq_len", seq_len, minimum=2, maximum=longest), whole_number("opset", opset, minimum=7)


def export_program(model: nn.Module, path: str | os.PathLike, seq_len: int = 16) -> Path:
    """Write a `torch.export` program (.pt2) with dynamic batch and sequence."""
    target = Path(path)
    longest = int(getattr(model.config, "max_position_embeddings", 512))
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=2, max=longest)
    with _LogitsOnly(model) as wrapped:
        program = torch.export.export(wrapped, _example_inputs(seq_len, model_device(model)),
                                      dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    with atomic_path(target) as tmp:
        torch.export.save(program, str(tmp))
    return target


def _example_inputs(seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask with padding, so tracing keeps the masking path."""
    ids = torch.ones(2, seq_len, dtype=torch.long, device=device)
    mask = torch.ones(2, seq_len, dtype=torch.long, device=device)
    mask[1, seq_len // 2:] = 0
    return ids, mask


class _LogitsOnly(nn.Module):
    """Adapter with positional tensor inputs and one tensor output, as exporters want; as a context
    manager it holds the model in eval mode and restores its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._was_training = model.training

    def __enter__(self) -> "_LogitsOnly":
        return self.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self._was_training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
