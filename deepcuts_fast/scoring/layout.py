"""The unit layout of a scored model, stored with its scores so unit views need no model.

Units: attention head h = rows h*d:(h+1)*d of Q, K, V (weights and biases) and the same
columns of the attention output dense; FFN neuron j = row j of the intermediate dense (and its bias)
and column j of the FFN output dense.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ROLES, UNIT_AXIS, encoder_layers


@dataclass(frozen=True)
class LayerLayout:
    """Module names of one encoder layer's prunable Linears and the size of one head."""

    names: dict[str, str]  # role -> qualified module name
    head_dim: int

    def to_dict(self) -> dict:
        return {"names": self.names, "head_dim": self.head_dim}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LayerLayout":
        return cls(names={r: d["names"][r] for r in ROLES}, head_dim=int(d["head_dim"]))


def model_layout(model: nn.Module) -> list[LayerLayout]:
    """The layout of every encoder layer of `model`."""
    return [LayerLayout(names=dict(layer.names), head_dim=layer.head_dim) for layer in encoder_layers(model)]


def reduce_to_units(
    layer: LayerLayout, score: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-weight scores of one layer into (head scores, neuron scores)."""
    n = layer.names
    sums = {r: _row_sums(score, n[r]) if axis == "rows" else score[n[r] + ".weight"].sum(0)
            for r, axis in UNIT_AXIS.items()}
    return reduce_sums_to_units(layer, sums)


def reduce_sums_to_units(layer: LayerLayout, sums: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(head scores, neuron scores) from each role's row sums (bias included) or column sums, as UNIT_AXIS says."""
    d = layer.head_dim
    rows = sums["query"] + sums["key"] + sums["value"]
    heads = rows.view(-1, d).sum(1) + sums["attn_out"].view(-1, d).sum(1)
    neurons = sums["ffn_in"] + sums["ffn_out"]
    return heads, neurons


def _row_sums(score: Mapping[str, torch.Tensor], module: str) -> torch.Tensor:
    rows = score[module + ".weight"].sum(1)
    bias = score.get(module + ".bias")
    return rows if bias is None else rows + bias
