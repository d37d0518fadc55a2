"""Running an exported file under ONNX Runtime: its CPU session, `OnnxClassifier` (the file with the config and
tokenizer beside it, evaluated like a torch model), and the quiet block the optimizer and quantizer run in."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DeepCutsError, first_line
from .side import read_config, read_tokenizer, side_folder


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


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
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


class OnnxClassifier:
    """An exported .onnx file under onnxruntime, with the config and tokenizer from its side folder; evaluates
    like `train.evaluate`, so an int8 file's accuracy can be re-measured."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeepCutsError(f"{self.path} does not exist or is not a file; give an .onnx file written by "
                                "`deepcuts export` / dc.export")
        self.folder = side_folder(self.path)
        self.config = read_config(self.path)
        self.tokenizer = read_tokenizer(self.path)
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
