"""Reconstruction without retraining: least-squares refit of each slim layer's output projections.

Layer by layer, from the first, the attention-output and FFN-output Linears of the slim model are
refit (weights and bias) so that, on the calibration tokens, the residual sum each one's output is
added into (its output plus the residual stream) is the dense model's (the idea of Kwon et al. 2022's
mask tuning, with whole weight matrices instead of one scale per unit). Inputs come from the slim
model's own forward pass with the earlier layers already refit, and the target is the dense sum less
the slim model's own residual there, so each fit also makes up for what the layers below left
different and errors do not pile up. Each layer's inputs are kept between
layers, so a layer runs three times (attention refit, FFN refit, next inputs) instead of the whole
model running twice per layer. A slim model with layers removed whole is matched to the dense layers by where each
of its layers came from (`families.depth.layer_ids`), and the dense model runs its removed layers too. The kept
layer right before removed ones also stands in for them, as ReplaceMe replaces a block by a linear map: its FFN
output projection is fit to what makes its layer output what the dense model's is after the removed layers (through
the inverse of the layer's output LayerNorm, at each token's own mean and scale, in a post-norm family), so the map
is folded into a projection the slim model has anyway. Each fit solves the ridge-regularised normal equations of Gram
matrices accumulated per batch in float32 and summed in float64: no iterative solver. Batches
go to the model's device; with a bf16 precision (dtype "auto" picks it only where the device runs
bf16 natively) the layer forwards run under autocast there, while the Gram matrices and the solve
stay in float32 / float64.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import OUTPUT_ROLES, encoder_layers
from ..errors import DeepCutsError, first_line
from ..families import family
from ..families.depth import layer_ids
from ..tasks import without_labels
from ..hashing import model_fingerprint
from ..precision import autocast, choose
from ..models import model_device, to_device
from .slicing import lineage

REFIT_ROLES = OUTPUT_ROLES  # the block outputs: their inputs are what pruning removed


@dataclass
class _LayerCall:
    """One batch's call of an encoder layer: hidden states plus the other arguments it was given."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    real: torch.Tensor | None  # (batch, seq) bool mask of real tokens, None when there is no padding mask


class _Stop(Exception):
    """Raised from a hook once the wanted activation is captured, to skip the rest of a layer."""


def reconstruct(slim: nn.Module, dense: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                ridge: float = 1e-4, dtype: str | torch.dtype | None = "auto") -> nn.Module:
    """A copy of `slim` whose output projections are refit to reproduce `dense`'s on `batches`.

    Both models must be on the same device; batches are moved there. `dtype` is the precision of the
    layer forwards ("auto": bf16 autocast only where the device runs it natively; the fits always
    stay in float32 / float64). `dense` must be a model `slim` was pruned from (`check_source`)."""
    device = model_device(dense)
    if model_device(slim) != device:
        raise DeepCutsError(f"the slim model is on {model_device(slim)} and the dense one on {device}; "
                            "move both to one device first")
    autocast_dtype = choose("infer", device, dtype).autocast_dtype
    batch_list = _model_inputs(batches, device)
    check_source(slim, dense)
    counterpart = _counterparts(slim, dense)
    refit = copy.deepcopy(slim).eval()
    was_training = dense.training
    dense.eval()
    try:
        with torch.no_grad(), autocast(device, autocast_dtype):
            slim_calls, dense_calls = _first_layer_calls(refit, batch_list), _first_layer_calls(dense, batch_list)
            slim_layers = dict(zip(counterpart, encoder_layers(refit)))
            pre_norm = family(dense).pre_norm
            for i, targets in dense_walk(dense, set(slim_layers), dense_calls):
                layer = slim_layers[i]
                module = refit.get_submodule(layer.prefix)
                for role in REFIT_ROLES:
                    gram, cross = _normal_equations(module, layer, role, slim_calls, targets[role], pre_norm)
                    _solve_into(layer.linears[role], gram, cross, ridge)
                slim_calls = [_advance(module, call) for call in slim_calls]
    finally:
        dense.train(was_training)
    return refit


def _counterparts(slim: nn.Module, dense: nn.Module) -> list[int]:
    """For each slim encoder layer, the index of the dense layer it was cut from."""
    slim_ids, dense_ids = layer_ids(slim), layer_ids(dense)
    where = {layer: i for i, layer in enumerate(dense_ids)}
    missing = [layer for layer in slim_ids if layer not in where]
    if missing or len(slim_ids) > len(dense_ids):
        raise DeepCutsError(f"the slim model has {len(slim_ids)} layers, the dense one {len(dense_ids)}, and slim layer "
                            f"{missing[0] if missing else '?'} has no counterpart in it; pass the dense model the slim "
                            "one was pruned from")
    return [where[layer] for layer in slim_ids]


def check_source(slim: nn.Module, dense: nn.Module) -> None:
    """Refuse a `dense` reference whose weights are none of those `slim` records being cut from (`slicing.lineage`):
    a refit to another model's outputs would silently make the slim model imitate that one. Models pruned before
    the record existed carry none and are taken as they are."""
    cut_from = lineage(slim)
    if not cut_from:
        return
    current = model_fingerprint(dense)
    if current not in cut_from:
        raise DeepCutsError(f"the slim model was not pruned from this dense model (weights {current}) but from one "
                            f"with weights {cut_from[-1]}; pass the dense model dc.prune cut it from, unchanged, as "
                            "the reference to refit against")


def _model_inputs(batches: Iterable[Mapping[str, torch.Tensor]], device) -> list[dict]:
    """The batches without any task's labels, on `device`; refused when empty or without a single real token."""
    batch_list = [to_device(without_labels(b), device) for b in batches]
    if not batch_list:
        raise DeepCutsError("reconstruction needs calibration batches; the data is empty")
    if all("attention_mask" in b and not bool(b["attention_mask"].any()) for b in batch_list):
        raise DeepCutsError("the reconstruction batches hold no real token (every attention_mask is 0), so there "
                            "is nothing to fit; pass batches of real text")
    return batch_list


def _first_layer_calls(model: nn.Module, batches: list) -> list[_LayerCall]:
    """How the first encoder layer is called on every batch (the model stops right there)."""
    first = model.get_submodule(encoder_layers(model)[0].prefix)
    calls: list[_LayerCall] = []
    current: dict = {}

    def grab(module, args, kwargs):
        calls.append(_LayerCall(args[0], args[1:], kwargs, current["real"]))
        raise _Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            current["real"] = None if mask is None else mask.bool()
            with contextlib.suppress(_Stop):
                model(**batch)
    finally:
        handle.remove()
    return calls


def _run(module: nn.Module, call: _LayerCall) -> torch.Tensor:
    out = module(call.hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def _advance(module: nn.Module, call: _LayerCall) -> _LayerCall:
    """The next layer's call on the same batch."""
    return _LayerCall(_run(module, call).float(), call.args, call.kwargs, call.real)


def _tokens(t: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Rows of the real tokens, in float32."""
    return (t.flatten(0, -2) if real is None else t[real]).float()


def dense_walk(dense: nn.Module, kept: set[int], calls: list[_LayerCall]):
    """Run the dense model layer by layer from `calls` (its first layer's); for each layer in `kept` (the slim model's
    counterparts), in order, yield (its index, its refit targets: per role, the dense residual sum that role's output
    is added into, on every batch), the FFN output's bridged over the removed layers that follow it (`_bridge`)."""
    fam = family(dense)
    layers = encoder_layers(dense)
    i = 0
    while i < len(layers):
        module = dense.get_submodule(layers[i].prefix)
        if i not in kept:  # removed before any kept layer: nothing to stand in for it
            calls = [_advance(module, call) for call in calls]
            i += 1
            continue
        end = next((j for j in range(i + 1, len(layers)) if j in kept), len(layers))
        targets, calls = _dense_targets(module, layers[i], calls, fam.pre_norm)
        if end > i + 1:
            norm = None if fam.output_norm is None else module.get_submodule(fam.output_norm)
            for j in range(i + 1, end):
                calls = [_advance(dense.get_submodule(layers[j].prefix), call) for call in calls]
            targets["ffn_out"] = [_bridge(z, _tokens(call.hidden, call.real), norm)
                                  for z, call in zip(targets["ffn_out"], calls)]
        yield i, targets
        i = end


def _bridge(residual_sum: torch.Tensor, after: torch.Tensor, norm: nn.Module | None):
    """The residual sum that makes a layer output `after` (the dense hidden states after the removed layers that
    follow it) instead of what its own `residual_sum` gives: `after` itself in a pre-norm layer, whose output is the
    sum; in a post-norm layer the output LayerNorm's inverse of `after` at each token's own mean and scale (the sum
    itself for a removed layer that changed nothing)."""
    if norm is None:
        return after
    gamma = norm.weight.detach().float()
    floor = 1e-3 * float(gamma.abs().mean())  # a near-zero scale would blow the inverse up
    gamma = torch.where(gamma >= 0, gamma.clamp_min(floor), gamma.clamp_max(-floor))
    beta = norm.bias.detach().float() if getattr(norm, "bias", None) is not None else 0.0
    mean = residual_sum.mean(-1, keepdim=True)
    scale = (residual_sum.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return mean + scale * (after - beta) / gamma


@contextlib.contextmanager
def _residuals(layer, pre_norm: bool):
    """A reader (call, role, the role's output) -> the residual stream that `role`'s output is added to, at the real
    tokens, for a forward of the layer made inside this block: the layer's input for the attention output; for the
    FFN output, in a post-norm layer the FFN's input (the attention block's normalised output), in a pre-norm layer
    the layer's input plus the attention output."""
    seen: dict = {}
    if pre_norm:
        handle = layer.linears["attn_out"].register_forward_hook(lambda m, args, out: seen.__setitem__("ffn", out))
    else:
        handle = layer.linears["ffn_in"].register_forward_pre_hook(lambda m, args: seen.__setitem__("ffn", args[0]))

    def read(call: _LayerCall, role: str) -> torch.Tensor:
        if role == "attn_out":
            return _tokens(call.hidden, call.real)
        ffn = _tokens(seen["ffn"], call.real)
        return _tokens(call.hidden, call.real) + ffn if pre_norm else ffn

    try:
        yield read
    finally:
        handle.remove()


def _dense_targets(module: nn.Module, layer, calls: list[_LayerCall],
                   pre_norm: bool) -> tuple[dict, list[_LayerCall]]:
    """Per role, the dense layer's residual sums (the output projection's output plus the residual it is added to)
    at the real tokens of every batch; and the next layer's calls."""
    targets: dict = {role: [] for role in REFIT_ROLES}
    captured: dict = {}
    handles = [layer.linears[role].register_forward_hook(
        lambda m, i, out, role=role: captured.__setitem__(role, out)) for role in REFIT_ROLES]
    nxt = []
    try:
        with _residuals(layer, pre_norm) as residual:
            for call in calls:
                nxt.append(_advance(module, call))
                for role in REFIT_ROLES:
                    targets[role].append(_tokens(captured[role], call.real) + residual(call, role))
    finally:
        for h in handles:
            h.remove()
    return targets, nxt


def _normal_equations(module: nn.Module, layer, role: str, calls: list[_LayerCall], targets: list,
                      pre_norm: bool):
    """X^T X and X^T Y over the calibration tokens, X = [slim input of the `role` Linear, 1], Y = the dense residual
    sums `targets` minus the slim layer's own residual there: the Linear is fit to make the slim residual sum the
    dense one, so it also makes up for what the layers below left different. Summed in float64 on the model's
    device (one copy to the host at the end, not one per batch)."""
    linear = layer.linears[role]
    k, device = linear.in_features, linear.weight.device
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=device)
    cross = torch.zeros(k + 1, linear.out_features, dtype=torch.float64, device=device)
    captured: list = []

    def grab(m, inputs):
        captured.append(inputs[0])
        raise _Stop

    handle = linear.register_forward_pre_hook(grab)
    try:
        with _residuals(layer, pre_norm) as residual:
            for call, target in zip(calls, targets):
                captured.clear()
                with contextlib.suppress(_Stop):
                    _run(module, call)
                x = _tokens(captured[0], call.real)
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
                y = target - residual(call, role)
                with torch.autocast(x.device.type, enabled=False):  # the Gram matrices stay float32
                    gram += (x.T @ x).double()
                    cross += (x.T @ y).double()
    finally:
        handle.remove()
    return gram.cpu(), cross.cpu()


def _solve_into(linear: nn.Linear, gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> None:
    """Write the ridge least-squares solution into `linear` (the bias is not regularised)."""
    k = linear.in_features
    solution = ridge_solution(gram, cross, ridge)  # (k + 1, out)
    linear.weight.copy_(solution[:k].T.to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(solution[k].to(linear.bias.dtype))


def ridge_regularised(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """`gram` (inputs plus a last ones column) with `ridge` times its mean input diagonal added to the inputs'
    diagonal; the bias is not regularised."""
    k = gram.shape[0] - 1
    scale = float(gram.diagonal()[:k].mean()) if k else 0.0
    reg = torch.zeros(k + 1, dtype=gram.dtype, device=gram.device)
    reg[:k] = ridge * max(scale, 1e-12)
    return gram + torch.diag(reg)


def ridge_solution(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """The ridge least-squares weights (k + 1, out) of the normal equations `gram`, `cross` (last row: bias)."""
    try:
        return torch.linalg.solve(ridge_regularised(gram, ridge), cross)
    except torch.linalg.LinAlgError as e:
        raise DeepCutsError(f"the least-squares refit of {gram.shape[0] - 1} inputs is singular ({first_line(e)}); "
                            "reconstruct on more (or more varied) calibration examples") from e
