"""Reconstruction without retraining: least-squares refit of each slim layer's output projections.

Layer by layer, from the first, the attention-output and FFN-output Linears of the slim model are
refit (weights and bias) so that, on the calibration tokens, the residual sum each one's output is
added into (its output plus the residual stream) is the dense model's (the idea of Kwon et al. 2022's
mask tuning, with whole weight matrices instead of one scale per unit). Inputs come from the slim
model's own forward pass with the earlier layers already refit, and the target is the dense sum less
the slim model's own residual there, so each fit also makes up for what the layers below left
different and errors do not pile up. Each layer's inputs are kept between layers, so a layer runs twice (attention
refit, FFN refit) and its output comes from what the FFN refit kept (`_replayed`), instead of the whole model running
twice per layer; each layer gets the arguments the model gives that layer (local and global attention layers get
different masks and rotary tables). The dense targets come from a layer-by-layer walk of the dense model, or from a
forward that recorded them already (`refit_targets`: the pipeline's scoring pass). A slim model with layers removed
whole is matched to the dense layers by where each of its layers came from (`families.depth.layer_ids`), and the
dense model runs its removed layers too. The kept
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
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, first_line
from ..families import family
from ..families.depth import layer_ids
from ..tasks import without_labels
from ..hashing import model_fingerprint
from ..precision import autocast, choose
from ..models import model_device, to_device
from .refit_targets import (REFIT_ROLES, RefitTargets, bridge, next_kept, real_token_count, recording_layer,
                            residuals, tokens)
from .slicing import lineage


@dataclass
class _LayerCall:
    """One batch's call of encoder layer `index` (of the dense model): its hidden states, and the other arguments the
    model gives each of its layers (they differ where layers attend differently, local and global ones: their masks
    and rotary tables)."""

    hidden: torch.Tensor
    layer_args: list[tuple[tuple, dict]]  # per dense layer: (positional arguments after the hidden states, keywords)
    index: int
    real: torch.Tensor | None  # (batch, seq) bool mask of real tokens, None when there is no padding mask


REPLAY_MEMORY = 1 << 30
"""The most memory (bytes) a layer's FFN-output inputs may take to be kept for computing the layer's output after its
refit (`_replayed`); past it the layer runs again instead."""
REPLAY_TOLERANCE = 1e-2
"""How far (relative norm) the replayed output of a layer may be from its forward on the first batch: rounding (bf16
autocast adds in another order), never a missing operation."""


class _Stop(Exception):
    """Raised from a hook once the wanted activation is captured, to skip the rest of a layer."""


def reconstruct(slim: nn.Module, dense: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                ridge: float = 1e-4, dtype: str | torch.dtype | None = "auto",
                targets: RefitTargets | None = None) -> nn.Module:
    """A copy of `slim` whose output projections are refit to reproduce `dense`'s on `batches`.

    Both models must be on the same device; batches are moved there. `dtype` is the precision of the
    layer forwards ("auto": bf16 autocast only where the device runs it natively; the fits always
    stay in float32 / float64). `dense` must be a model `slim` was pruned from (`check_source`).
    `targets`, recorded during a forward of `dense` on the same batches in the same precision (as the pipeline's
    scoring pass records them), spare the refit its own dense forward; the result is the same."""
    device = model_device(dense)
    if model_device(slim) != device:
        raise DeepCutsError(f"the slim model is on {model_device(slim)} and the dense one on {device}; "
                            "move both to one device first")
    autocast_dtype = choose("infer", device, dtype).autocast_dtype
    batch_list = _model_inputs(batches, device)
    check_source(slim, dense)
    if targets is not None:
        targets.check(dense, batch_list, autocast_dtype)
    counterpart = _counterparts(slim, dense)
    refit = copy.deepcopy(slim).eval()
    was_training = dense.training
    dense.eval()
    try:
        with torch.no_grad(), autocast(device, autocast_dtype):
            dense_calls = _first_layer_calls(dense, batch_list)  # the slim model's layers are called alike
            slim_layers = dict(zip(counterpart, encoder_layers(refit)))
            fam = family(dense)
            walk = (targets.walk(set(slim_layers)) if targets is not None
                    else dense_walk(dense, set(slim_layers), dense_calls))
            slim_calls = dense_calls
            tokens_in_all = real_token_count(batch_list)
            for i, layer_targets in walk:
                layer = slim_layers[i]
                module = refit.get_submodule(layer.prefix)
                slim_calls = _at(slim_calls, i)
                last = i == counterpart[-1]  # its output feeds no refit
                kept = None if last else replay_store(layer, tokens_in_all)
                for role in REFIT_ROLES:
                    gram, cross = _normal_equations(module, layer, role, slim_calls, layer_targets[role],
                                                    fam.pre_norm, kept if role == "ffn_out" else None)
                    _solve_into(layer.linears[role], gram, cross, ridge)
                if not last:
                    slim_calls = next_calls(module, layer, slim_calls, kept, fam)
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
    """How the model calls its first encoder layer on every batch, with the arguments it gives each layer, read in a
    forward where only the first layer of the first batch runs (to learn what a layer returns) and every other layer
    call passes its input through, up to the last layer, where the forward stops."""
    modules = [model.get_submodule(layer.prefix) for layer in encoder_layers(model)]
    calls: list[_LayerCall] = []
    seen: dict = {}

    def stand_in(i: int, module: nn.Module):
        original = module.forward

        def forward(hidden, *args, **kwargs):
            seen["args"].append((args, kwargs))
            if i == 0:
                seen["hidden"] = hidden
            if len(seen["args"]) == len(modules):
                raise _Stop
            if "output" not in seen:  # a layer's real output, once: what the model's loop unpacks
                seen["output"] = original(hidden, *args, **kwargs)
            out = seen["output"]
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
        return forward

    own = [module.__dict__.get("forward") for module in modules]
    try:
        for i, module in enumerate(modules):
            module.forward = stand_in(i, module)
        for batch in batches:
            mask = batch.get("attention_mask")
            seen["args"] = []
            with contextlib.suppress(_Stop):
                model(**batch)
            if len(seen["args"]) != len(modules):
                raise DeepCutsError(f"the model called {len(seen['args'])} of its {len(modules)} encoder layers; "
                                    "its layers cannot be refit one by one")
            calls.append(_LayerCall(seen["hidden"], seen["args"], 0, None if mask is None else mask.bool()))
    finally:
        for module, forward in zip(modules, own):
            module.__dict__.pop("forward", None)
            if forward is not None:
                module.forward = forward
    return calls


def _run(module: nn.Module, call: _LayerCall) -> torch.Tensor:
    args, kwargs = call.layer_args[call.index]
    out = module(call.hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _advance(module: nn.Module, call: _LayerCall) -> _LayerCall:
    """The next layer's call on the same batch, with `module`'s output."""
    return _LayerCall(_run(module, call).float(), call.layer_args, call.index + 1, call.real)


def _at(calls: list[_LayerCall], index: int) -> list[_LayerCall]:
    """`calls` as calls of layer `index`: the hidden states given to another (a slim model's) layer."""
    return [replace(call, index=index) for call in calls]


def dense_walk(dense: nn.Module, kept: set[int], calls: list[_LayerCall]):
    """Run the dense model layer by layer from `calls` (its first layer's); for each layer in `kept` (the slim model's
    counterparts), in order, yield (its index, its refit targets: per role, the dense residual sum that role's output
    is added into, on every batch), the FFN output's bridged over the removed layers that follow it (`bridge`)."""
    fam = family(dense)
    layers = encoder_layers(dense)
    i = 0
    while i < len(layers):
        module = dense.get_submodule(layers[i].prefix)
        if i not in kept:  # removed before any kept layer: nothing to stand in for it
            calls = [_advance(module, call) for call in calls]
            i += 1
            continue
        end = next_kept(i, kept, len(layers))
        targets, calls = _dense_targets(module, layers[i], calls, fam.pre_norm)
        if end > i + 1:
            norm = fam.output_norm_of(module)
            for j in range(i + 1, end):
                calls = [_advance(dense.get_submodule(layers[j].prefix), call) for call in calls]
            targets["ffn_out"] = [bridge(z, tokens(call.hidden, call.real), norm)
                                  for z, call in zip(targets["ffn_out"], calls)]
        yield i, targets
        i = end


def _dense_targets(module: nn.Module, layer, calls: list[_LayerCall],
                   pre_norm: bool) -> tuple[dict, list[_LayerCall]]:
    """Per role, the dense layer's residual sums (the output projection's output plus the residual it is added to)
    at the real tokens of every batch; and the next layer's calls."""
    targets: dict = {role: [] for role in REFIT_ROLES}
    current: dict = {}
    nxt = []
    with recording_layer(module, layer, pre_norm, lambda: current["real"], targets):
        for call in calls:
            current["real"] = call.real
            nxt.append(_advance(module, call))
    return targets, nxt


def _normal_equations(module: nn.Module, layer, role: str, calls: list[_LayerCall], targets: list,
                      pre_norm: bool, kept: list | None = None):
    """X^T X and X^T Y over the calibration tokens, X = [slim input of the `role` Linear, 1], Y = the dense residual
    sums `targets` minus the slim layer's own residual there: the Linear is fit to make the slim residual sum the
    dense one, so it also makes up for what the layers below left different. Summed in float64 on the model's
    device (one copy to the host at the end, not one per batch). `kept`, when given, gets each batch's (inputs of
    the Linear, residual) at the real tokens, from which `_replayed` computes the layer's output once it is refit."""
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
        with residuals(layer, pre_norm) as residual:
            for call, target in zip(calls, targets):
                captured.clear()
                with contextlib.suppress(_Stop):
                    _run(module, call)
                x = tokens(captured[0], call.real)
                r = residual(call.hidden, call.real, role)
                y = target - r
                with torch.autocast(x.device.type, enabled=False):  # the Gram matrices stay float32
                    gram[:k, :k] += (x.T @ x).double()  # the ones column's blocks are sums
                    gram[:k, k] += x.sum(0).double()
                    gram[k, k] += x.shape[0]
                    cross[:k] += (x.T @ y).double()
                    cross[k] += y.sum(0).double()
                if kept is not None:
                    kept.append((x, r))
    finally:
        handle.remove()
    gram[k, :k] = gram[:k, k]  # symmetric: the ones column's sums are its row too
    return gram.cpu(), cross.cpu()


def replay_store(layer, tokens_in_all: int) -> list | None:
    """An empty list for `_normal_equations` to keep a layer's FFN-output inputs in, for `next_calls`; None where
    they would take more than `REPLAY_MEMORY`."""
    width = layer.linears["ffn_out"].in_features + layer.linears["ffn_out"].out_features
    return [] if 4 * tokens_in_all * width <= REPLAY_MEMORY else None


def next_calls(module: nn.Module, layer, calls: list[_LayerCall], kept: list | None, fam) -> list[_LayerCall]:
    """The next layer's calls once `module`'s output projections are refit: replayed from what its FFN-output fit
    kept (`_replayed`) where it kept them and the first batch agrees, else from running the layer."""
    return (kept and _replayed(module, layer, calls, kept, fam.output_norm_of(module))) or [_advance(module, call) for call in calls]


def _replayed(module: nn.Module, layer, calls: list[_LayerCall], kept: list,
              norm: nn.Module | None) -> list[_LayerCall] | None:
    """The next layer's calls after `module`'s FFN output projection is refit, computed from that projection's inputs
    and residuals `kept` during its fit (the layer's output is the projection's output plus the residual, through the
    output norm `norm` of a post-norm family) instead of running the layer's attention and FFN input again; only the
    real tokens' rows are computed, which are all a later layer reads from. None when the first batch shows the layer
    computes something else; then the caller runs it."""
    linear = layer.linears["ffn_out"]

    def output(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        out = r + linear(x).float()
        return out if norm is None else norm(out).float()

    first = _advance(module, calls[0])
    real_first, replay_first = tokens(first.hidden, first.real), output(*kept[0])
    if replay_first.shape != real_first.shape or not bool(
            (replay_first - real_first).norm() <= REPLAY_TOLERANCE * real_first.norm()):
        return None
    nxt = [first]
    for call, (x, r) in zip(calls[1:], kept[1:]):
        rows = output(x, r)
        if call.real is None:
            hidden = rows.reshape(call.hidden.shape)
        else:
            hidden = call.hidden.float().clone()  # padding keeps the layer's input: masked out of every real token
            hidden[call.real] = rows
        nxt.append(_LayerCall(hidden, call.layer_args, call.index + 1, call.real))
    return nxt


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
