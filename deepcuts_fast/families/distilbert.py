"""DistilBERT: its own module names; the attention module owns its output Linear; no segments."""
from .base import Family

FAMILY = Family(
    model_type="distilbert",
    class_stem="DistilBert",
    embeddings="embeddings",
    layers="transformer.layer",
    attention="attention",
    query="attention.q_lin",
    key="attention.k_lin",
    value="attention.v_lin",
    attn_out="attention.out_lin",
    ffn_in="ffn.lin1",
    ffn_out="ffn.lin2",
    heads_attr="n_heads",
    head_dim_attr="attention_head_size",
    output_norm="output_layer_norm",
    shape_names=("dim", "n_heads", "hidden_dim", "n_layers"),
)
