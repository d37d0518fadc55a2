"""Reconstruction without retraining: least-squares refit of each slim layer's output projections.

Layer by layer, from the first, the attention-output and FFN-output Linears of the slim model are
refit (weights and bias) so that, on the calibration tokens, they reproduce what the dense model's
same Linears produce on the same batch (the idea of Kwon et al. 2022's mask tuning). Inputs come
from the slim model's own forward pass with the earlier layers already refit, so errors do not pile
up. Each fit solves the ridge-regularised normal equations on accumulated Gram matrices in float64:
one pass over the calibration data per refit Linear, no iterative solver.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError

REFIT_ROLES = ("attn_out", "ffn_out")


def reconstruct(slim: nn.Module, dense: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                ridge: float = 1e-4) -> nn.Module:
    """A copy of `slim` whose output projections are refit to reproduce `dense`'s on `batches`."""
    batch_list = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    if not batch_list:
        raise DeepCutsError("reconstruction needs calibration batches; the data is empty")
    slim_layers, dense_layers = encoder_layers(slim), encoder_layers(dense)
    if len(slim_layers) != len(dense_layers):
        raise DeepCutsError(f"slim model has {len(slim_layers)} layers, the dense one {len(dense_layers)}")
    refit = copy.deepcopy(slim).eval()
    targets = _dense_outputs(dense, batch_list)
    for i, layer in enumerate(encoder_layers(refit)):
        for role in REFIT_ROLES:
            gram, cross = _normal_equations(refit, layer.linears[role], batch_list, targets[(i, role)])
            _solve_into(layer.linears[role], gram, cross, ridge)
    return refit


@torch.no_grad()
def _dense_outputs(dense: nn.Module, batches: list) -> dict:
    """(layer, role) -> per-batch outputs of the dense model's output projections on real tokens."""
    was_training = dense.training
    dense.eval()
    outputs: dict = {}
    handles = []
    for i, layer in enumerate(encoder_layers(dense)):
        for role in REFIT_ROLES:
            def hook(module, inputs, output, key=(i, role)):
                outputs.setdefault(key, []).append(output[_real(current["mask"])].double())
            handles.append(layer.linears[role].register_forward_hook(hook))
    current: dict = {}
    try:
        for batch in batches:
            current["mask"] = batch.get("attention_mask")
            dense(**batch)
    finally:
        for h in handles:
            h.remove()
        dense.train(was_training)
    return outputs


@torch.no_grad()
def _normal_equations(model: nn.Module, linear: nn.Linear, batches: list, targets: list):
    """X^T X and X^T Y over the calibration tokens, X = [slim input of `linear`, 1]."""
    k = linear.in_features
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    cross = torch.zeros(k + 1, linear.out_features, dtype=torch.float64)
    captured: list = []
    handle = linear.register_forward_hook(lambda m, inputs, output: captured.append(inputs[0]))
    try:
        for batch, target in zip(batches, targets):
            captured.clear()
            model(**batch)
            x = captured[0][_real(batch.get("attention_mask"))].double().cpu()
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
            gram += x.T @ x
            cross += x.T @ target.cpu()
    finally:
        handle.remove()
    return gram, cross


def _solve_into(linear: nn.Linear, gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> None:
    """Write the ridge least-squares solution into `linear` (the bias is not regularised)."""
    k = linear.in_features
    scale = float(gram.diagonal()[:k].mean()) if k else 0.0
    reg = torch.zeros(k + 1, dtype=torch.float64)
    reg[:k] = ridge * max(scale, 1e-12)
    solution = torch.linalg.solve(gram + torch.diag(reg), cross)  # (k + 1, out)
    with torch.no_grad():
        linear.weight.copy_(solution[:k].T.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(solution[k].to(linear.bias.dtype))


def _real(mask: torch.Tensor | None):
    """Index of the real (non-padding) tokens, or everything when there is no mask."""
    return Ellipsis if mask is None else mask.bool()
