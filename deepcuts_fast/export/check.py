"""The check every exported graph passes before it is published: its logits against torch's on a fixed random batch
padded as the tokenizer pads, enforced for fp32 / fp16 and reported for int8, so a shipped file is known to match."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DeepCutsError
from ..models import max_positions, model_device
from .inputs import TokenizerInputs, sample_inputs
from .runtime import onnx_session

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}  # abs and rel tolerance of the check, by weight dtype
CHECK_ROWS = 8  # rows of the fixed random check batch


def check_against_torch(graph: Path, model: nn.Module, names: tuple[str, ...], left_padding: bool, fused: bool,
                        tolerance: float | None) -> tuple[float, float]:
    """(max |logit difference|, argmax agreement) of `graph` and `model` on a fixed random batch padded as the
    tokenizer pads (`left_padding`); an error when an enforced `tolerance` (abs and rel) is exceeded or an output is
    not finite, whose advice depends on whether the graph was `fused`."""
    longest = int(max_positions(getattr(model, "config", None)) or 512)
    inputs = sample_inputs(model, names, batch=CHECK_ROWS, seq_len=min(longest, 21), device=model_device(model),
                           seed=1, left_padding=left_padding)
    session = onnx_session(graph)
    got = session.run(["logits"], {n: t.cpu().numpy() for n, t in inputs.items()})[0].astype(np.float64)
    want = torch_logits(model, inputs).astype(np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise DeepCutsError(f"the exported graph gives {'non-finite' if got.shape == want.shape else got.shape} "
                            f"logits where torch gives finite {want.shape} ones; nothing was written: "
                            f"{_retry_hint(fused)}")
    diff = float(np.abs(got - want).max())
    agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    if tolerance is not None and not np.allclose(got, want, rtol=tolerance, atol=tolerance):
        raise DeepCutsError(f"the exported graph's logits differ from torch's by up to {diff:.3g} (tolerance "
                            f"{tolerance:g}) on a fixed random batch; nothing was written: {_retry_hint(fused)}")
    return diff, agreement


def _retry_hint(fused: bool) -> str:
    """What to try when an exported graph does not match torch."""
    if fused:
        return "export without optimize=True (--optimize), whose fused graph is the likely cause"
    return "try another opset (opset=...), and report the model's config.json if it persists"


def torch_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The model's fp32 logits on `inputs` (eval mode, no gradients; its mode is restored)."""
    names = tuple(inputs)
    with torch.no_grad(), TokenizerInputs(model, names) as wrapped:
        return wrapped(*inputs.values()).float().cpu().numpy()
