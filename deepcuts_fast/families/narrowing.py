"""Slice a model's encoder layers to kept heads and FFN neurons: each layer is narrowed by its family's
`narrow_layer`, the code the stock-loadable modeling file runs too, with slices of the dense Linears. A layer left
with no heads gets an attention module that returns an empty context (its block then adds only the output bias); a
layer with no FFN neurons keeps zero-width Linears, which PyTorch runs as a bias-only output. The pruner, the
iterative method, slim loading and the latency table's probes all narrow layers through `shrink`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..arch import base_model
from . import family


def shrink(model: nn.Module, heads: Sequence[Sequence[int]], neurons: Sequence[Sequence[int]]) -> None:
    """Slice every encoder layer of `model` in place to the given head and neuron indices."""
    fam = family(model)
    layers = base_model(model).get_submodule(fam.layers)
    for layer, kept_heads, kept_neurons in zip(layers, heads, neurons):
        head_dim = int(getattr(layer.get_submodule(fam.attention), fam.head_dim_attr))
        head_rows = [h * head_dim + j for h in kept_heads for j in range(head_dim)]
        index = {"heads": torch.tensor(head_rows, dtype=torch.long),
                 "neurons": torch.tensor(list(kept_neurons), dtype=torch.long)}
        fam.narrow_layer(layer, len(kept_heads), len(kept_neurons),
                         lambda kind, old, axis, size, blocks: _slice(old, _stacked(index[kind], old, axis, blocks),
                                                                      dim=axis), kept_heads)
    model.config.deepcuts_heads = [len(h) for h in heads]
    model.config.deepcuts_ffn = [len(n) for n in neurons]


def _stacked(index: torch.Tensor, linear: nn.Linear, axis: int, blocks: int) -> torch.Tensor:
    """`index` (kept rows or columns of one block) repeated for each of the `blocks` unit-ordered blocks a fused
    Linear stacks along `axis` (a QKV projection's three, a GLU's input and gate)."""
    if blocks == 1:
        return index
    block = linear.weight.shape[axis] // blocks
    return torch.cat([index + b * block for b in range(blocks)])


def _slice(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding the given output rows (dim=0, with their biases) or input columns (dim=1)."""
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone().requires_grad_(linear.weight.requires_grad)
    bias = None
    if linear.bias is not None:
        bias = linear.bias.detach().index_select(0, index).clone() if dim == 0 else linear.bias.detach().clone()
        bias.requires_grad_(linear.bias.requires_grad)
    return linear_from(weight, bias)


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear around existing tensors (no random initialisation, zero widths allowed)."""
    out_features, in_features = weight.shape
    linear = nn.Linear(1, 1, bias=bias is not None, device="meta")  # no init work; shapes set below
    linear.in_features, linear.out_features = in_features, out_features
    linear.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=bias.requires_grad)
    return linear
