"""PyTorch: the slim model folder itself (`dc.save_pretrained`'s layout), run eagerly in fp32, or in bf16 where
`precision.choose` says this CPU runs bf16 natively (elsewhere bf16 is emulated and slower, so it is not offered)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Feeds, Runtime, Session, feeds_of


def precisions() -> tuple[str, ...]:
    """fp32, plus bf16 where this CPU runs it natively (as `deepcuts_fast.precision` decides, never assumed)."""
    from ..precision import choose

    return ("fp32", "bf16") if choose("infer", "cpu", "auto").dtype == torch.bfloat16 else ("fp32",)


def build(model: nn.Module, tokenizer, precision: str, out: Path, calibration: Sequence[Feeds]) -> None:
    """The model folder (fp32 safetensors, config, tokenizer, modeling file of a slim model); bf16 is a cast at
    load time, so the folder stays the one every other tool reads."""
    from ..pruning.io import _usual_permissions
    from ..pruning.remote_code import add_remote_code

    model.save_pretrained(out, safe_serialization=True)
    add_remote_code(out)
    tokenizer.save_pretrained(out)
    _usual_permissions(out)  # as dc.save_pretrained: transformers writes the weights 0600


def load(folder: Path, precision: str, threads: int) -> Session:
    """The folder as a torch model in `precision` on the CPU, with `threads` intra-op threads (process-wide)."""
    from ..pruning import from_pretrained

    torch.set_num_threads(threads)
    return session(from_pretrained(folder, dtype=torch.bfloat16 if precision == "bf16" else None))


def session(model: nn.Module) -> Session:
    """`model` (in eval mode) as a session: the tokenizer outputs its forward takes -> its logits as fp32."""
    from ..export.inputs import accepted_inputs

    names = accepted_inputs(model, ("input_ids", "attention_mask", "token_type_ids"))

    def run(feeds: Feeds) -> np.ndarray:
        with torch.inference_mode():
            given = feeds_of(feeds, [n for n in names if n in feeds])
            logits = model(**{n: torch.from_numpy(v) for n, v in given.items()}).logits
        return logits.float().numpy()

    return run


RUNTIME = Runtime("torch", ("torch",), None, precisions, build, load, position=0)
