"""ONNX Runtime's transformer optimizer on a traced graph: fused attention (one node per layer), LayerNorm and GELU,
for a family whose graph layout the optimizer knows (its `Family.onnx_model_type`); any other stays unfused."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, first_line
from .graph import keep_inputs
from .runtime import quiet_onnxruntime

ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention")
# why `optimize=True` leaves a family without an `onnx_model_type` unfused (said in the export's summary)
NO_FUSION = "onnxruntime's optimizer does not know this model's layout"


def fuse(graph: Path, out: Path, names: tuple[str, ...], left_padding: bool,
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
    with quiet_onnxruntime():
        # opt_level 0: only the Python fusions; onnxruntime applies its own graph optimizations at load time
        options = FusionOptions(optimizer_type)
        options.use_raw_attention_mask(left_padding)
        optimized = optimize_model(str(graph), model_type=optimizer_type, num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=options)
    keep_inputs(optimized.model, names)  # the optimizer drops inputs nothing reads
    optimized.save_model_to_file(str(out))
    return out, {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def attention_layers(model: nn.Module) -> int:
    """Encoder layers that kept at least one head (those an optimizer could turn into fused Attention nodes)."""
    try:
        return sum(1 for layer in encoder_layers(model) if layer.num_heads > 0)
    except DeepCutsError:
        return 0
