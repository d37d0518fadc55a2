"""The check every exported graph passes before it is published: its task's outputs against torch's on a fixed random
batch padded as the tokenizer pads, enforced for fp32 / fp16 and reported for int8, so a shipped file is known to
match."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError
from ..models import max_positions, model_device
from .inputs import TokenizerInputs, graph_task, sample_inputs
from .runtime import onnx_session

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}  # abs and rel tolerance of the check, by weight dtype
CHECK_ROWS = 8  # rows of the fixed random check batch


def check_against_torch(graph: Path, model: nn.Module, names: tuple[str, ...], left_padding: bool, fused: bool,
                        tolerance: float | None) -> tuple[float, float | None]:
    """(max |output difference|, argmax agreement) of `graph` and `model` on a fixed random batch padded as the
    tokenizer pads (`left_padding`), over every output of the model's task (outputs with a tokens axis at the real
    tokens only: what a fused graph computes at padding is no output); the agreement is over predicted classes,
    tokens' classes or answer positions (None for an embedding). An error when an enforced `tolerance` (abs and rel)
    is exceeded or an output is not finite, whose advice depends on whether the graph was `fused`."""
    longest = int(max_positions(getattr(model, "config", None)) or 512)
    inputs = sample_inputs(model, names, batch=CHECK_ROWS, seq_len=min(longest, 21), device=model_device(model),
                           seed=1, left_padding=left_padding)
    task = graph_task(model)
    session = onnx_session(graph)
    got = session.run(list(task.graph_outputs), {n: t.cpu().numpy() for n, t in inputs.items()})
    want = torch_outputs(model, inputs)
    real = inputs["attention_mask"].cpu().numpy() == 1
    diff, agreements = 0.0, []
    for name, g, w in zip(task.graph_outputs, got, want):
        g = g.astype(np.float64)
        if g.shape != w.shape or not np.isfinite(g).all():
            raise DeepCutsError(f"the exported graph gives {'non-finite' if g.shape == w.shape else g.shape} {name} "
                                f"where torch gives finite {w.shape} ones; nothing was written: {_retry_hint(fused)}")
        if task.token_axis and g.ndim == real.ndim:  # one value per position: the answer's argmax over real ones
            agreements.append(np.where(real, g, -np.inf).argmax(-1) == np.where(real, w, -np.inf).argmax(-1))
            g, w = g[real], w[real]
        else:
            if task.token_axis:  # classes per token
                g, w = g[real], w[real]
            if task.head:
                agreements.append(g.argmax(-1) == w.argmax(-1))
        diff = max(diff, float(np.abs(g - w).max()))
        if tolerance is not None and not np.allclose(g, w, rtol=tolerance, atol=tolerance):
            raise DeepCutsError(f"the exported graph's {name} differ from torch's by up to {diff:.3g} (tolerance "
                                f"{tolerance:g}) on a fixed random batch; nothing was written: {_retry_hint(fused)}")
    agreement = float(np.concatenate(agreements).mean()) if task.head else None
    return diff, agreement


def _retry_hint(fused: bool) -> str:
    """What to try when an exported graph does not match torch."""
    if fused:
        return "export without optimize=True (--optimize), whose fused graph is the likely cause"
    return "try another opset (opset=...), and report the model's config.json if it persists"


def torch_outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """The model's fp32 task outputs (`Task.graph_outputs`) on `inputs` (eval mode, no gradients; its mode is
    restored)."""
    names = tuple(inputs)
    with torch.no_grad(), TokenizerInputs(model, names) as wrapped:
        return [out.float().cpu().numpy().astype(np.float64) for out in wrapped(*inputs.values())]
