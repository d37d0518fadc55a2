"""Encoder cost model: parameters and FLOPs of heads, FFN neurons and whole encoders.

Counts multiply-adds as 2 FLOPs, for one sequence of `seq_len` tokens, forward pass. A head costs
its Q/K/V rows and attention-output columns (4 * hidden * head_dim weights, 3 * head_dim biases)
plus its attention scores and weighted sum (2 * seq_len^2 * head_dim multiply-adds); an FFN neuron
costs its intermediate row and bias and its output column (2 * hidden weights + 1 bias).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .arch import HEAD_ROLES, NEURON_ROLES, UNIT_AXIS, encoder_layers


@dataclass(frozen=True)
class UnitCosts:
    """Per-unit parameter and FLOP costs of one encoder layer shape."""

    hidden: int
    head_dim: int

    def head_params(self) -> int:
        return sum(self.hidden * self.head_dim + (self.head_dim if UNIT_AXIS[r] == "rows" else 0) for r in HEAD_ROLES)

    def neuron_params(self) -> int:
        return sum(self.hidden + (1 if UNIT_AXIS[r] == "rows" else 0) for r in NEURON_ROLES)

    def head_flops(self, seq_len: int) -> int:
        projections = 2 * seq_len * len(HEAD_ROLES) * self.hidden * self.head_dim
        attention = 2 * 2 * seq_len * seq_len * self.head_dim
        return projections + attention

    def neuron_flops(self, seq_len: int) -> int:
        return 2 * seq_len * len(NEURON_ROLES) * self.hidden


def layer_costs(model: nn.Module) -> list[UnitCosts]:
    """UnitCosts of every encoder layer of `model`."""
    return [UnitCosts(hidden=layer.linears["query"].in_features, head_dim=layer.head_dim)
            for layer in encoder_layers(model)]


def encoder_flops(model: nn.Module, seq_len: int) -> int:
    """Forward FLOPs of the prunable part of the encoder for one sequence (heads + FFN neurons)."""
    total = 0
    for layer, cost in zip(encoder_layers(model), layer_costs(model)):
        total += layer.num_heads * cost.head_flops(seq_len) + layer.ffn_width * cost.neuron_flops(seq_len)
    return total


def encoder_unit_params(model: nn.Module) -> int:
    """Parameters that belong to some head or FFN neuron (what structured pruning can remove)."""
    total = 0
    for layer, cost in zip(encoder_layers(model), layer_costs(model)):
        total += layer.num_heads * cost.head_params() + layer.ffn_width * cost.neuron_params()
    return total
