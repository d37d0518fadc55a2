"""The encoder layers of a model and their prunable Linears, for every supported family.

Where a family keeps them is the family registry's business (`families`, one module per model type): everything
else walks a model through `encoder_layers(model)` and names no family.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .errors import DeepCutsError

ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
"""The six prunable Linears of an encoder layer, in forward order."""

UNIT_AXIS = {"query": "rows", "key": "rows", "value": "rows", "attn_out": "cols", "ffn_in": "rows", "ffn_out": "cols"}
"""Which part of each role's Linear belongs to a unit: output rows (with their biases: Q, K, V and the
FFN input) or input columns (the attention output and FFN output, whose bias no unit owns). Slicing,
unit scores, cost counts and reconstruction all read it from here."""

HEAD_ROLES = ("query", "key", "value", "attn_out")
"""The Linears an attention head owns part of (`head_dim` rows or columns each)."""

NEURON_ROLES = ("ffn_in", "ffn_out")
"""The Linears an FFN neuron owns part of (one row or column each)."""

OUTPUT_ROLES = tuple(r for r in ROLES if UNIT_AXIS[r] == "cols")
"""The output projections of the attention and FFN blocks: units are their input columns."""


@dataclass
class EncoderLayer:
    """The prunable Linears of one encoder layer, with their qualified names in the full model."""

    index: int
    prefix: str  # qualified name of the layer module in the full model
    attention: nn.Module
    linears: dict[str, nn.Linear]  # role -> module (a fused Linear under each of its roles)
    names: dict[str, str]  # role -> qualified module name
    head_dim: int
    blocks: dict[str, int]  # role -> unit-ordered blocks its Linear stacks along the unit axis (3 for a fused QKV
    #                         projection, 2 for a GLU's input and gate, else 1)
    extras: dict[str, nn.Linear]  # the family's `head_extras` this layer has (qualified name -> Linear): sliced
    #                               with its heads, not scored

    @property
    def num_heads(self) -> int:
        return self.linears["attn_out"].in_features // self.head_dim

    @property
    def ffn_width(self) -> int:
        return self.linears["ffn_out"].in_features

    def distinct(self) -> dict[str, nn.Linear]:
        """role -> Linear, each Linear once, under the first of its roles (a fused QKV projection as "query")."""
        return {role: self.linears[role] for role in distinct_roles(self.names)}


def distinct_roles(names: Mapping[str, str]) -> list[str]:
    """The roles whose modules (`names`: role -> qualified module name) are distinct, in `ROLES` order: a fused
    Linear once, under the first of the roles it serves."""
    first: dict[str, str] = {}
    for role in ROLES:
        first.setdefault(names[role], role)
    return list(first.values())


def _family(model: nn.Module):
    """`families.family(model)`, imported here on use: the registry's modules import this one."""
    from .families import family

    return family(model)


def base_model(model: nn.Module) -> nn.Module:
    """The bare encoder inside a task model (the model itself if it has no head)."""
    return getattr(model, "base_model", model)


def _base_prefix(model: nn.Module) -> str:
    base = base_model(model)
    if base is model:
        return ""
    for name, module in model.named_children():
        if module is base:
            return name + "."
    raise DeepCutsError("cannot locate the base model inside the task model")


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """Describe every encoder layer of `model` (any family of the registry, `families`)."""
    spec = _family(model)
    base = base_model(model)
    prefix = _base_prefix(model)
    layers = base.get_submodule(spec.layers)
    out = []
    for i, layer in enumerate(layers):
        attention = layer.get_submodule(spec.attention)
        linears = {role: layer.get_submodule(getattr(spec, role)) for role in ROLES}
        for role, lin in linears.items():
            if not isinstance(lin, nn.Linear):
                raise DeepCutsError(f"layer {i} {role} is {type(lin).__name__}, expected nn.Linear")
        layer_prefix = f"{prefix}{spec.layers}.{i}"
        extras = {f"{layer_prefix}.{path}": lin for path in spec.head_extras if (lin := _find(layer, path)) is not None}
        out.append(
            EncoderLayer(
                index=i,
                prefix=layer_prefix,
                attention=attention,
                linears=linears,
                names={role: f"{layer_prefix}.{getattr(spec, role)}" for role in ROLES},
                head_dim=int(getattr(attention, spec.head_dim_attr)),
                blocks={role: spec.blocks(getattr(spec, role)) for role in ROLES},
                extras=extras,
            )
        )
    return out


def _find(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def embeddings_module(model: nn.Module) -> nn.Module:
    """The embedding block whose output starts the encoder."""
    return base_model(model).get_submodule(_family(model).embeddings)


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Qualified module name -> Linear for every prunable Linear (a fused one once), in forward order."""
    return {layer.names[r]: layer.linears[r] for layer in encoder_layers(model) for r in ROLES}
