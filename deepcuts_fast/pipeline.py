"""Retraining-free structured pruning in one call (after Kwon et al. 2022, on our own scores).

Score units with a criterion and with Fisher (one shared pass where they can share it), spend a
global FLOP budget on the criterion's scores rank-matched to Fisher's loss scale, rearrange each
layer's mask to lower its Fisher loss estimate, prune physically, then refit the kept units'
output projections by least squares against the dense model ("one-shot"). Or, with
`method="iterative"`, keep the search's per-layer counts but choose the units bottom-up by the output
error they leave, refitting each sublayer before the next is chosen (`pruning.iterative`).
`prune_from_scores` is the other way to a slim model, from unit scores computed earlier (plan, prune,
refit); `check_prune_options` says, before anything loads, which options each way takes.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .flops import encoder_flops
from .errors import DeepCutsError, check_choice
from .planning import Plan, check_budget, plan, rearrange as rearrange_plan
from .planning.budget import BUDGETS
from .models import model_device
from .precision import choose
from .pruning import prune, reconstruct as reconstruct_slim
from .pruning.iterative import SELECTIONS, iterative_prune
from .pruning.refit_targets import RefitTargets
from .scoring import Scores, layer_importance, score_many
from .scoring.criteria import get_criterion
from .scoring.objective import OBJECTIVES
from .scoring.options import Spelling, python_setting

FISHER = "fisher"

DEFAULT_CRITERION = {"one-shot": "cam-cut", "iterative": FISHER}
"""What each method scores with when no criterion is given. One-shot: Cam-Cut, which tied Fisher at keep_flops 0.5
and 0.25 and beat it by 1.0 point at 0.33 (p=0.002) over four calibration draws on the embedded task (see
docs/defaults.md); the iterative method was measured with Fisher only."""

SHARED_TARGETS_MEMORY = 2 << 30
"""The most memory (bytes) the pipeline keeps the refit's targets in when its scoring pass records them on the way
(`RefitTargets`); past it the refit runs its own dense forward: slower, the same result."""

METHODS = ("one-shot", "iterative")
"""`prune_without_retraining`'s methods: one-shot (search, rearrange, prune, refit) or iterative."""

SEARCH_HONOURS = {"keep_params": (None,), "keep_heads": (None,), "keep_neurons": (None,), "speedup": (None,),
                  "scope": (None, "global"), "multiple_of": (None, 1), "allocation": (None, "auto")}
"""`plan` options of `prune_from_scores` and the values `prune_without_retraining`'s search honours (None: not
given): it spends one global keep_flops budget on whole units, allocated against Fisher."""

SCORING_OPTIONS = {"criterion": (None,), "method": (None, "one-shot"), "selection": (None, "output"),
                   "objective": (None,)}
"""Options of `prune_without_retraining` that `prune_from_scores` does not take, and the values it honours: its
scores are given, so it scores with no criterion and plans in one shot."""


def prune_without_retraining(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    keep_flops: float,
    criterion: str | None = None,
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
    objective: str = "auto",
    drop_layers: int | list[int] | None = None,
) -> tuple[nn.Module, Plan, dict]:
    """(slim model, its plan, info with the search-only plan and per-step timings in seconds).

    `batches` (labelled or not) calibrate the scores and, unless `reconstruct_batches` is given, the
    reconstruction; `dtype` is the precision of the scoring and reconstruction forwards ("auto": bf16
    autocast only where the model's device runs it natively; see `deepcuts_fast.precision`).
    `criterion` (None: `DEFAULT_CRITERION` of the method, Cam-Cut for one-shot, Fisher for iterative) ranks the
    units; Fisher's scores are always computed too, as the reference the search and rearrangement use.
    `scores` ({criterion name: unit Scores}, Fisher's included) skips the scoring pass, so several
    budgets or criteria can share one (`score_many(..., granularity="unit")`); its time is then 0.
    `objective` is what the scores' gradients differentiate (`score_many`): "labels", "distill" (the dense model's
    own outputs; no labels or trained head needed) or "auto" (labels when every batch has them and the model a
    trained head, else distill); the refits never read labels. `info["objective"]` says which ran.

    `method` "one-shot" (the default) rearranges the searched mask against Fisher and refits the pruned
    model's output projections at the end (`rearrange=` / `reconstruct=` switch those steps off). Refitting on the
    scoring data (either method), the pipeline records the dense model's refit targets during the scoring pass where
    they fit in `SHARED_TARGETS_MEMORY`, so the refits run only the slim model; `info["refit_targets"]` says whether
    they did ("scoring pass") or ran their own dense forward ("own forward"); the result is the same.
    "iterative" keeps the search's number of heads and neurons per layer but chooses which ones bottom-up,
    sublayer by sublayer, on the partly pruned model: by the output error their removal leaves after a
    least-squares refit (group OBS, `selection="output"`), or by the criterion's unit scores
    (`selection="criterion"`); each output projection is refit before the next sublayer is chosen (on
    `reconstruct_batches` when given). It always refits and never rearranges, so `rearrange=False` or
    `reconstruct=False` with it is an error rather than silently ignored. `info["timings"]` has the
    iterative steps (forward, grams, select, refit) in place of rearrange and reconstruct.

    `drop_layers` removes whole encoder layers inside the same budget (a count: the least important by
    `layer_importance` on `batches`; or a list of layer indices); both methods and the refit handle them.
    """
    _check_method(method, selection, rearrange, reconstruct)
    batch_list = list(batches)
    name = get_criterion(criterion or DEFAULT_CRITERION[method]).name
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}
    start = time.perf_counter()
    wanted = list(dict.fromkeys([name, FISHER]))
    recorder = None
    if scores is None:
        if reconstruct and reconstruct_batches is None and RefitTargets.bytes_needed(
                model, batch_list, outputs=bool(drop_layers)) <= SHARED_TARGETS_MEMORY:
            recorder = RefitTargets(model, outputs=bool(drop_layers))
        scores = score_many(model, batch_list, wanted, granularity="unit", unit_method=unit_method, seed=seed,
                            dtype=dtype, progress=progress, objective=objective,
                            observer=None if recorder is None else recorder.recording)
    else:
        _check_given(scores, wanted)
    timings["score"] = _lap(start)
    t = time.perf_counter()
    fisher = scores[FISHER]  # the reference; for Fisher's own scores the same object, so nothing is rank-matched
    search_plan = plan(model, scores[name], keep_flops=keep_flops, seq_len=seq_len, reference=fisher,
                       min_heads=min_heads, min_neurons=min_neurons, drop_layers=drop_layers,
                       layer_scores=_layer_scores(model, batch_list, drop_layers))
    timings["search"] = _lap(t)

    def refit_on() -> list:  # the refit data, drawn only when a refit runs
        return batch_list if reconstruct_batches is None else list(reconstruct_batches)

    recorded = _recorded(recorder, model, batch_list, dtype)
    if reconstruct:
        info["refit_targets"] = "scoring pass" if recorded is not None else "own forward"
    if method == "iterative":
        slim, final_plan, steps = iterative_prune(model, refit_on(), search_plan, selection=selection,
                                                  scores=scores[name], dtype=dtype, targets=recorded)
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
            slim = reconstruct_slim(slim, model, refit_on(), dtype=dtype, targets=recorded)
            timings["reconstruct"] = _lap(t)
    timings["total"] = _lap(start)
    info = {
        **info,
        "criterion": name,
        "objective": scores[name].meta.get("objective"),
        "method": method,
        **({"selection": selection} if method == "iterative" else {}),
        "rearranged": rearrange and method != "iterative",
        "reconstructed": reconstruct,
        "keep_flops": keep_flops,
        "flops_kept": encoder_flops(slim, seq_len) / encoder_flops(model, seq_len),
        "heads": [len(h) for h in final_plan.heads],
        "neurons": [len(n) for n in final_plan.neurons],
        "dropped_layers": final_plan.dropped,
        "search_plan": search_plan,
        "timings": timings,
    }
    return slim, final_plan, info


def prune_from_scores(
    model: nn.Module,
    scores: Scores,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    reconstruct: bool = True,
    dtype: str | torch.dtype | None = "auto",
    **plan_options: Any,
) -> tuple[nn.Module, Plan, dict]:
    """(slim model, its plan, info) from unit scores computed earlier (`score(..., granularity="unit")`): `plan`
    with `plan_options` (any budget, scope, allocation, speedup, ...; `dtype` is also a speedup's precision),
    `prune`, then the least-squares refit of the output projections on `batches` unless there are none or
    `reconstruct` is False. No scoring, Fisher search or rearrangement: the scores decide. `info` has the scores'
    criterion, whether the slim model was refit, the fraction of the encoder FLOPs kept (at the plan's seq_len) and
    the timings in seconds (search, prune, reconstruct, total)."""
    start = time.perf_counter()
    if batches is not None:
        batches = list(batches)
    if plan_options.get("layer_scores") is None and isinstance(plan_options.get("drop_layers"), int) and batches:
        plan_options["layer_scores"] = _layer_scores(model, batches, plan_options["drop_layers"])
    chosen = plan(model, scores, dtype=dtype, **plan_options)
    timings = {"search": _lap(start)}
    t = time.perf_counter()
    slim = prune(model, chosen)
    timings["prune"] = _lap(t)
    refit = batches is not None and reconstruct
    if refit:
        t = time.perf_counter()
        slim = reconstruct_slim(slim, model, batches, dtype=dtype)
        timings["reconstruct"] = _lap(t)
    timings["total"] = _lap(start)
    seq_len = chosen.target["seq_len"]
    return slim, chosen, {"criterion": scores.criterion, "rearranged": False, "reconstructed": refit,
                          "flops_kept": encoder_flops(slim, seq_len) / encoder_flops(model, seq_len),
                          "timings": timings}


def _recorded(recorder: RefitTargets | None, model: nn.Module, batches: list,
              dtype: str | torch.dtype | None) -> RefitTargets | None:
    """The refit targets the scoring pass recorded, when it recorded them on every batch in the precision the refit
    runs in (it scores in another where that is faster or safer, e.g. fp32 for the noise); else None."""
    if recorder is None or len(recorder.token_counts) != len(batches):
        return None
    return recorder if recorder.autocast_dtype == choose("infer", model_device(model), dtype).autocast_dtype else None


def _layer_scores(model: nn.Module, batches: list, drop_layers) -> list[float] | None:
    """`layer_importance` on `batches` where `drop_layers` is a count of layers to choose; else None."""
    if isinstance(drop_layers, int) and not isinstance(drop_layers, bool) and drop_layers > 0:
        return layer_importance(model, batches)
    return None


def check_prune_options(from_scores: bool, spell: Spelling = python_setting, **options: Any) -> None:
    """Refuse, before any model or data loads, options the chosen way of pruning cannot honour. `options` are
    keyword arguments of `prune_from_scores` (`from_scores`) or `prune_without_retraining`: the first takes every
    budget of `plan` but scores nothing (`SCORING_OPTIONS` do not apply); the second spends one global keep_flops
    budget (`SEARCH_HONOURS`), and its method and selection must agree. Budgets are checked as `plan` checks them;
    `spell` writes the options' names in the messages (the command line passes its flags' spelling)."""
    if from_scores:
        extra = _unhonoured(options, SCORING_OPTIONS)
        if extra:
            raise DeepCutsError(f"{' and '.join(spell(k, v) for k, v in extra)} belongs to the retraining-free "
                                f"pipeline, which scores the model itself, not to a plan from given "
                                f"{spell('scores')}; drop {' and '.join(spell(k) for k, _ in extra)}, or drop "
                                f"{spell('scores')} to run the pipeline")
        check_budget(*(options.get(n) for n in BUDGETS), speedup=options.get("speedup"), spell=spell)
        return
    extra = _unhonoured(options, SEARCH_HONOURS)
    if extra:
        raise DeepCutsError(f"the retraining-free pipeline ({spell('batches')} without {spell('scores')}) spends a "
                            f"{spell('keep_flops')} budget over all layers and does not take "
                            f"{', '.join(spell(k, v) for k, v in extra)}; for those, plan from unit scores computed "
                            f"first ({spell('scores')})")
    if options.get("keep_flops") is None:
        raise DeepCutsError(f"give a budget: {spell('keep_flops')}, the fraction of the encoder's FLOPs the "
                            f"retraining-free pipeline keeps (other budgets plan from unit scores: {spell('scores')})")
    check_budget(keep_flops=options["keep_flops"], spell=spell)
    if options.get("criterion"):
        get_criterion(options["criterion"])
    check_choice(spell("objective"), options.get("objective") or "auto", OBJECTIVES)
    _check_method(options.get("method") or "one-shot", options.get("selection") or "output",
                  options.get("rearrange", True), options.get("reconstruct", True), spell)


def _unhonoured(options: Mapping[str, Any], honoured: Mapping[str, tuple]) -> list[tuple[str, Any]]:
    """(name, value) of each option in `honoured` whose value is not one of the values listed there."""
    return [(name, options.get(name)) for name, values in honoured.items() if options.get(name) not in values]


def _check_method(method: str, selection: str, rearrange: bool, reconstruct: bool,
                  spell: Spelling = python_setting) -> None:
    """Refuse an unknown method or selection, and one-shot switches given to the iterative method."""
    check_choice(spell("method"), method, METHODS)
    check_choice(spell("selection"), selection, SELECTIONS)
    if method == "one-shot" and selection != "output":
        raise DeepCutsError(f"{spell('selection', selection)} chooses units inside {spell('method', 'iterative')}; the "
                            f"one-shot method keeps the searched (and rearranged) units: add "
                            f"{spell('method', 'iterative')}, or drop {spell('selection')}")
    if method == "iterative" and not (rearrange and reconstruct):
        off = " and ".join(spell(name, False) for name, on in (("rearrange", rearrange), ("reconstruct", reconstruct))
                           if not on)
        raise DeepCutsError(f"{spell('method', 'iterative')} chooses units by their output error and always refits, "
                            f"so {off} does not apply to it; drop it, or use {spell('method', 'one-shot')}")


def _check_given(scores: Mapping[str, Scores], wanted: list[str]) -> None:
    """Given scores must hold the criterion's and Fisher's, under their canonical names."""
    missing = [c for c in wanted if c not in scores]
    if missing:
        raise DeepCutsError(f"scores= lacks {', '.join(missing)} (it has {', '.join(scores) or 'nothing'}); "
                            f"score them with dc.score_many(model, batches, {wanted!r}, granularity='unit')")


def _lap(since: float) -> float:
    return round(time.perf_counter() - since, 3)
