"""Iterative, knowledge-preserving pruning: choose each sublayer's units by the output error they leave.

The idea follows K-prune (Park et al., ICLR 2024) and structured OBS (ZipLM, Kurtic et al. 2023). The
number of heads and FFN neurons each layer keeps comes from a plan (the global FLOP search); which
ones it keeps is chosen here, bottom-up, sublayer by sublayer (layer 0 attention, layer 0 FFN, layer
1 attention, ...), on a copy of the dense model whose lower sublayers are already pruned and refit.
For a sublayer's output projection, X is its full-width input on that copy (every head's context or
every FFN activation, real tokens only, plus a ones column for the bias) and Y the dense model's residual sum
there less the copy's own residual (the targets of `reconstruct`). With
G = X^T X, C = X^T Y and W = G^-1 C (ridge-regularised), removing a group of columns g and refitting the
rest raises the squared error by tr(W_g^T [(G^-1)_gg]^-1 W_g): group-OBS backward elimination removes the
cheapest group, downdates G^-1 (Schur complement) and W, and repeats until the planned count is left
(heads one by one; FFN neurons in at most `neuron_steps` chunks per layer). The projection is then refit
on the kept columns by least squares, exactly as `reconstruct` refits a slim model, and the removed
columns are zeroed so that the sublayers above see the pruned function. With `selection="criterion"`
the given unit scores choose the kept units instead (the refit stays); with `selection="output-heads"`
they choose the FFN neurons while group OBS chooses the heads. A layer's output after its refits comes from
what its FFN-output fit kept, as in `reconstruct` (`next_calls`). Grams are accumulated in float32
per batch and summed in float64; the elimination and the solves run in float64 on the CPU.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..arch import encoder_layers
from ..errors import DeepCutsError, check_choice, first_line
from ..hashing import model_fingerprint
from ..models import model_device
from ..planning.checks import check_layout
from ..planning.plan import Plan
from ..precision import autocast, choose
from ..scoring.scores import Scores
from .refit_targets import RefitTargets, real_token_count
from .reconstruct import (_at, _first_layer_calls, dense_walk, _model_inputs, _normal_equations, next_calls,
                          replay_store, ridge_regularised, ridge_solution)
from ..families import family
from ..families.depth import remove_layers
from ..families.narrowing import shrink
from .slicing import record_cut

SELECTIONS = ("output", "criterion", "output-heads")
"""How the iterative method picks the kept units of a sublayer: by the output error their removal leaves
(group OBS), by the criterion's unit scores, or heads by output error and FFN neurons by the criterion's
scores (single neurons chosen by output error can over-fit the calibration tokens)."""

NEURON_STEPS = 64
"""FFN neurons are eliminated in at most this many chunks per layer (heads always one at a time)."""

STEPS = ("forward", "grams", "select", "refit")
"""The timed steps of `select_and_refit`: layer forwards of the dense model (targets) and of the pruned copy
(next layer's inputs); Gram accumulation (forwards up to the projection included); unit selection;
least-squares refits."""


def iterative_prune(dense: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], counts: Plan,
                    selection: str = "output", scores: Scores | None = None, ridge: float = 1e-4,
                    dtype: str | torch.dtype | None = "auto",
                    neuron_steps: int = NEURON_STEPS,
                    targets: RefitTargets | None = None) -> tuple[nn.Module, Plan, dict[str, float]]:
    """(slim model, its plan, timings in seconds): `select_and_refit`, then the physical pruning of its masked copy
    (in place: the copy is ours), which keeps the copy's record of being cut from `dense`."""
    masked, plan, timings = select_and_refit(dense, batches, counts, selection, scores, ridge, dtype, neuron_steps,
                                             targets)
    start = time.perf_counter()
    kept = plan.kept_layers  # the copy has lost its dropped layers already
    shrink(masked, [plan.heads[i] for i in kept], [plan.neurons[i] for i in kept])
    timings["prune"] = round(time.perf_counter() - start, 3)
    return masked, plan, timings


def select_and_refit(dense: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], counts: Plan,
                     selection: str = "output", scores: Scores | None = None, ridge: float = 1e-4,
                     dtype: str | torch.dtype | None = "auto",
                     neuron_steps: int = NEURON_STEPS,
                     targets: RefitTargets | None = None) -> tuple[nn.Module, Plan, dict[str, float]]:
    """(a dense-width copy of `dense` with the removed units' output columns zeroed and every output projection
    refit, the plan of the kept units, timings in seconds).

    `counts` gives how many heads and neurons each layer keeps (its kept sets are not used) and which layers go
    whole (`dropped`: removed from the copy, the FFN of the kept layer before them refit to stand in for them, as
    `reconstruct` does); `selection`
    "output" picks them by group OBS on the output error, "criterion" as the top of `scores` (unit scores of
    `dense`). `batches` are the calibration data (labels ignored); `dtype` the precision of the layer forwards
    ("auto": bf16 autocast only where the device runs it natively). `dense` is left untouched; `counts` and
    `scores` must have been made on it where they record a weights hash, and the copy records being cut from it.
    `targets`, the dense refit targets recorded on `batches` (as the pipeline's scoring pass records them), spare it
    the dense model's forward, as in `reconstruct`."""
    _check_selection(selection, scores)
    if not isinstance(counts, Plan):
        raise DeepCutsError(f"the iterative method takes the unit counts as a dc.Plan, got {type(counts).__name__}")
    counts.check_model(dense)
    fingerprint = _check_made_on(dense, counts, scores)
    if neuron_steps < 1:
        raise DeepCutsError(f"neuron_steps is how many chunks FFN neurons are removed in, at least 1; got "
                            f"{neuron_steps}")
    device = model_device(dense)
    autocast_dtype = choose("infer", device, dtype).autocast_dtype
    batch_list = _model_inputs(batches, device)
    if targets is not None:
        targets.check(dense, batch_list, autocast_dtype)
    work = copy.deepcopy(dense).eval()
    record_cut(work, dense, fingerprint)
    timings = dict.fromkeys(STEPS, 0.0)
    kept: dict[str, list[list[int]]] = {"heads": [], "neurons": []}
    was_training = dense.training
    dense.eval()
    try:
        with torch.no_grad(), autocast(device, autocast_dtype):
            clock = time.perf_counter()
            dense_calls = _first_layer_calls(dense, batch_list)
            work_calls = list(dense_calls)  # the copy's first layer is called the same way
            changed = False  # whether the copy computes anything differently from the dense model yet
            walk = (targets.walk(set(counts.kept_layers)) if targets is not None
                    else dense_walk(dense, set(counts.kept_layers), dense_calls))
            fam = family(dense)
            pre_norm = fam.pre_norm
            tokens_in_all = real_token_count(batch_list)
            last = counts.kept_layers[-1]  # its output feeds no refit
            for i, layer in enumerate(encoder_layers(work)):
                if i in counts.dropped:  # the copy skips it; the dense model runs it (in `walk`)
                    kept["heads"].append([])
                    kept["neurons"].append([])
                    changed = True
                    continue
                changed = changed or i + 1 in counts.dropped  # its FFN stands in for the removed layers after it
                module = work.get_submodule(layer.prefix)
                work_calls = _at(work_calls, i)  # after removed layers, the calls of this one
                kept_inputs = None if i == last else replay_store(layer, tokens_in_all)
                _, layer_targets = next(walk)
                clock = _add(timings, "forward", clock)
                for kind, role, group, width, count, unit_scores in (
                        ("heads", "attn_out", layer.head_dim, layer.num_heads, len(counts.heads[i]),
                         None if scores is None else scores.heads(i)),
                        ("neurons", "ffn_out", 1, layer.ffn_width, len(counts.neurons[i]),
                         None if scores is None else scores.neurons(i))):
                    if count == width and not changed:  # the dense weights are already the exact fit
                        kept[kind].append(list(range(width)))
                        continue  # (an FFN output left as it is keeps no inputs: the layer then runs again)
                    linear = layer.linears[role]
                    gram, cross = _normal_equations(module, layer, role, work_calls, layer_targets[role], pre_norm,
                                                    kept_inputs if role == "ffn_out" else None)
                    clock = _add(timings, "grams", clock)
                    if selection == "output" or (selection == "output-heads" and kind == "heads"):
                        units = obs_keep(gram, cross, group, count, ridge, None if group > 1 else neuron_steps)
                    else:
                        units = sorted(torch.topk(unit_scores.double().cpu(), count).indices.tolist()) if count else []
                    kept[kind].append(units)
                    clock = _add(timings, "select", clock)
                    _refit_columns(linear, gram, cross, _columns(units, group), ridge)
                    changed = True
                    clock = _add(timings, "refit", clock)
                if i != last:
                    work_calls = next_calls(module, layer, work_calls, kept_inputs, fam)
                clock = _add(timings, "forward", clock)
    finally:
        dense.train(was_training)
    target = {**counts.target, "method": "iterative", "selection": selection}
    plan = Plan(kept["heads"], kept["neurons"], counts.num_heads, counts.ffn_widths, target, counts.dropped)
    remove_layers(work, plan.dropped)
    return work, plan, {k: round(v, 3) for k, v in timings.items()}


def obs_keep(gram: torch.Tensor, cross: torch.Tensor, group: int, keep: int, ridge: float = 1e-4,
             steps: int | None = None) -> list[int]:
    """The `keep` groups of `group` consecutive input columns whose least-squares refit best reproduces the
    targets, by group-OBS backward elimination.

    `gram` (k + 1, k + 1) and `cross` (k + 1, out) are the normal equations of inputs whose last column is the
    bias's ones (never removed); the k inputs form k / group groups. Each round removes the group (or, with
    `steps`, the ceil(removals / steps) groups) of least cost tr(W_g^T [(G^-1)_gg]^-1 W_g), where
    W = G^-1 C, then downdates G^-1 and W to the remaining columns."""
    k = gram.shape[0] - 1
    if k % group:
        raise DeepCutsError(f"{k} input columns do not split into groups of {group}")
    n = k // group
    if keep >= n:
        return list(range(n))
    if keep <= 0:
        return []
    try:
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(ridge_regularised(gram.double().cpu(), ridge)))
    except torch.linalg.LinAlgError as e:
        raise DeepCutsError(f"the least-squares fit of {k} inputs is singular ({first_line(e)}); prune on more (or "
                            "more varied) calibration examples, or with a larger ridge") from e
    w = hinv @ cross.double().cpu()
    alive = torch.arange(n)
    left = n - keep
    chunk = 1 if steps is None else max(1, math.ceil(left / steps))
    offsets = torch.arange(group)
    while left > 0:
        m = alive.numel()
        drop = torch.topk(_removal_costs(hinv, w, m, group), min(chunk, left), largest=False).indices
        stay = torch.ones(m, dtype=torch.bool)
        stay[drop] = False
        out = (drop[:, None] * group + offsets).flatten()
        rest = torch.cat([(torch.nonzero(stay).flatten()[:, None] * group + offsets).flatten(),
                          torch.tensor([m * group])])  # the bias stays last
        h_ss, h_rs = hinv[out[:, None], out], hinv[rest[:, None], out]
        t = torch.linalg.solve(h_ss, h_rs.T).T  # H_rs H_ss^-1 (H_ss is symmetric)
        w = w[rest] - t @ w[out]
        hinv = hinv[rest[:, None], rest] - t @ h_rs.T
        alive = alive[stay]
        left -= drop.numel()
    return sorted(alive.tolist())


def _removal_costs(hinv: torch.Tensor, w: torch.Tensor, m: int, group: int) -> torch.Tensor:
    """Squared-error increase of removing each of the `m` groups alone (and refitting the rest)."""
    if group == 1:
        return w[:m].pow(2).sum(1) / hinv.diagonal()[:m].clamp_min(1e-300)
    idx = torch.arange(m * group).view(m, group)
    blocks = hinv[idx[:, :, None], idx[:, None, :]]  # (m, group, group)
    wg = w[: m * group].view(m, group, -1)
    return (wg * torch.linalg.solve(blocks, wg)).sum((1, 2))


def _columns(units: list[int], group: int) -> list[int]:
    return [u * group + j for u in units for j in range(group)]


def _refit_columns(linear: nn.Linear, gram: torch.Tensor, cross: torch.Tensor, columns: list[int],
                   ridge: float) -> None:
    """Refit `linear` on its input `columns` alone (as `reconstruct` refits a slim model) and zero the rest."""
    k = linear.in_features
    index = torch.tensor([*columns, k], dtype=torch.long)
    solution = ridge_solution(gram[index[:, None], index], cross[index], ridge)
    weight = torch.zeros_like(linear.weight)
    weight[:, index[:-1].to(weight.device)] = solution[:-1].T.to(device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if linear.bias is not None:
        linear.bias.copy_(solution[-1].to(linear.bias.dtype))


def _check_made_on(dense: nn.Module, counts: Plan, scores: Scores | None) -> str:
    """`dense`'s weights hash, after refusing counts or scores recorded as made on other weights (their layers and
    units describe another model then, and so would the units chosen here)."""
    if scores is not None:
        check_layout(dense, scores)
    fingerprint = model_fingerprint(dense)
    recorded = {"the plan's unit counts": counts.target.get("model_fingerprint")}
    if scores is not None:
        recorded[f"the {scores.criterion} scores"] = scores.model_fingerprint
    for what, made_on in recorded.items():
        if made_on is not None and made_on != fingerprint:
            raise DeepCutsError(f"{what} were made on a model with weights {made_on}, not on this dense model "
                                f"(weights {fingerprint}); pass the dense model they were made on, or plan and "
                                "score this one")
    return fingerprint


def _check_selection(selection: str, scores: Scores | None) -> None:
    check_choice("selection", selection, SELECTIONS)
    if selection in ("criterion", "output-heads") and scores is None:
        raise DeepCutsError(f"selection={selection!r} picks units by the criterion's scores; pass scores= "
                            "(the criterion's unit Scores of the dense model)")


def _add(timings: dict[str, float], step: str, since: float) -> float:
    now = time.perf_counter()
    timings[step] += now - since
    return now
