"""Paper-style unstructured masks: keep the top fraction per layer or over the whole model."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import DeepCutsError

SCOPES = ("layer", "global")
COUNTS = ("model", "encoder")


def kept_fraction(compression: float, total: int, prunable: int, count: str = "model") -> float:
    """Fraction of prunable params to keep so total / remaining == compression (ShrinkBench).

    `count` names what `total` covers ("model": every parameter; "encoder": the encoder layers).
    """
    if not compression > 1:
        raise DeepCutsError(f"compression must be > 1 (total params / remaining params), got {compression}")
    nonprunable = total - prunable
    fraction = (total / compression - nonprunable) / prunable
    if fraction <= 0:
        limit = total / nonprunable if nonprunable else float("inf")
        hint = " or count compression over the encoder only (params='encoder')" if count == "model" else ""
        raise DeepCutsError(
            f"compression {compression} cannot be reached: the {nonprunable:,} non-prunable params "
            f"({count} count) alone give {limit:.3f}; choose a compression below {limit:.3f}{hint}"
        )
    return fraction


def masks_for_compression(
    scores: Mapping[str, torch.Tensor], meta: Mapping, compression: float, scope: str = "layer",
    params: str = "model",
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = keep) for every scored tensor."""
    if scope not in SCOPES:
        raise DeepCutsError(f"unknown scope {scope!r}; choose 'layer' or 'global'")
    if params not in COUNTS:
        raise DeepCutsError(f"unknown params count {params!r}; choose 'model' or 'encoder'")
    total = int(meta["total_params"] if params == "model" else meta["encoder_params"])
    fraction = kept_fraction(compression, total, int(meta["prunable_params"]), params)
    if scope == "layer":
        return {name: _top_mask(s.flatten(), fraction).view_as(s) for name, s in scores.items()}
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = _top_mask(flat, fraction)
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


def _top_mask(flat: torch.Tensor, fraction: float) -> torch.Tensor:
    k = min(flat.numel(), int(round(fraction * flat.numel())))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        mask[torch.topk(flat.float(), k, sorted=False).indices] = True
    return mask


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Zero the masked-out weights of `model` in place; returns how many were zeroed."""
    params = dict(model.named_parameters())
    zeroed = 0
    for name, mask in masks.items():
        if name not in params:
            raise DeepCutsError(f"mask names parameter {name!r}, which the model does not have; "
                                "were the scores computed on another model?")
        p = params[name]
        if tuple(mask.shape) != tuple(p.shape):
            raise DeepCutsError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(p.shape)}")
        keep = mask.to(device=p.device, dtype=torch.bool)
        zeroed += int((~keep).sum())
        p.masked_fill_(~keep, 0)
    return zeroed
