"""ModernBERT: pre-norm layers with rotary positions and alternating local / global attention (nothing of those
to slice), one fused `Wqkv` projection whose rows are [Q, K, V] x heads x head_dim (a head owns its rows of each
third), and a GLU FFN whose `Wi` holds the input and the gate halves (a neuron owns its row of each). Its attention
infers the head count from `Wqkv`'s width, so a narrowed layer needs no head-count attribute; no segments."""
from .base import Family

FAMILY = Family(
    model_type="modernbert",
    class_stem="ModernBert",
    embeddings="embeddings",
    layers="layers",
    attention="attn",
    query="attn.Wqkv",
    key="attn.Wqkv",
    value="attn.Wqkv",
    attn_out="attn.Wo",
    ffn_in="mlp.Wi",
    ffn_out="mlp.Wo",
    heads_attr=None,
    head_dim_attr="head_dim",
    output_norm=None,  # pre-norm: a layer's output is its residual sum
    stacked=(("attn.Wqkv", 3), ("mlp.Wi", 2)),
    per_layer_config=("layer_types",),  # local (sliding window) or global attention, per layer
    special_first_layer=lambda config: True,  # layer 0 has no attention LayerNorm (the embeddings end in one)
    onnx_model_type=None,  # ONNX Runtime's transformer optimizer has no ModernBERT graph layout
    # what answerdotai/ModernBERT-base's config.json sets beyond transformers' defaults
    released=(("classifier_pooling", "mean"),),
)
