"""What one encoder family is: the `Family` record each module of this package declares.

A family says where its encoder layers and their six prunable Linears live (module paths), which tensor slices
make one prunable unit (`unit_slices`: a head owns `head_dim` rows of Q, K and V and as many columns of the
attention output; an FFN neuron one row of the FFN input and one column of the FFN output, in the spirit of
Torch-Pruning's dependency groups; a fused Linear, `stacked`, holds several such blocks and a unit its slice of
each), how a layer is narrowed (`narrow_layer`, the one piece of code the pruner and
the stock-loadable modeling file share), and its export facts (graph inputs, where its positions start, what
ONNX Runtime's transformer optimizer calls it), in the spirit of Optimum's per-model-type OnnxConfig.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..arch import HEAD_ROLES, NEURON_ROLES, ROLES, UNIT_AXIS
from .modeling_deepcuts_slim import narrow_layer  # the file saved folders carry


@dataclass(frozen=True)
class Family:
    """One supported encoder family (one transformers `model_type`)."""

    model_type: str  # config.model_type
    class_stem: str  # the transformers class names' stem: <stem>Model, <stem><task suffix> (see `tasks`)
    # module paths, relative to the base model (embeddings, layers) or to one encoder layer (the rest)
    embeddings: str
    layers: str
    attention: str  # the module that owns the head count and head size
    query: str
    key: str  # the same path as `query` where one fused Linear projects Q, K and V (see `stacked`)
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str
    heads_attr: str | None  # attribute of `attention` holding the number of heads (None: it reads them off its
    #                         weights, as ModernBERT's does)
    head_dim_attr: str  # attribute of `attention` holding the size of one head
    output_norm: str | None  # the LayerNorm a layer's output passes through after its last residual add (post-norm
    #                          layers: BERT's `output.LayerNorm`); None where the layer's output is the residual sum
    #                          itself (pre-norm layers, as ModernBERT's)
    # fused Linears: (path in the layer, blocks) for a Linear that stacks `blocks` unit-ordered blocks along its unit
    # axis: one QKV projection ([3, heads, head_dim] rows; query, key and value name it), or a GLU's input and gate
    # ([2, neurons] rows; ffn_in names it). A unit owns its slice of each block.
    stacked: tuple[tuple[str, int], ...] = ()
    # more of a head's dependency group, beyond the six roles
    head_extras: tuple[str, ...] = ()  # Linears (paths in the layer) with head_dim rows per head, where the layer
    #                                    has them (DeBERTa's separate relative-position projections): sliced with the
    #                                    head, not scored
    per_head_input: str | None = None  # an argument of the attention module's forward whose dim 1 holds one slice
    #                                    per head, computed once for all layers (MPNet's relative position bias):
    #                                    each narrowed layer picks its kept heads' slices
    # removing whole layers: config attributes holding one entry per layer (sliced with the layers), and which
    # configs build their first layer unlike the others (so it cannot be removed: the next layer would be rebuilt
    # as a first one on loading)
    per_layer_config: tuple[str, ...] = ()
    special_first_layer: Callable[[object], bool] | None = None
    relative_costs: Callable[[object], tuple[int, int, int]] | None = None  # config -> (relative-position keys a
    #                                    head also attends over, query-by-key products over them, projections of
    #                                    them per head): DeBERTa's disentangled attention
    # export facts
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")  # what the family's tokenizer returns
    positions_after_padding: bool = False  # RoBERTa-like: position ids start at pad_token_id + 1
    onnx_model_type: str | None = "bert"  # what onnxruntime's transformer optimizer calls this graph layout
    # how a config of a given shape is made (for tests and benchmarks): the config's names for the four shape
    # numbers, and the settings the family's released checkpoints use beyond transformers' defaults
    shape_names: tuple[str, str, str, str] = ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers")
    released: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        for path in dict.fromkeys(self.path(r) for r in ROLES):
            sharing = sum(self.path(r) == path for r in ROLES)
            if sharing > 1 and self.blocks(path) != sharing:
                raise ValueError(f"{self.model_type}: {sharing} roles share {path}, which must stack {sharing} blocks")

    def layout(self) -> dict:
        """The layer layout as the self-contained modeling file reads it (written to config.json as
        `deepcuts_layout`): the layers, the attention module and its attributes, and each unit's tensor slices."""
        slices = self.unit_slices()
        prefix = self.attention + "."
        return {"layers": self.layers, "attention": self.attention, "heads_attr": self.heads_attr,
                "head_dim_attr": self.head_dim_attr,
                # [path, axis, blocks] per Linear of a unit
                "heads": [list(s) for s in slices["heads"]], "neurons": [list(s) for s in slices["neurons"]],
                "head_extras": list(self.head_extras), "per_head_input": self.per_head_input,
                # where the attention module reaches its output Linear, if it owns it (DistilBERT)
                "attn_out_inside": self.attn_out[len(prefix):] if self.attn_out.startswith(prefix) else None}

    def unit_slices(self) -> dict[str, tuple[tuple[str, int, int], ...]]:
        """The dependency groups: for a head and for an FFN neuron, the (Linear path in the layer, axis, blocks)
        of each Linear whose slices make one unit (axis 0: output rows with their biases; 1: input columns; blocks:
        how many unit-ordered blocks a fused Linear stacks along the axis, 1 for a plain one), each Linear once."""
        def group(roles):
            paths = dict.fromkeys(self.path(r) for r in roles)  # a fused Linear serves several roles
            return tuple((p, 0 if UNIT_AXIS[self.role_of(p)] == "rows" else 1, self.blocks(p)) for p in paths)

        return {"heads": group(HEAD_ROLES), "neurons": group(NEURON_ROLES)}

    @property
    def pre_norm(self) -> bool:
        """Whether a layer's output is its residual sum itself (no LayerNorm after the last residual add), as in
        ModernBERT; the refits read residuals and bridge removed layers differently then."""
        return self.output_norm is None

    def output_norm_of(self, layer: nn.Module) -> nn.Module | None:
        """The LayerNorm an encoder layer module's output passes through after its last residual add; None in a
        pre-norm family, whose layer output is the residual sum itself."""
        return None if self.output_norm is None else layer.get_submodule(self.output_norm)

    def blocks(self, path: str) -> int:
        """How many unit-ordered blocks the Linear at `path` stacks along its unit axis (1: a plain Linear)."""
        return dict(self.stacked).get(path, 1)

    def role_of(self, path: str) -> str:
        """The first of the six `arch.ROLES` whose Linear is at `path`."""
        return next(r for r in ROLES if self.path(r) == path)

    def path(self, role: str) -> str:
        """The module path, relative to an encoder layer, of one of the six `arch.ROLES`."""
        if role not in ROLES:
            raise KeyError(role)
        return getattr(self, role)

    def narrow_layer(self, layer: nn.Module, heads: int, width: int,
                     new_linear: Callable[[str, nn.Linear, int, int], nn.Linear],
                     kept_heads: Sequence[int] | None = None) -> None:
        """Give one encoder layer `heads` heads and `width` FFN neurons; `new_linear(kind, old, axis, size)` makes
        each narrowed Linear (kind "heads" or "neurons"); `kept_heads`, the pruner's, says which of the layer's heads
        stay. The modeling file's code: the pruner and stock loading narrow a layer the same way."""
        narrow_layer(layer, self.layout(), heads, width, new_linear, kept_heads)

    def relative(self, config) -> tuple[int, int, int]:
        """(relative-position keys a head attends over beside the tokens, query-by-key products over them,
        projections of them per head) for a model of `config`; zeros for a family without them."""
        return self.relative_costs(config) if self.relative_costs is not None else (0, 0, 0)

    def removable_layers(self, config) -> list[int]:
        """The encoder layers of a model of `config` that may be removed whole (all but a first layer that its
        family builds unlike the others)."""
        count = getattr(config, self.shape_names[3])
        first_fixed = self.special_first_layer is not None and self.special_first_layer(config)
        return list(range(1 if first_fixed else 0, count))

    def max_positions(self, config) -> int | None:
        """The longest token sequence `config`'s position embeddings allow (None when it does not say)."""
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and self.positions_after_padding:
            limit -= (getattr(config, "pad_token_id", None) or 0) + 1
        return limit

    def config(self, hidden: int, heads: int, ffn: int, layers: int, **settings):
        """A transformers config of this family with the given shape (hidden size, heads, FFN width, layers), the
        settings its released checkpoints use, then `settings` (which win)."""
        from transformers import AutoConfig

        shape = dict(zip(self.shape_names, (hidden, heads, ffn, layers)))
        return AutoConfig.for_model(self.model_type, **{**shape, **dict(self.released), **settings})


BERT_LAYOUT = dict(
    embeddings="embeddings",
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    heads_attr="num_attention_heads",
    head_dim_attr="attention_head_size",
    output_norm="output.LayerNorm",
)
"""The module layout BERT set and its copies in transformers (RoBERTa, ELECTRA, XLM-RoBERTa, CamemBERT) share."""
