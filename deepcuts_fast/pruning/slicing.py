"""Physically remove heads and FFN neurons: slice Linears into smaller dense ones.

Driven by the model's family (`families`): each layer is narrowed by the family's `narrow_layer`, the code the
stock-loadable modeling file runs too, with slices of the dense Linears. A layer left with no heads gets an
attention module that returns an empty context (its block then adds only the output bias); a layer with no FFN
neurons keeps zero-width Linears, which PyTorch runs as a bias-only output. A pruned model's config records the weights hashes of the
models it was cut from (`LINEAGE`), the only dense references `reconstruct` takes for it.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..arch import base_model
from ..errors import DeepCutsError, short_repr
from ..families import family
from ..hashing import model_fingerprint
from ..planning.plan import Plan

LINEAGE = "deepcuts_pruned_from"
"""The config attribute where a pruned model records the weights hashes (`hashing.model_fingerprint`) of the models it
was cut from, oldest first: `reconstruct` takes no other dense reference."""


def prune(model: nn.Module, plan: Plan) -> nn.Module:
    """A physically smaller copy of `model` keeping the plan's heads and neurons (`model` is untouched)."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"prune takes the torch model the plan was made for, got {type(model).__name__}")
    if not isinstance(plan, Plan):
        hint = " (a plan read from JSON: dc.Plan.from_dict(it))" if isinstance(plan, dict) else ""
        raise DeepCutsError(f"prune takes a dc.Plan, from dc.plan(...) or dc.Plan.from_dict(...){hint}; got "
                            f"{type(plan).__name__}")
    plan.check_model(model)
    slim = copy.deepcopy(model)
    record_cut(slim, model)
    shrink(slim, plan.heads, plan.neurons)
    return slim


def lineage(model: nn.Module) -> list[str]:
    """The weights hashes of the models `model` was cut from, oldest first (empty for a model not made by pruning)."""
    value = getattr(model.config, LINEAGE, None)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DeepCutsError(f"the model's config records {LINEAGE} = {short_repr(value)}, not a list of weights "
                            f"hashes; remove {LINEAGE} from its config.json, or prune the dense model again")
    return list(value)


def record_cut(child: nn.Module, parent: nn.Module, fingerprint: str | None = None) -> None:
    """Record on `child`'s config that it was cut from `parent` (whose weights hash is `fingerprint`, computed when
    not given), after the models `parent` itself was cut from."""
    setattr(child.config, LINEAGE, [*lineage(parent), fingerprint or model_fingerprint(parent)])


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
                         lambda kind, old, axis, size: _slice(old, index[kind], dim=axis), kept_heads)
    model.config.deepcuts_heads = [len(h) for h in heads]
    model.config.deepcuts_ffn = [len(n) for n in neurons]


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
