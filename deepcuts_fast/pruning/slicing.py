"""Physically remove heads, FFN neurons and whole layers: `prune` slices a copy of the model
(`families.narrowing.shrink`, the family's own narrowing), removes the plan's dropped layers (`families.depth`) and
records on its config the weights hashes of the models it was cut from (`LINEAGE`),
the only dense references `reconstruct` takes for it.
"""
from __future__ import annotations

import copy

from torch import nn

from ..errors import DeepCutsError, short_repr
from ..families.depth import check_removable, remove_layers
from ..families.narrowing import shrink
from ..hashing import model_fingerprint
from ..planning.plan import Plan

LINEAGE = "deepcuts_pruned_from"
"""The config attribute where a pruned model records the weights hashes (`hashing.model_fingerprint`) of the models it
was cut from, oldest first: `reconstruct` takes no other dense reference."""


def prune(model: nn.Module, plan: Plan) -> nn.Module:
    """A physically smaller copy of `model` keeping the plan's heads and neurons, without its dropped layers
    (`model` is untouched)."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"prune takes the torch model the plan was made for, got {type(model).__name__}")
    if not isinstance(plan, Plan):
        hint = " (a plan read from JSON: dc.Plan.from_dict(it))" if isinstance(plan, dict) else ""
        raise DeepCutsError(f"prune takes a dc.Plan, from dc.plan(...) or dc.Plan.from_dict(...){hint}; got "
                            f"{type(plan).__name__}")
    plan.check_model(model)
    check_removable(model, plan.dropped)
    slim = copy.deepcopy(model)
    record_cut(slim, model)
    shrink(slim, plan.heads, plan.neurons)
    remove_layers(slim, plan.dropped)
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
