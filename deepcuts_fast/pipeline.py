"""Retraining-free structured pruning in one call (after Kwon et al. 2022, on our own scores).

Score units with a criterion and with Fisher (one shared pass where they can share it), spend a
global FLOP budget on the criterion's scores rank-matched to Fisher's loss scale, rearrange each
layer's mask to lower its Fisher loss estimate, prune physically, then refit the kept units'
output projections by least squares against the dense model ("one-shot"). Or, with
`method="iterative"`, keep the search's per-layer counts but choose the units bottom-up by the output
error they leave, refitting each sublayer before the next is chosen (`pruning.iterative`).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .flops import encoder_flops
from .errors import DeepCutsError, check_choice
from .planning import Plan, plan, rearrange as rearrange_plan
from .pruning import prune, reconstruct as reconstruct_slim
from .pruning.iterative import SELECTIONS, iterative_prune
from .scoring import Scores, score_many
from .scoring.criteria import get_criterion

FISHER = "fisher"

METHODS = ("one-shot", "iterative")
"""`prune_without_retraining`'s methods: one-shot (search, rearrange, prune, refit) or iterative."""


def prune_without_retraining(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    keep_flops: float,
    criterion: str = FISHER,
    seq_len: int = 128,
    rearrange: bool = True,
    reconstruct: bool = True,
    unit_method: str = "sum",
    reconstruct_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    dtype: str | torch.dtype | None = "auto",
    min_heads: int = 0,
    min_neurons: int = 0,
    seed: int = 0,
    progress: bool = False,
    scores: Mapping[str, Scores] | None = None,
    method: str = "one-shot",
    selection: str = "output",
) -> tuple[nn.Module, Plan, dict]:
    """(slim model, its plan, info with the search-only plan and per-step timings in seconds).

    `batches` (labelled) calibrate the scores and, unless `reconstruct_batches` is given, the
    reconstruction; `dtype` is the precision of the scoring and reconstruction forwards ("auto": bf16
    autocast only where the model's device runs it natively; see `deepcuts_fast.precision`).
    `scores` ({criterion name: unit Scores}, Fisher's included) skips the scoring pass, so several
    budgets or criteria can share one (`score_many(..., granularity="unit")`); its time is then 0.

    `method` "one-shot" (the default) rearranges the searched mask against Fisher and refits the pruned
    model's output projections at the end (`rearrange=` / `reconstruct=` switch those steps off).
    "iterative" keeps the search's number of heads and neurons per layer but chooses which ones bottom-up,
    sublayer by sublayer, on the partly pruned model: by the output error their removal leaves after a
    least-squares refit (group OBS, `selection="output"`), or by the criterion's unit scores
    (`selection="criterion"`); each output projection is refit before the next sublayer is chosen (on
    `reconstruct_batches` when given). It always refits and never rearranges, so `rearrange=False` or
    `reconstruct=False` with it is an error rather than silently ignored. `info["timings"]` has the
    iterative steps (forward, grams, select, refit) in place of rearrange and reconstruct.
    """
    _check_method(method, selection, rearrange, reconstruct)
    batch_list = list(batches)
    name = get_criterion(criterion).name
    timings: dict[str, float] = {}
    start = time.perf_counter()
    wanted = [name] if name == FISHER else [name, FISHER]
    if scores is None:
        scores = score_many(model, batch_list, wanted, granularity="unit", unit_method=unit_method, seed=seed,
                            dtype=dtype, progress=progress)
    else:
        _check_given(scores, wanted)
    timings["score"] = _lap(start)
    t = time.perf_counter()
    fisher = scores[FISHER]
    reference = None if name == FISHER else fisher
    search_plan = plan(model, scores[name], keep_flops=keep_flops, seq_len=seq_len, reference=reference,
                       min_heads=min_heads, min_neurons=min_neurons)
    timings["search"] = _lap(t)

    def refit_on() -> list:  # the refit data, drawn only when a refit runs
        return batch_list if reconstruct_batches is None else list(reconstruct_batches)

    if method == "iterative":
        slim, final_plan, steps = iterative_prune(model, refit_on(), search_plan, selection=selection,
                                                  scores=scores[name], dtype=dtype)
        timings.update(steps)
    else:
        t = time.perf_counter()
        final_plan = rearrange_plan(search_plan, fisher) if rearrange else search_plan
        timings["rearrange"] = _lap(t)
        t = time.perf_counter()
        slim = prune(model, final_plan)
        timings["prune"] = _lap(t)
        if reconstruct:
            t = time.perf_counter()
            slim = reconstruct_slim(slim, model, refit_on(), dtype=dtype)
            timings["reconstruct"] = _lap(t)
    timings["total"] = _lap(start)
    info = {
        "criterion": name,
        "method": method,
        **({"selection": selection} if method == "iterative" else {}),
        "keep_flops": keep_flops,
        "flops_kept": encoder_flops(slim, seq_len) / encoder_flops(model, seq_len),
        "heads": [len(h) for h in final_plan.heads],
        "neurons": [len(n) for n in final_plan.neurons],
        "search_plan": search_plan,
        "timings": timings,
    }
    return slim, final_plan, info


def _check_method(method: str, selection: str, rearrange: bool, reconstruct: bool) -> None:
    """Refuse an unknown method or selection, and one-shot switches given to the iterative method."""
    check_choice("method", method, METHODS)
    check_choice("selection", selection, SELECTIONS)
    if method == "one-shot" and selection != "output":
        raise DeepCutsError(f"selection={selection!r} chooses units inside method='iterative'; the one-shot method "
                            "keeps the searched (and rearranged) units")
    if method == "iterative" and not (rearrange and reconstruct):
        off = " and ".join(f"{flag}=False" for flag, on in (("rearrange", rearrange), ("reconstruct", reconstruct))
                           if not on)
        raise DeepCutsError(f"method='iterative' chooses units by their output error and always refits, so {off} "
                            "does not apply to it; drop it, or use method='one-shot'")


def _check_given(scores: Mapping[str, Scores], wanted: list[str]) -> None:
    """Given scores must hold the criterion's and Fisher's, under their canonical names."""
    missing = [c for c in wanted if c not in scores]
    if missing:
        raise DeepCutsError(f"scores= lacks {', '.join(missing)} (it has {', '.join(scores) or 'nothing'}); "
                            f"score them with dc.score_many(model, batches, {wanted!r}, granularity='unit')")


def _lap(since: float) -> float:
    return round(time.perf_counter() - since, 3)
