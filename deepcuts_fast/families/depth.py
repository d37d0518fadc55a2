"""Remove whole encoder layers: the layer modules go, and the config says how many are left (the family's own
layer-count attribute, and any per-layer config lists sliced with them), so the slim folder loads in stock
transformers with fewer layers. `deepcuts_layer_ids` on the config records, for each layer left, its index in the
first model of the lineage (composed over repeated pruning), which `reconstruct` matches dense layers by.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..arch import base_model
from ..errors import DeepCutsError
from . import family

LAYER_IDS = "deepcuts_layer_ids"


def layer_ids(model: nn.Module) -> list[int]:
    """For each encoder layer of `model`, its index in the first model it was cut from (0..L-1 for a model no
    layer was removed from)."""
    fam = family(model)
    count = len(base_model(model).get_submodule(fam.layers))
    ids = getattr(model.config, LAYER_IDS, None)
    if ids is None:
        return list(range(count))
    if not isinstance(ids, list) or len(ids) != count or not all(isinstance(i, int) for i in ids):
        raise DeepCutsError(f"the model's config records {LAYER_IDS} = {ids!r}, not one int per encoder layer "
                            f"({count}); remove it from config.json, or prune the dense model again")
    return list(ids)


def check_removable(model: nn.Module, dropped: Sequence[int]) -> None:
    """Refuse removing a layer the family cannot lose (a first layer built unlike the others)."""
    fam = family(model)
    allowed = set(fam.removable_layers(model.config))
    refused = [i for i in dropped if i not in allowed]
    if refused:
        raise DeepCutsError(f"{fam.model_type} models build their first encoder layer unlike the others, so layer "
                            f"{refused[0]} cannot be removed whole (the next layer would be rebuilt as a first one "
                            "on loading); remove other layers, or prune its heads and neurons instead")


def remove_layers(model: nn.Module, dropped: Sequence[int]) -> None:
    """Remove the encoder layers `dropped` (indices into the model's current layers) from `model` in place."""
    if not dropped:
        return
    check_removable(model, dropped)
    fam = family(model)
    base = base_model(model)
    parent_path, _, name = fam.layers.rpartition(".")
    parent = base.get_submodule(parent_path) if parent_path else base
    layers = getattr(parent, name)
    gone = set(dropped)
    kept = [i for i in range(len(layers)) if i not in gone]
    ids = layer_ids(model)
    setattr(parent, name, nn.ModuleList(layers[i] for i in kept))
    config = model.config
    setattr(config, fam.shape_names[3], len(kept))
    for attr in (*fam.per_layer_config, "deepcuts_heads", "deepcuts_ffn"):  # one entry per layer
        values = getattr(config, attr, None)
        if isinstance(values, (list, tuple)) and len(values) == len(layers):
            setattr(config, attr, [values[i] for i in kept])
    setattr(config, LAYER_IDS, [ids[i] for i in kept])
