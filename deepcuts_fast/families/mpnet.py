"""MPNet (all-mpnet-base-v2's backbone): BERT-like blocks under other names; a relative position bias, one slice
per head, is computed once by the encoder for all layers, so each narrowed layer picks its kept heads' slices."""
from .base import Family

FAMILY = Family(
    model_type="mpnet",
    class_stem="MPNet",
    embeddings="embeddings",
    layers="encoder.layer",
    attention="attention.attn",
    query="attention.attn.q",
    key="attention.attn.k",
    value="attention.attn.v",
    attn_out="attention.attn.o",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    heads_attr="num_attention_heads",
    head_dim_attr="attention_head_size",
    per_head_input="position_bias",
    positions_after_padding=True,
)
