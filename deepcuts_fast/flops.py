"""Encoder cost model: parameters and FLOPs of heads, FFN neurons and whole encoders.

Counts multiply-adds as 2 FLOPs, for one sequence of `seq_len` tokens, forward pass. A head costs
its Q/K/V rows and attention-output columns (4 * hidden * head_dim weights, 3 * head_dim biases)
plus its attention scores and weighted sum (2 * seq_len^2 * head_dim multiply-adds); an FFN neuron
costs its intermediate row and bias and its output column (2 * hidden weights + 1 bias; a GLU's neuron two
intermediate rows, its input's and its gate's: 3 * hidden weights + 2 biases). A family with
relative-position attention (`families`: DeBERTa's disentangled attention) adds, per head, its products of
queries or keys with the relative-position keys and its projections of those (the projections run once a batch;
they are counted once a sequence, as for a batch of one), and the rows of any separate projection it owns.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .arch import HEAD_ROLES, NEURON_ROLES, UNIT_AXIS, encoder_layers
from .families import family


@dataclass(frozen=True)
class UnitCosts:
    """Per-unit parameter and FLOP costs of one encoder layer shape."""

    hidden: int
    head_dim: int
    relative: tuple[int, int, int] = (0, 0, 0)  # the family's (relative keys, products over them, projections)
    extra_rows: int = 0  # head_dim-row Linears a head owns beyond the four roles (with biases)
    neuron_rows: int = 1  # FFN input rows a neuron owns (2 in a GLU: its input's and its gate's)
    head_bias: bool = True  # whether the Q, K, V projections have biases (ModernBERT's have none by default)
    neuron_bias: bool = True  # whether the FFN input projection has biases

    def head_params(self) -> int:
        bias = self.head_dim if self.head_bias else 0
        roles = sum(self.hidden * self.head_dim + (bias if UNIT_AXIS[r] == "rows" else 0) for r in HEAD_ROLES)
        return roles + self.extra_rows * (self.hidden + 1) * self.head_dim

    def neuron_params(self) -> int:
        return sum((self.hidden + self.neuron_bias) * self.neuron_rows if UNIT_AXIS[r] == "rows" else self.hidden
                   for r in NEURON_ROLES)

    def head_flops(self, seq_len: int) -> int:
        projections = 2 * seq_len * len(HEAD_ROLES) * self.hidden * self.head_dim
        attention = 2 * 2 * seq_len * seq_len * self.head_dim
        keys, products, relative_projections = self.relative
        relative = 2 * products * seq_len * keys * self.head_dim + 2 * relative_projections * keys * self.hidden * \
            self.head_dim
        return projections + attention + relative

    def neuron_flops(self, seq_len: int) -> int:
        return 2 * seq_len * sum(self.neuron_rows if UNIT_AXIS[r] == "rows" else 1 for r in NEURON_ROLES) * self.hidden


def layer_costs(model: nn.Module) -> list[UnitCosts]:
    """UnitCosts of every encoder layer of `model`."""
    fam = family(model)
    relative = fam.relative(model.config)
    return [UnitCosts(hidden=layer.linears["query"].in_features, head_dim=layer.head_dim, relative=relative,
                      extra_rows=len(layer.extras), neuron_rows=layer.blocks["ffn_in"],
                      head_bias=layer.linears["query"].bias is not None,
                      neuron_bias=layer.linears["ffn_in"].bias is not None)
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
