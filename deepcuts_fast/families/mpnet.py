"""MPNet (all-mpnet-base-v2's backbone): BERT's blocks, but its attention module (`attention.attn`) names its own
Linears; a relative position bias, one slice per head, is computed once by the encoder for all layers, so each
narrowed layer picks its kept heads' slices."""
from .base import BERT_LAYOUT, Family

FAMILY = Family(
    model_type="mpnet",
    class_stem="MPNet",
    **{**BERT_LAYOUT, "attention": "attention.attn", "query": "attention.attn.q", "key": "attention.attn.k",
       "value": "attention.attn.v", "attn_out": "attention.attn.o"},
    per_head_input="position_bias",
    positions_after_padding=True,
)
