"""Slim BERT-family models (per-layer head counts and FFN widths) for transformers' `trust_remote_code`.

deepcuts-fast copies this file, unchanged, into every slim folder it saves, and points the `auto_map` of the
folder's config.json at it, so stock transformers loads a pruned model where deepcuts-fast is not installed:

    AutoModelForSequenceClassification.from_pretrained(folder_or_hub_name, trust_remote_code=True)
    pipeline("text-classification", model=folder_or_hub_name, trust_remote_code=True)

Each class is the family's own transformers class (`DeepCuts<Stem>Model` subclasses transformers' `<Stem>Model`;
the classes are made on first use, for whichever family the config.json `auto_map` names), built as usual and
then narrowed layer by layer to the widths recorded in config.json (`deepcuts_heads`, `deepcuts_ffn`) before the
weights are loaded. Where a family keeps its layers' Linears is read from config.json too (`deepcuts_layout`,
written by deepcuts-fast from its family registry), so this file knows no family. A layer with
no heads contributes only its attention-output bias and a layer with no FFN neurons only its FFN-output bias,
as in deepcuts-fast. Only torch and transformers are imported here.
"""
from __future__ import annotations

import warnings

import torch
import transformers
from torch import nn


def narrow(model: nn.Module) -> None:
    """Resize every encoder layer of `model` to the config's `deepcuts_heads` / `deepcuts_ffn`, so the slim
    weights fit; a config without them (a dense model) is left as it is."""
    config = model.config
    heads, ffn = getattr(config, "deepcuts_heads", None), getattr(config, "deepcuts_ffn", None)
    if heads is None or ffn is None:
        return
    layout = getattr(config, "deepcuts_layout", None)
    if not isinstance(layout, dict):
        raise ValueError("config.json records per-layer widths but no deepcuts_layout (where the layers' Linears "
                         "are); the folder is damaged or older than this file: save the pruned model again")
    layers = model.base_model.get_submodule(layout["layers"])
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise ValueError(f"config.json records {len(heads)} head counts and {len(ffn)} FFN widths for a model with "
                         f"{len(layers)} layers; the folder is damaged: save the pruned model again")
    for layer, n_heads, width in zip(layers, heads, ffn):
        narrow_layer(layer, layout, int(n_heads), int(width), _resized)


def narrow_layer(layer: nn.Module, layout: dict, n_heads: int, width: int, new_linear) -> None:
    """Give one encoder layer `n_heads` heads and `width` FFN neurons. `layout` (a family's, see deepcuts-fast's
    `families`) names the attention module, its head-count and head-size attributes, and for a head and for an FFN
    neuron the (Linear path, axis) slices that make one unit; `new_linear(kind, old, axis, size)` returns the Linear
    that replaces `old` with `size` rows (axis 0) or columns (axis 1): new ones here, slices of the dense ones in
    deepcuts-fast's pruner, which calls this same function."""
    attention = layer.get_submodule(layout["attention"])
    head_size = int(getattr(attention, layout["head_dim_attr"]))
    for kind, size in (("heads", n_heads * head_size), ("neurons", width)):
        for path, axis in layout[kind]:
            old = layer.get_submodule(path)
            parent, _, name = path.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, name, new_linear(kind, old, int(axis), size))
    setattr(attention, layout["heads_attr"], n_heads)
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = n_heads * head_size
    if n_heads == 0 and not isinstance(attention, NoHeads):
        attention.__class__ = no_heads_class(type(attention))
        attention._deepcuts_out = layout.get("attn_out_inside")


def _resized(kind: str, old: nn.Linear, axis: int, size: int) -> nn.Linear:
    """A new Linear like `old` (bias, device, dtype) with `size` outputs (axis 0) or inputs (axis 1)."""
    out_features, in_features = (size, old.in_features) if axis == 0 else (old.out_features, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "initializing zero-element tensors is a no-op" for a pruned-away block
        return nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                         dtype=old.weight.dtype)


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


_PREFIX = "DeepCuts"
_TASKS = ("Model", "ForSequenceClassification")


def __getattr__(name: str) -> type:
    """`DeepCuts<Stem>Model` / `DeepCuts<Stem>ForSequenceClassification`: `_Slim` in front of transformers'
    `<Stem>Model` / `<Stem>ForSequenceClassification` (made once, on first use; PEP 562)."""
    stock = name[len(_PREFIX):] if name.startswith(_PREFIX) and name.endswith(_TASKS) else None
    base = getattr(transformers, stock, None) if stock else None
    if not (isinstance(base, type) and issubclass(base, nn.Module)):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = type(name, (_Slim, base), {"__module__": __name__,
                                      "__doc__": f"{stock} with per-layer head counts and FFN widths."})
    globals()[name] = cls
    return cls
