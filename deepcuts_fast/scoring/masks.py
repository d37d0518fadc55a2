"""Paper-style unstructured masks: keep the top fraction per layer or over the whole model."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..arch import prunable_linears
from ..errors import DeepCutsError
from .options import real_number

SCOPES = ("layer", "global")
COUNTS = ("model", "encoder")


def kept_fraction(compression: float, total: int, prunable: int, count: str = "model") -> float:
    """Fraction of prunable params to keep so total / remaining == compression (ShrinkBench).

    `count` names what `total` covers ("model": every parameter; "encoder": the encoder layers).
    """
    compression = real_number("compression", compression)
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
    check_finite_scores(scores)
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


def check_finite_scores(scores: Mapping[str, torch.Tensor]) -> None:
    """Refuse, naming the parameter, scores holding NaN or inf: topk would rank NaN above every number."""
    for name, s in scores.items():
        if not bool(torch.isfinite(s).all()):
            raise DeepCutsError(f"the scores of parameter {name} hold NaN or inf values; score a model with finite "
                                "weights again (a NaN loss or weight makes every ranking meaningless)")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Zero the masked-out weights of `model` in place; returns how many were zeroed. The masks must cover exactly
    the model's prunable parameters with their shapes (those `Scores.masks` covers), so that masks of another model
    are refused whole instead of being applied in part."""
    keeps = _checked_masks(model, masks)
    params = dict(model.named_parameters())
    zeroed = 0
    for name, keep in keeps.items():
        p = params[name]
        keep = keep.to(device=p.device)
        zeroed += int((~keep).sum())
        p.masked_fill_(~keep, 0)
    return zeroed


def _checked_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks as boolean tensors, after checking them all, before any weight is touched; the error names the
    first mismatch."""
    if not isinstance(masks, Mapping):
        raise DeepCutsError(f"masks must map parameter names to keep-masks (from Scores.masks), got "
                            f"{type(masks).__name__}")
    params = dict(model.named_parameters())
    keeps = {}
    for name, mask in masks.items():
        if name not in params:
            raise DeepCutsError(f"mask names parameter {name!r}, which the model does not have; "
                                "were the scores computed on another model?")
        keeps[name] = _keep_mask(name, mask, tuple(params[name].shape))
    missing = [name for name in prunable_parameters(model) if name not in keeps]
    if missing:
        raise DeepCutsError(f"the masks do not cover parameter {missing[0]} of the model ({len(missing)} prunable "
                            f"parameters uncovered); they were made for another model: make masks from scores of "
                            "this model")
    return keeps


def _keep_mask(name: str, mask, shape: tuple[int, ...]) -> torch.Tensor:
    """One mask as a boolean tensor of `shape`: a bool tensor, or numbers that are all 0 or 1."""
    if not isinstance(mask, torch.Tensor):
        raise DeepCutsError(f"mask for {name!r} is a {type(mask).__name__}, not a tensor; pass Scores.masks(...)")
    if tuple(mask.shape) != shape:
        raise DeepCutsError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has {shape}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise DeepCutsError(f"mask for {name!r} holds values other than 0 and 1 (scores instead of masks?); "
                            "pass keep-masks, e.g. scores.masks(compression)")
    return mask.bool()


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters that weight-granularity scores and masks cover: the prunable Linears' weights and
    biases, layer by layer."""
    params = dict(model.named_parameters())
    names = [f"{name}.{kind}" for name in prunable_linears(model) for kind in ("weight", "bias")]
    return [n for n in names if n in params]
