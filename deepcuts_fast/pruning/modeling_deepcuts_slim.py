"""Slim BERT-family models (per-layer head counts and FFN widths) for transformers' `trust_remote_code`.

deepcuts-fast copies this file, unchanged, into every slim folder it saves, and points the `auto_map` of the
folder's config.json at it, so stock transformers loads a pruned model where deepcuts-fast is not installed:

    AutoModelForSequenceClassification.from_pretrained(folder_or_hub_name, trust_remote_code=True)
    pipeline("text-classification", model=folder_or_hub_name, trust_remote_code=True)

Each class is the family's own transformers class, built as usual and then narrowed layer by layer to the
widths recorded in config.json (`deepcuts_heads`, `deepcuts_ffn`) before the weights are loaded. A layer with
no heads contributes only its attention-output bias and a layer with no FFN neurons only its FFN-output bias,
as in deepcuts-fast. Only torch and transformers are imported here.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    BertModel,
    DistilBertForSequenceClassification,
    DistilBertModel,
    ElectraForSequenceClassification,
    ElectraModel,
    RobertaForSequenceClassification,
    RobertaModel,
)

_BERT_LIKE = {
    "layers": "encoder.layer",
    "attention": "attention.self",
    "heads": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "heads_attr": "num_attention_heads",
}
LAYOUTS = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": {
        "layers": "transformer.layer",
        "attention": "attention",
        "heads": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        "attn_out": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
        "heads_attr": "n_heads",
    },
}
"""Where each family keeps, per encoder layer, the Linears that the head count and FFN width size."""


def narrow(model: nn.Module) -> None:
    """Resize every encoder layer of `model` to the config's `deepcuts_heads` / `deepcuts_ffn`, so the slim
    weights fit; a config without them (a dense model) is left as it is."""
    config = model.config
    heads, ffn = getattr(config, "deepcuts_heads", None), getattr(config, "deepcuts_ffn", None)
    if heads is None or ffn is None:
        return
    layout = LAYOUTS[config.model_type]
    layers = model.base_model.get_submodule(layout["layers"])
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise ValueError(f"config.json records {len(heads)} head counts and {len(ffn)} FFN widths for a model with "
                         f"{len(layers)} layers; the folder is damaged: save the pruned model again")
    for layer, n_heads, width in zip(layers, heads, ffn):
        _narrow_layer(layer, layout, int(n_heads), int(width))


def _narrow_layer(layer: nn.Module, layout: dict, n_heads: int, width: int) -> None:
    """Give one encoder layer `n_heads` heads and `width` FFN neurons (new, uninitialised Linears)."""
    attention = layer.get_submodule(layout["attention"])
    head_size = int(attention.attention_head_size)
    for path in layout["heads"]:
        _resize(layer, path, rows=n_heads * head_size)
    _resize(layer, layout["attn_out"], cols=n_heads * head_size)
    _resize(layer, layout["ffn_in"], rows=width)
    _resize(layer, layout["ffn_out"], cols=width)
    setattr(attention, layout["heads_attr"], n_heads)
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = n_heads * head_size
    if n_heads == 0:
        prefix = layout["attention"] + "."
        inner = layout["attn_out"][len(prefix):] if layout["attn_out"].startswith(prefix) else None
        attention.__class__ = no_heads_class(type(attention))
        attention._deepcuts_out = inner


def _resize(layer: nn.Module, path: str, rows: int | None = None, cols: int | None = None) -> None:
    """Replace the Linear at `path` by one with `rows` outputs or `cols` inputs (same bias, device, dtype)."""
    old = layer.get_submodule(path)
    out_features = old.out_features if rows is None else rows
    in_features = old.in_features if cols is None else cols
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "initializing zero-element tensors is a no-op" for a pruned-away block
        new = nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                        dtype=old.weight.dtype)
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, name, new)


class NoHeads:
    """Mixed in front of the attention class of a layer that kept no heads: the context is empty, so the
    block contributes only the attention-output bias (through the output Linear, wherever it lives)."""

    _deepcuts_out: str | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self._deepcuts_out is not None:
            context = self.get_submodule(self._deepcuts_out)(context)
        return context, None


_NO_HEAD_CLASSES: dict[type, type] = {}


def no_heads_class(cls: type) -> type:
    """The attention class `cls` with `NoHeads` in front (one class per attention class)."""
    if cls not in _NO_HEAD_CLASSES:
        _NO_HEAD_CLASSES[cls] = type(f"NoHeads{cls.__name__}", (NoHeads, cls), {})
    return _NO_HEAD_CLASSES[cls]


class _Slim:
    """Mixed in front of a transformers model class: build it as usual, then narrow its layers to the
    recorded widths and initialise the new Linears (a no-op when from_pretrained loads weights after)."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        narrow(self)
        self.post_init()


class DeepCutsBertModel(_Slim, BertModel):
    """A BERT encoder with per-layer head counts and FFN widths."""


class DeepCutsBertForSequenceClassification(_Slim, BertForSequenceClassification):
    """A BERT classifier with per-layer head counts and FFN widths."""


class DeepCutsRobertaModel(_Slim, RobertaModel):
    """A RoBERTa encoder with per-layer head counts and FFN widths."""


class DeepCutsRobertaForSequenceClassification(_Slim, RobertaForSequenceClassification):
    """A RoBERTa classifier with per-layer head counts and FFN widths."""


class DeepCutsDistilBertModel(_Slim, DistilBertModel):
    """A DistilBERT encoder with per-layer head counts and FFN widths."""


class DeepCutsDistilBertForSequenceClassification(_Slim, DistilBertForSequenceClassification):
    """A DistilBERT classifier with per-layer head counts and FFN widths."""


class DeepCutsElectraModel(_Slim, ElectraModel):
    """An ELECTRA encoder with per-layer head counts and FFN widths."""


class DeepCutsElectraForSequenceClassification(_Slim, ElectraForSequenceClassification):
    """An ELECTRA classifier with per-layer head counts and FFN widths."""
