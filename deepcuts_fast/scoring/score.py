"""`dc.score` and `dc.score_many`: the passes a set of criteria needs, and the scores that need no data.

The passes follow what each criterion declares (`criterion.needs`): those that need data and no noise
(gradient, cam-cut, cam-cut-shift, fisher) share one clean pass; those with noise (the smooth criteria) one pass
with the N noisy copies stacked in the batch dimension (chunked under a memory cap; deepcuts_fast.scoring.engine);
those that need no data (magnitude, random) none.

Kernels (deepcuts_fast.kernels) by backend: with backend "torch" every probe accumulates its weight
gradient G and PyTorch turns it into scores. With a fused backend (cpp, triton, cuda), a pass with one
criterion whose N noise samples run in one chunk per batch computes each weight score straight from
X and dY in the backward hook (kernel 1, no G kept); otherwise G is accumulated over the chunks and
the fused epilogue runs once per batch. Noise (kernel 3) and first-order statistics (kernel 2)
always go through the chosen backend.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .._version import __version__
from ..arch import ROLES, encoder_layers, prunable_linears
from ..errors import DeepCutsError
from ..hashing import model_fingerprint
from ..kernels import resolve
from ..precision import choose_for_scoring
from ..models import check_token_ids, model_device
from .criteria import LOSS_ESTIMATE, Criterion, get_criterion
from .engine import Observer, ScoringPass, shared_passes
from .layout import LayerLayout, model_layout
from .objective import resolve_objective
from .options import ScoreOptions, options_from, whole_number
from .scores import Scores

Batches = Iterable[Mapping[str, torch.Tensor]]


def score(
    model: nn.Module,
    batches: Batches | None = None,
    criterion: str = "smooth-cut",
    granularity: str = "weight",
    *,
    options: ScoreOptions | None = None,
    batch_indices: Sequence[int] | None = None,
    **keywords,
) -> Scores:
    """Score every prunable weight (or unit) of `model` with one criterion; the options as in `score_many`."""
    opts = options_from(options, granularity=granularity, **keywords)
    return _score_with(model, batches, [criterion], opts, batch_indices)[get_criterion(criterion).name]


def score_many(
    model: nn.Module,
    batches: Batches | None,
    criteria: Sequence[str],
    granularity: str = "weight",
    unit_method: str = "sum",
    noise_samples: int = 10,
    noise_std: float | None = None,
    noise_scale: str | None = None,
    shift: float = 10.0,
    backend: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    seed: int = 0,
    progress: bool = True,
    max_memory: int | None = None,
    train_mode: bool = False,
    sequential_noise: bool = False,
    include_padding: bool = False,
    with_fisher: bool = True,
    reference: bool = False,
    batch_indices: Sequence[int] | None = None,
    options: ScoreOptions | None = None,
    objective: str = "auto",
    observer: Observer | None = None,
) -> dict[str, Scores]:
    """Score `model` with several criteria, sharing forward/backward passes between them.

    The options may come as keywords or as one `options=ScoreOptions(...)` (see there).
    The smooth criteria's noise: `noise_scale="relative"` (default) adds noise of `noise_std` (default
    0.15) times each prunable Linear's output standard deviation over the real tokens;
    `noise_scale="absolute"` adds noise of `noise_std` itself (default 1e-3, the paper's setting).
    `reference=True` reproduces the original DeepCuts code: train mode (dropout on), the N noise
    samples as N sequential passes, and activation means over padding tokens too. `backend` picks
    the kernels (see deepcuts_fast.kernels.backends); every backend gives the same scores.
    `batch_indices` gives each batch's position in the whole calibration set (default 0, 1, ...),
    which keys its noise: a shard of the batches then draws the same noise as the full run.
    `dtype` "auto" autocasts to bf16 only where the device runs it natively, and keeps the noisy
    pass in fp32 when bf16 would round its noise away (`deepcuts_fast.precision.choose_for_scoring`);
    each result's `meta["dtype"]` and `meta["dtype_reason"]` say what ran.
    With `batches` and `with_fisher`, every result carries Fisher's unit scores from the clean pass
    (`Scores.fisher`), which `plan` allocates its budget by.
    `objective` picks what the gradients differentiate: "labels", "distill" (the dense model's own outputs, no
    labels or trained head needed) or "auto" (see `ScoreOptions`); each result's `meta["objective"]` says which ran.
    `observer` (see `engine.Observer`) is entered around each batch's forward of the clean pass when it runs in eval
    mode, the one forward per batch that is the plain model's: the pipeline records the refit's targets there.
    """
    opts = options_from(options, granularity=granularity, unit_method=unit_method, noise_samples=noise_samples,
                        noise_std=noise_std, noise_scale=noise_scale, shift=shift, backend=backend, dtype=dtype,
                        seed=seed, progress=progress, max_memory=max_memory, train_mode=train_mode,
                        sequential_noise=sequential_noise, include_padding=include_padding, with_fisher=with_fisher,
                        reference=reference, objective=objective)
    return _score_with(model, batches, criteria, opts, batch_indices, observer)


def _score_with(model: nn.Module, batches: Batches | None, criteria: Sequence[str], options: ScoreOptions,
               batch_indices: Sequence[int] | None = None, observer: Observer | None = None) -> dict[str, Scores]:
    """`score_many` once its options are gathered: the data-free scores, then one clean and one noisy pass at most."""
    if not isinstance(model, nn.Module):
        raise DeepCutsError(f"model must be a torch model (e.g. dc.load_model(...)), got {type(model).__name__}")
    crits = _unique_criteria(criteria)
    options.check_criteria(crits)
    layout = model_layout(model)
    check_finite_weights(model)
    device = model_device(model)
    backend = resolve(options.backend, device)
    meta_base = {**_model_meta(model, options), "backend": backend}
    results: dict[str, Scores] = {}
    for crit in (c for c in crits if not c.needs.data):
        results[crit.name] = _data_free_scores(model, layout, crit, options, meta_base)
    with_data = [c for c in crits if c.needs.data]
    batch_list = None if batches is None else list(batches)
    if options.with_fisher and not any(c.estimates_loss for c in crits) and (with_data or
                                                                              gives_fisher(batch_list, options)):
        with_data.append(LOSS_ESTIMATE)
    if with_data:
        batch_list = _materialise(model, batch_list)
        objective = resolve_objective(model, batch_list, options.objective)
        indices = list(range(len(batch_list))) if batch_indices is None else _indices(batch_indices)
        if len(indices) != len(batch_list):
            raise DeepCutsError(f"batch_indices has {len(indices)} entries for {len(batch_list)} batches")
        for noisy, group in shared_passes(with_data):
            # relative noise_std is a fraction of the activations' scale, which is what the check compares to
            precision = choose_for_scoring(device, options.dtype, options.noise_std if noisy else None)
            meta = {**meta_base, "dtype": precision.name, "dtype_reason": precision.reason}
            watch = observer if not noisy and not options.train_mode else None
            scoring = ScoringPass(model, layout, group, noisy, options, precision.autocast_dtype, backend, objective,
                                  watch)
            results.update(scoring.run(batch_list, indices, meta))
    estimate = loss_estimate(results)
    if options.with_fisher and estimate is not None:
        attach_fisher([results[c.name] for c in crits], estimate)
    return {c.name: results[c.name] for c in crits}


def check_finite_weights(model: nn.Module) -> None:
    """Refuse, naming the first bad parameter, a model with NaN or inf weights: its scores would be NaN too, and
    every plan made from them meaningless (one check per parameter, one device sync in all)."""
    named = list(model.named_parameters())
    if not named:
        return
    device = named[0][1].device
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).all().to(device) for _, p in named]).tolist()
    for (name, _), ok in zip(named, finite):
        if not ok:
            raise DeepCutsError(f"parameter {name} of the model holds NaN or inf values, so nothing can be scored; "
                                "the model is damaged (a diverged fine-tune or a corrupt file?): reload or retrain it")


def _indices(batch_indices: Sequence[int]) -> list[int]:
    """`batch_indices` as ints >= 0 (a float or a string is a mistake, not a position)."""
    if isinstance(batch_indices, (str, bytes)) or not isinstance(batch_indices, Iterable):
        raise DeepCutsError(f"batch_indices must be a list of ints, got {type(batch_indices).__name__}")
    return [whole_number("batch_indices entry", i, minimum=0) for i in batch_indices]


def loss_estimate(results: Mapping[str, Scores]) -> Scores | None:
    """The loss estimate among `results` ({criterion name: Scores}): the scores of the criterion that is one
    (Fisher's), else the one the first result carries; None when there is none."""
    found = next((s for s in results.values() if s.estimates_loss), None)
    if found is None and results:
        return next(iter(results.values())).fisher
    return found


def attach_fisher(scores: Iterable[Scores], fisher: Scores) -> None:
    """Give every result but `fisher` itself Fisher's unit scores of the same pass (without the interactions)."""
    diagonal = Scores({}, fisher.layout, fisher.meta, heads=fisher.unit_scores()["heads"],
                      neurons=fisher.unit_scores()["neurons"])
    for s in scores:
        if s is not fisher:
            s.fisher = diagonal


def _unique_criteria(names: Sequence[str] | str) -> list[Criterion]:
    if isinstance(names, str):
        names = [names]
    out: list[Criterion] = []
    for n in names:
        c = get_criterion(n)
        if c not in out:
            out.append(c)
    if not out:
        raise DeepCutsError("no criterion given")
    return out


def _model_meta(model: nn.Module, options: ScoreOptions) -> dict:
    prunable = sum(p.numel() for lin in prunable_linears(model).values() for p in lin.parameters())
    prefixes = tuple(layer.prefix + "." for layer in encoder_layers(model))
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))
    return {
        **options.recorded(),
        "model_type": model.config.model_type,
        "model_name": getattr(model.config, "_name_or_path", "") or model.config.model_type,
        "model_fingerprint": model_fingerprint(model),
        "total_params": sum(p.numel() for p in model.parameters()),
        "prunable_params": prunable,
        "encoder_params": encoder,
        "version": __version__,
    }


def labelled(batches: list | None) -> bool:
    """Whether there are batches and all carry labels."""
    return bool(batches) and all("labels" in b for b in batches)


def gives_fisher(batches: list | None, options: ScoreOptions) -> bool:
    """Whether Fisher's loss estimate can come from `batches` for data-free criteria: labelled ones, or any with an
    objective other than labels (distillation needs none)."""
    return labelled(batches) or (bool(batches) and options.objective != "labels")


def _materialise(model: nn.Module, batches: Batches | None) -> list[Mapping[str, torch.Tensor]]:
    if batches is None:
        raise DeepCutsError("gradient-based criteria need calibration batches; pass batches=...")
    batch_list = list(batches)
    if not batch_list:
        raise DeepCutsError("no calibration batches: the data is empty")
    for i, b in enumerate(batch_list):
        if not isinstance(b, Mapping):
            raise DeepCutsError(f"calibration batch {i} is a {type(b).__name__}, not a mapping of tensors; pass "
                                "batches like dc.data.make_batches makes them ({'input_ids': ..., 'labels': ...})")
        check_token_ids(model, b, f"calibration batch {i}")
    return batch_list


def _data_free_scores(model: nn.Module, layout: list[LayerLayout], crit: Criterion, options: ScoreOptions,
                      meta_base: dict) -> Scores:
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(options.seed)
    weights = {}
    for layer in layout:
        for r in ROLES:
            for kind in ("weight", "bias"):
                name = f"{layer.names[r]}.{kind}"
                if name in params:
                    weights[name] = crit.data_free_score(params[name].detach(), g)
    scores = Scores(weights, layout, {**meta_base, "criterion": crit.name, "batches": 0})
    if options.unit:
        units = scores.unit_scores()
        return Scores({}, layout, scores.meta, heads=units["heads"], neurons=units["neurons"])
    return scores
