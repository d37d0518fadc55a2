"""Slim BERT-family models (per-layer head counts and FFN widths) for transformers' `trust_remote_code`.

deepcuts-fast copies this file, unchanged, into every slim folder it saves, and points the `auto_map` of the
folder's config.json at it, so stock transformers loads a pruned model where deepcuts-fast is not installed:

    AutoModelForSequenceClassification.from_pretrained(folder_or_hub_name, trust_remote_code=True)
    pipeline("text-classification", model=folder_or_hub_name, trust_remote_code=True)

(or the auto class of the task the model was saved for: AutoModelForTokenClassification,
AutoModelForQuestionAnswering, AutoModel). Each class is the family's own transformers class for that task
(`DeepCuts<Stem>ForQuestionAnswering` subclasses transformers' `<Stem>ForQuestionAnswering`; the classes are made
on first use, for whichever family and task the config.json `auto_map` names), built as usual and
then narrowed layer by layer to the widths recorded in config.json (`deepcuts_heads`, `deepcuts_ffn`) before the
weights are loaded. Where a family keeps its layers' Linears is read from config.json too (`deepcuts_layout`,
written by deepcuts-fast from its family registry), so this file knows no family. A layer with
no heads contributes only its attention-output bias and a layer with no FFN neurons only its FFN-output bias,
as in deepcuts-fast. Only torch and transformers are imported here.
"""
from __future__ import annotations

import inspect
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


def narrow_layer(layer: nn.Module, layout: dict, n_heads: int, width: int, new_linear, kept_heads=None) -> None:
    """Give one encoder layer `n_heads` heads and `width` FFN neurons. `layout` (a family's, see deepcuts-fast's
    `families`) names the attention module, its head-count and head-size attributes, and for a head and for an FFN
    neuron the (Linear path, axis, blocks) slices that make one unit, where `blocks` (1 when left out) counts the
    unit-ordered blocks a fused Linear stacks along the axis (a fused QKV projection: 3; a GLU's input and gate: 2).
    `new_linear(kind, old, axis, size, blocks)` returns the Linear that replaces `old` with `size` rows (axis 0) or
    columns (axis 1), all blocks together: new ones here, slices of the dense ones (the same units of each block)
    in deepcuts-fast's pruner, which calls this same function with `kept_heads`, the heads that stay."""
    attention = layer.get_submodule(layout["attention"])
    head_size = int(getattr(attention, layout["head_dim_attr"]))
    extras = [(path, 0) for path in layout.get("head_extras", ()) if _has(layer, path)]
    for kind, size in (("heads", n_heads * head_size), ("neurons", width)):
        for path, axis, *stacked in [*layout[kind], *(extras if kind == "heads" else ())]:
            blocks = int(stacked[0]) if stacked else 1
            old = layer.get_submodule(path)
            parent, _, name = path.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, name,
                    new_linear(kind, old, int(axis), size * blocks, blocks))
    if layout.get("per_head_input"):
        _pick_heads(attention, layout["per_head_input"], n_heads, kept_heads)
    if layout.get("heads_attr"):  # a family whose attention infers its head count from its weights names none
        setattr(attention, layout["heads_attr"], n_heads)
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = n_heads * head_size
    if n_heads == 0 and not isinstance(attention, NoHeads):
        attention.__class__ = no_heads_class(type(attention))
        attention._deepcuts_out = layout.get("attn_out_inside")


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _pick_heads(attention: nn.Module, argument: str, n_heads: int, kept_heads) -> None:
    """Make `attention` read only its heads' slices (dim 1) of the per-head input `argument`, which the encoder
    computes once for all of its heads: the original head numbers are the buffer `deepcuts_head_ids`, saved with
    the weights (a pruned layer's kept heads, composed over repeated pruning; 0..n-1 until the weights load)."""
    ids = getattr(attention, "deepcuts_head_ids", None)
    if kept_heads is not None:
        kept = torch.as_tensor(list(kept_heads), dtype=torch.long)
        ids = kept if ids is None else ids.index_select(0, kept.to(ids.device))
    else:
        ids = torch.arange(n_heads)
    device = next(attention.parameters()).device
    attention.register_buffer("deepcuts_head_ids", ids.to(device), persistent=True)
    if not isinstance(attention, PicksHeads):
        attention.__class__ = picks_heads_class(type(attention), argument)


class PicksHeads:
    """Mixed in front of an attention class whose forward takes one input with a slice per head of the dense
    model (`_deepcuts_argument`, at `_deepcuts_position` when given by position): passes on only the slices of
    the heads this layer kept."""

    _deepcuts_argument: str = ""
    _deepcuts_position: int = -1

    def forward(self, *args, **kwargs):
        name, at = self._deepcuts_argument, self._deepcuts_position
        if name in kwargs:
            kwargs[name] = _heads_of(kwargs[name], self.deepcuts_head_ids)
        elif 0 <= at < len(args):
            args = (*args[:at], _heads_of(args[at], self.deepcuts_head_ids), *args[at + 1:])
        return super().forward(*args, **kwargs)


def _heads_of(per_head: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor | None:
    return per_head if per_head is None else per_head.index_select(1, ids)


def picks_heads_class(cls: type, argument: str) -> type:
    """The attention class `cls` with `PicksHeads` in front for its forward's `argument` (one class per pair)."""
    key = (cls, argument)
    if key not in _CLASSES:
        names = list(inspect.signature(cls.forward).parameters)[1:]  # without self
        _CLASSES[key] = type(f"PicksHeads{cls.__name__}", (PicksHeads, cls),
                             {"_deepcuts_argument": argument,
                              "_deepcuts_position": names.index(argument) if argument in names else -1})
    return _CLASSES[key]


def _resized(kind: str, old: nn.Linear, axis: int, size: int, blocks: int) -> nn.Linear:
    """A new Linear like `old` (bias, device, dtype) with `size` outputs (axis 0) or inputs (axis 1), `blocks`
    stacked blocks included (a new Linear's layout needs nothing more)."""
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


_CLASSES: dict = {}  # the classes made by no_heads_class and picks_heads_class, made once each


def no_heads_class(cls: type) -> type:
    """The attention class `cls` with `NoHeads` in front (one class per attention class)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"NoHeads{cls.__name__}", (NoHeads, cls), {})
    return _CLASSES[cls]


class _Slim:
    """Mixed in front of a transformers model class: build it as usual, then narrow its layers to the
    recorded widths and initialise the new Linears (a no-op when from_pretrained loads weights after)."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        narrow(self)
        self.post_init()


_PREFIX = "DeepCuts"


def __getattr__(name: str) -> type:
    """`DeepCuts<Name>`: `_Slim` in front of transformers' model class `<Name>` (`<Stem>Model`,
    `<Stem>ForQuestionAnswering`, ...: whichever class the config.json `auto_map` names; made once, on first use;
    PEP 562)."""
    stock = name[len(_PREFIX):] if name.startswith(_PREFIX) else None
    base = getattr(transformers, stock, None) if stock else None
    if not (isinstance(base, type) and issubclass(base, transformers.PreTrainedModel)):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = type(name, (_Slim, base), {"__module__": __name__,
                                      "__doc__": f"{stock} with per-layer head counts and FFN widths."})
    globals()[name] = cls
    return cls
