"""Mask rearrangement (Kwon et al. 2022): with each layer's kept counts fixed, swap units to lower
the layer's estimated loss increase `z^T F z`, where z marks the pruned units and F is the layer's
empirical Fisher matrix of the unit masks (sum over examples of g g^T). The diagonal-only search
ignores that pruning two correlated units costs more than the sum of their parts; this does not.
"""
from __future__ import annotations

import torch

from ..errors import DeepCutsError
from ..scoring.scores import Scores
from .plan import Plan

MAX_SWAPS = 128  # per layer and unit type: later swaps gain little
CANDIDATES = 64  # each swap looks at the kept units of lowest and pruned units of highest Fisher diagonal


def rearrange(plan: Plan, fisher: Scores, max_swaps: int | None = MAX_SWAPS) -> Plan:
    """A plan with the same per-layer counts and a lower (never higher) `z^T F z` in every layer."""
    if fisher.interactions is None:
        raise DeepCutsError("rearrangement needs Fisher scores with their per-layer matrices: "
                            "dc.score(model, batches, 'fisher', granularity='unit')")
    if len(fisher.interactions) != len(plan.heads):
        raise DeepCutsError(f"Fisher scores cover {len(fisher.interactions)} layers, the plan {len(plan.heads)}")
    heads, neurons = [], []
    for (gh, gn), kept_h, kept_n in zip(fisher.interactions, plan.heads, plan.neurons):
        heads.append(rearrange_layer(gh, kept_h, max_swaps))
        neurons.append(rearrange_layer(gn, kept_n, max_swaps))
    return Plan(heads, neurons, plan.num_heads, plan.ffn_widths, {**plan.target, "rearranged": True}, plan.dropped)


def pruned_loss(gram: torch.Tensor, kept: list[int]) -> float:
    """`z^T F z` for the units not in `kept` (the objective rearrangement lowers)."""
    z = torch.ones(gram.shape[0], dtype=torch.float64)
    z[kept] = 0
    return float(z @ gram.double().cpu() @ z)


def rearrange_layer(gram: torch.Tensor, kept: list[int], max_swaps: int | None = None) -> list[int]:
    """Best-improvement swaps (one kept unit out, one pruned unit in, among the CANDIDATES units of
    each side nearest the boundary) until none lowers `z^T F z` or `max_swaps` were made."""
    n = gram.shape[0]
    if not 0 < len(kept) < n:
        return list(kept)
    f = gram.double().cpu()
    z = torch.ones(n, dtype=torch.float64)
    z[kept] = 0
    fz = f @ z
    diag = f.diagonal()
    for _ in range(n if max_swaps is None else max_swaps):
        out_idx = _extreme(diag, z == 0, largest=False)  # kept now, candidates to prune
        in_idx = _extreme(diag, z == 1, largest=True)  # pruned now, candidates to keep
        # change of z^T F z when z gains e_j (j kept -> pruned) and loses e_i (i pruned -> kept)
        gain = 2 * fz[out_idx] + diag[out_idx]
        lose = -2 * fz[in_idx] + diag[in_idx]
        delta = gain[:, None] + lose[None, :] - 2 * f[out_idx[:, None], in_idx[None, :]]
        best = int(torch.argmin(delta))
        if float(delta.view(-1)[best]) >= -1e-12 * max(1.0, float(diag.abs().max())):
            break
        j, i = int(out_idx[best // len(in_idx)]), int(in_idx[best % len(in_idx)])
        z[j], z[i] = 1.0, 0.0
        fz += f[:, j] - f[:, i]
    return torch.nonzero(z == 0).view(-1).tolist()


def _extreme(diag: torch.Tensor, where: torch.Tensor, largest: bool) -> torch.Tensor:
    """Indices of the (at most CANDIDATES) units in `where` with the largest / smallest diagonal."""
    idx = torch.nonzero(where).view(-1)
    if idx.numel() <= CANDIDATES:
        return idx
    return idx[torch.topk(diag[idx], CANDIDATES, largest=largest).indices]
