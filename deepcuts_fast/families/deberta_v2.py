"""DeBERTa-v2 and -v3: disentangled attention. Each head also attends over the relative-position embeddings
(content-to-position and position-to-content products) through its slices of Q and K (`share_att_key`, as v3
does) or of its own position projections (`pos_key_proj` / `pos_query_proj`, which move with the head)."""
from .base import BERT_LAYOUT, Family


def _relative(config) -> tuple[int, int, int]:
    """(relative keys a head attends over, products over them, projections of them per head)."""
    if not getattr(config, "relative_attention", False):
        return 0, 0, 0
    span = getattr(config, "position_buckets", -1) or -1
    if span <= 0:
        span = getattr(config, "max_relative_positions", -1)
        if span < 1:
            span = config.max_position_embeddings
    kinds = [k for k in ("c2p", "p2c") if k in (config.pos_att_type or [])]
    # shared keys: Q and K both project the relative embeddings; else one projection per kind of product
    projections = 2 if getattr(config, "share_att_key", False) else len(kinds)
    return 2 * span, len(kinds), projections


FAMILY = Family(
    model_type="deberta-v2",
    class_stem="DebertaV2",
    **{**BERT_LAYOUT, "query": "attention.self.query_proj", "key": "attention.self.key_proj",
       "value": "attention.self.value_proj"},
    head_extras=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    special_first_layer=lambda config: getattr(config, "conv_kernel_size", 0) > 0,  # a convolution follows layer 0
    relative_costs=_relative,
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    onnx_model_type=None,
    # what the released v3 checkpoints set (microsoft/deberta-v3-base's config.json)
    released=(("relative_attention", True), ("pos_att_type", ["p2c", "c2p"]), ("share_att_key", True),
              ("position_buckets", 256), ("max_relative_positions", -1), ("norm_rel_ebd", "layer_norm"),
              ("position_biased_input", False), ("type_vocab_size", 0)),
)
