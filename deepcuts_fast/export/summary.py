"""`OnnxExport`, the record of one export: what was written, what fused (or why nothing did), and how close its
logits came to torch's; its summary is what `deepcuts export` prints, its report what the side folder keeps."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .check import CHECK_ROWS
from .fusion import ATTENTION_OPS


@dataclass(frozen=True)
class OnnxExport:
    """What `export` wrote and how close it is to torch; usable as the .onnx path (`os.fspath`, `str`)."""

    path: Path
    folder: Path  # config.json, tokenizer files (when a tokenizer was given) and the export report
    inputs: tuple[str, ...]
    precision: str  # fp32, fp16 or int8
    optimized: bool
    per_channel: bool | None  # int8 scales per weight column (None: not quantized)
    size_bytes: int
    tokenizer: bool  # whether the tokenizer files were written beside the file
    fused: dict[str, int] = field(default_factory=dict)  # fused operator counts of the optimized graph
    attention_layers: int = 0  # layers that kept heads, each of which could become one fused Attention node
    max_abs_diff: float | None = None  # largest |ONNX - torch| logit on the check batch (None: not checked)
    argmax_agreement: float | None = None  # predicted classes / positions matching torch's (None: an embedding)
    tolerance: float | None = None  # abs / rel tolerance the check enforced (None: int8, reported only)
    no_fusion: str | None = None  # why optimize=True left the graph unfused (None: fused, or not asked)

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

    def report(self) -> dict[str, Any]:
        """The record for the side folder: paths as names (the pair may be moved together) and the versions that
        wrote and checked the file."""
        from importlib.metadata import PackageNotFoundError, version

        def installed(package: str) -> str | None:
            try:
                return version(package)
            except PackageNotFoundError:
                return None

        packages = ("deepcuts-fast", "torch", "transformers", "onnx", "onnxruntime")
        return {**self.to_dict(), "path": self.path.name, "folder": self.folder.name,
                "versions": {p: installed(p) for p in packages}}

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
        if self.no_fusion:
            lines.append(f"no fusion: {self.no_fusion}")
        if self.max_abs_diff is not None:
            bound = (f" (tolerance {self.tolerance:g})" if self.tolerance is not None
                     else " (int8: reported, not enforced)")
            what, agrees = (("embedding", "") if self.argmax_agreement is None else  # an embedding model's graph
                            ("logit", f", argmax agrees on {self.argmax_agreement:.0%}"))
            lines.append(f"vs torch on {CHECK_ROWS} random rows: max |{what} diff| {self.max_abs_diff:.3g}{bound}"
                         f"{agrees}")
        return "\n".join(lines)
