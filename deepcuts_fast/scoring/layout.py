"""The unit layout of a scored model, stored with its scores so unit views need no model.

Units: attention head h = rows h*d:(h+1)*d of Q, K, V (weights and biases) and the same
columns of the attention output dense; FFN neuron j = row j of the intermediate dense (and its bias)
and column j of the FFN output dense. A fused Linear (`blocks`) stacks such blocks along its unit axis (a QKV
projection: Q's, K's and V's rows; a GLU's input: its input and gate rows) and a unit owns its slice of each.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import HEAD_ROLES, ROLES, UNIT_AXIS, distinct_roles, encoder_layers
from ..errors import DeepCutsError


@dataclass(frozen=True)
class LayerLayout:
    """Module names of one encoder layer's prunable Linears and the size of one head."""

    names: dict[str, str]  # role -> qualified module name (a fused Linear's under each of its roles)
    head_dim: int
    blocks: dict[str, int] = field(default_factory=dict)  # role -> blocks its fused Linear stacks (only those > 1)

    def to_dict(self) -> dict:
        return {"names": self.names, "head_dim": self.head_dim, **({"blocks": self.blocks} if self.blocks else {})}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LayerLayout":
        """The layout `to_dict` wrote; KeyError / ValueError when a role or a positive head_dim is missing, or a
        role's blocks are not a count above 1."""
        head_dim = int(d["head_dim"])
        if head_dim < 1:
            raise ValueError(f"head_dim {head_dim}")
        blocks = {r: int(d["blocks"][r]) for r in ROLES if r in d.get("blocks", {})}
        if any(b < 2 for b in blocks.values()):
            raise ValueError(f"blocks {blocks}")
        return cls(names={r: d["names"][r] for r in ROLES}, head_dim=head_dim, blocks=blocks)

    def distinct_roles(self) -> list[str]:
        """The roles whose Linears are distinct: a fused Linear once, under the first of its roles."""
        return distinct_roles(self.names)


def model_layout(model: nn.Module) -> list[LayerLayout]:
    """The layout of every encoder layer of `model`."""
    return [LayerLayout(names=dict(layer.names), head_dim=layer.head_dim,
                        blocks={r: b for r, b in layer.blocks.items() if b > 1}) for layer in encoder_layers(model)]


def reduce_to_units(
    layer: LayerLayout, score: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-weight scores of one layer into (head scores, neuron scores)."""
    n = layer.names
    sums = {r: _row_sums(score, n[r]) if UNIT_AXIS[r] == "rows" else score[n[r] + ".weight"].sum(0)
            for r in layer.distinct_roles()}
    return reduce_sums_to_units(layer, sums)


def reduce_sums_to_units(layer: LayerLayout, sums: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(head scores, neuron scores) from the row sums (bias included) or column sums, as UNIT_AXIS says, of each
    distinct Linear (`sums`: role -> sums, a fused Linear's under the first of its roles, its blocks added up)."""
    d = layer.head_dim
    folded = {r: _fold(v, layer.blocks.get(r, 1)) for r, v in sums.items()}
    rows = sum(folded[r] for r in HEAD_ROLES if r in folded and UNIT_AXIS[r] == "rows")
    heads = rows.view(-1, d).sum(1) + folded["attn_out"].view(-1, d).sum(1)
    neurons = folded["ffn_in"] + folded["ffn_out"]
    return heads, neurons


def _fold(sums: torch.Tensor, blocks: int) -> torch.Tensor:
    """A fused Linear's row sums with its `blocks` stacked blocks added up: one sum per row of one block."""
    return sums if blocks == 1 else sums.view(blocks, sums.numel() // blocks).sum(0)  # 0 rows: a layer pruned empty


def _row_sums(score: Mapping[str, torch.Tensor], module: str) -> torch.Tensor:
    rows = score[module + ".weight"].sum(1)
    bias = score.get(module + ".bias")
    return rows if bias is None else rows + bias


def check_layer_shapes(i: int, layer: LayerLayout, units: tuple[torch.Tensor, torch.Tensor],
                       weights: Mapping[str, torch.Tensor], interactions: tuple[torch.Tensor, torch.Tensor] | None,
                       source: str) -> None:
    """Refuse score tensors of layer `i` whose shapes do not fit together: unit scores are vectors, each per-weight
    tensor (when there are any) has head_dim rows or columns per head and one per neuron along its unit axis, and
    interaction matrices are square over the units. `source` names the scores in messages."""
    heads, neurons = units
    if heads.dim() != 1 or neurons.dim() != 1:
        raise DeepCutsError(f"{source}: the unit scores of layer {i} are shaped {tuple(heads.shape)} (heads) and "
                            f"{tuple(neurons.shape)} (FFN neurons), not one score per unit; score again with "
                            "`deepcuts score`")
    for role, module in layer.names.items() if weights else ():
        width = (heads.numel() * layer.head_dim if role in HEAD_ROLES else neurons.numel()) * layer.blocks.get(role, 1)
        weight, bias = weights.get(f"{module}.weight"), weights.get(f"{module}.bias")
        axis = 0 if UNIT_AXIS[role] == "rows" else 1
        if weight is None or weight.dim() != 2 or weight.shape[axis] != width or (
                bias is not None and tuple(bias.shape) != (weight.shape[0],)):
            got = "missing" if weight is None else f"shaped {tuple(weight.shape)}"
            got += "" if bias is None else f" (bias {tuple(bias.shape)})"
            raise DeepCutsError(f"{source}: the scores of {module}.weight are {got}, which does not fit layer {i}'s "
                                f"{heads.numel()} heads of {layer.head_dim} and {neurons.numel()} FFN neurons "
                                f"({width} {'rows' if axis == 0 else 'columns'}); score again with `deepcuts score`")
    for unit_type, matrix, n in zip(("heads", "FFN neurons"), interactions or (), (heads.numel(), neurons.numel())):
        if tuple(matrix.shape) != (n, n):
            raise DeepCutsError(f"{source}: the {unit_type} interactions of layer {i} are shaped "
                                f"{tuple(matrix.shape)}, not ({n}, {n}) for its {n} {unit_type}; score again with "
                                "`deepcuts score`")
