"""Mask analysis (as in the paper): how much the masks of different criteria agree, layer by layer.

IoU = |A and B| / |A or B| of the kept sets: the weights of each encoder layer for paper-mode masks,
the heads plus FFN neurons of each layer for structured plans.
"""
from __future__ import annotations

from itertools import combinations

import torch

from ..scoring.layout import LayerLayout


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def weight_mask_iou(masks: dict[str, dict[str, torch.Tensor]], layout: list[LayerLayout]) -> dict:
    """Per-layer IoU of every pair of criteria's paper-mode masks: {"a|b": [iou of layer 0, ...]}."""
    flat = {}
    for crit, m in masks.items():
        flat[crit] = [torch.cat([m[f"{layer.names[r]}.{kind}"].reshape(-1).bool()
                                 for r in layer.distinct_roles() for kind in ("weight", "bias")
                                 if f"{layer.names[r]}.{kind}" in m])
                      for layer in layout]
    return {f"{a}|{b}": [_iou(x, y) for x, y in zip(flat[a], flat[b])] for a, b in combinations(masks, 2)}


def plan_iou(plans: dict[str, dict]) -> dict:
    """Per-layer IoU of every pair of structured plans (`Plan.to_dict()`) over kept heads and neurons."""
    def kept(p: dict) -> list[torch.Tensor]:
        sets = []
        for h, n, heads, ffn in zip(p["heads"], p["neurons"], p["num_heads"], p["ffn_widths"]):
            s = torch.zeros(heads + ffn, dtype=torch.bool)
            s[list(h)] = True
            s[[heads + j for j in n]] = True
            sets.append(s)
        return sets

    kept_sets = {c: kept(p) for c, p in plans.items()}
    return {f"{a}|{b}": [_iou(x, y) for x, y in zip(kept_sets[a], kept_sets[b])] for a, b in combinations(plans, 2)}


def mean_matrix(pairwise: dict[str, list[float]], criteria: list[str]) -> list[list[float]]:
    """Square matrix of layer-averaged IoU (1 on the diagonal), rows and columns in `criteria` order."""
    out = [[1.0] * len(criteria) for _ in criteria]
    for key, values in pairwise.items():
        a, b = key.split("|")
        i, j = criteria.index(a), criteria.index(b)
        out[i][j] = out[j][i] = sum(values) / len(values)
    return out
