"""`dc.score_run`: scoring in segments of K batches, sharded over processes, checkpointed, resumable,
optionally stopping once the kept set is stable.

Scores are sums over batches and the noise is keyed by the global batch index, so a segment's sum
does not depend on how it is split over ranks, and a resumed run adds the same segments in the same
order as an uninterrupted one (same `checkpoint_every`: bit-identical results).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import DeepCutsError
from ..hashing import update_with_tensors
from ..outputs import write_file
from ..precision import choose_for_scoring
from ..models import model_device
from .criteria import LOSS_ESTIMATE, get_criterion
from .distributed import World, all_reduce_scores, broadcast_flag, current_world, shard
from .engine import default_memory
from .options import ScoreOptions, options_from
from .objective import resolve_objective
from .score import attach_fisher, gives_fisher, loss_estimate, score_many
from .scores import Scores, read_safetensors

FORMAT = "deepcuts-checkpoint/1"
DEFAULT_EVERY = 4  # batches between stability checks when only --until-stable is given
OOM_HALVINGS = 6  # how often an out-of-memory segment is retried with half the memory cap


@dataclass
class ScoreRun:
    """The scores of a run and how it went."""

    scores: dict[str, Scores]
    batches_used: int
    batches_total: int
    stopped_early: bool = False
    resumed_from: int = 0  # batches already summed in the checkpoint the run started from
    changes: list[float] = field(default_factory=list)  # kept-set change at each stability check
    world_size: int = 1
    peak_memory: int | None = None  # bytes, CUDA only


def score_run(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]] | None,
    criteria: Sequence[str] | str,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    until_stable: float | None = None,
    stable_keep: float = 0.5,
    world: World | None = None,
    max_memory: int | None = None,
    progress: bool = True,
    options: ScoreOptions | None = None,
    **score_kwargs,
) -> ScoreRun:
    """Score like `score_many`, in segments of `checkpoint_every` batches, on every rank of the
    initialised process group (each scores its round-robin shard; sums are all-reduced).

    The scoring options come as `score_many`'s keywords or as one `options=ScoreOptions(...)`.

    `checkpoint`: file holding the running sums, written atomically (rank 0) after every segment
    and resumed from when it exists and matches this run (remove it once the result is saved).
    `until_stable`: stop when the top `stable_keep` fraction of every criterion's scores (per
    tensor at weight granularity, over all heads / all neurons at unit granularity) changes by less
    than this fraction of its size between two segments.
    `max_memory` caps the stacked noisy batch; a segment that runs out of GPU memory is retried
    with half the cap (smaller chunks) instead of failing.
    """
    opts = options_from(options, max_memory=max_memory, progress=progress, **score_kwargs)
    names = [get_criterion(c).name for c in ([criteria] if isinstance(criteria, str) else criteria)]
    grad_names = list(dict.fromkeys(n for n in names if get_criterion(n).needs.data))
    free_names = [n for n in dict.fromkeys(names) if n not in grad_names]
    world = world or current_world()
    batch_list = [] if batches is None else list(batches)
    n = len(batch_list)
    every = _segment_size(checkpoint_every, until_stable, checkpoint, n)
    _check_run(stable_keep, until_stable, opts, world, every, n, grad_names)
    cuda = model_device(model).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    free = score_many(model, None, free_names, options=opts) if free_names else {}
    run = ScoreRun({}, 0, n, world_size=world.size)
    # Fisher's loss estimate for data-free criteria comes from a pass of its own when no other needs one; Fisher
    # scores units only, whatever the granularity of the data-free scores (per weight for the paper's masks).
    fisher_only = opts.with_fisher and not grad_names and gives_fisher(batch_list, opts)
    if (grad_names or fisher_only) and batch_list:  # resolved (and announced) once, not per segment
        opts = replace(opts, objective=resolve_objective(model, batch_list, opts.objective).kind)
    segment_names = [LOSS_ESTIMATE.name] if fisher_only else grad_names
    if segment_names:
        _run_segments(model, batch_list, segment_names, run, every, checkpoint, until_stable, stable_keep, world,
                      replace(opts, granularity="unit") if fisher_only else opts)
    if opts.with_fisher and free and run.scores:
        attach_fisher(free.values(), loss_estimate(run.scores))
    run.scores = {name: free[name] if name in free else run.scores[name] for name in dict.fromkeys(names)}
    for name in grad_names:
        run.scores[name].meta.update(world_size=world.size, batches_planned=n, stopped_early=run.stopped_early)
    if cuda:
        run.peak_memory = torch.cuda.max_memory_allocated()
    return run


def _segment_size(every: int | None, until_stable: float | None, checkpoint, n: int) -> int:
    if every is not None:
        if every < 1:
            raise DeepCutsError(f"checkpoint_every must be >= 1 batch, got {every}")
        return every
    return DEFAULT_EVERY if until_stable is not None or checkpoint is not None else max(n, 1)


def _check_run(keep: float, tol: float | None, options: ScoreOptions, world: World, every: int, n: int,
               grad_names: list[str]) -> None:
    if not 0 < keep < 1:
        raise DeepCutsError(f"stable_keep is the kept fraction, in (0, 1); got {keep}")
    if tol is not None and not 0 <= tol <= 1:
        raise DeepCutsError(f"until_stable is a tolerance in [0, 1]; got {tol}")
    if grad_names and n == 0:
        raise DeepCutsError("no calibration batches: the data is empty")
    split = world.size > 1 or every < n
    if split and options.train_mode:
        raise DeepCutsError("reference / train mode draws dropout from one seed per pass, so its scores depend "
                            "on how the batches are split: run it in one process without checkpoints or "
                            "early stopping")


def _run_segments(model, batch_list, names, run: ScoreRun, every, checkpoint, tol, keep, world,
                  options: ScoreOptions) -> None:
    fingerprint = None if checkpoint is None else _fingerprint(model, batch_list, names, every, options)
    device = model_device(model)
    totals, done, changes = None, 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        totals, done, changes = load_checkpoint(checkpoint, fingerprint, names, device)
        run.resumed_from = done
    previous = None if totals is None or tol is None else _kept(totals, keep)
    stable = bool(changes) and tol is not None and changes[-1] < tol
    while done < len(batch_list) and not stable:
        segment = list(range(done, min(done + every, len(batch_list))))
        mine = shard(segment, world)
        local = (_score_fitting(model, [batch_list[i] for i in mine], names, mine, options) if mine
                 else _zeros(model, names, options))
        part = {name: all_reduce_scores(local[name], world) for name in names}
        totals = part if totals is None else {name: totals[name] + part[name] for name in names}
        done = segment[-1] + 1
        if tol is not None:
            kept = _kept(totals, keep)
            if previous is not None:
                changes.append(_change(previous, kept))
                stable = broadcast_flag(changes[-1] < tol, world)
            previous = kept
        if checkpoint is not None and world.is_main:
            save_checkpoint(checkpoint, totals, done, changes, fingerprint)
    run.scores, run.batches_used, run.changes = totals, done, changes
    run.stopped_early = done < len(batch_list)


def _score_fitting(model, batches, names, indices, options: ScoreOptions) -> dict[str, Scores]:
    """`score_many` on one shard; on running out of memory, retried with half the memory cap."""
    cap = options.max_memory
    for _ in range(OOM_HALVINGS + 1):
        try:
            return score_many(model, batches, names, batch_indices=indices, options=replace(options, max_memory=cap))
        except torch.OutOfMemoryError:
            if options.sequential_noise:
                break
            cap = (cap or default_memory(model_device(model))) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise DeepCutsError("scoring ran out of memory even with one noise sample per pass; "
                        "use a smaller --batch-size or --max-length")


def _zeros(model, names, options: ScoreOptions) -> dict[str, Scores]:
    """Zero scores with the right shapes, for a rank that has no batch in a segment."""
    template = score_many(model, None, ["magnitude"], options=replace(options, progress=False))["magnitude"]
    units = template.unit_scores()

    def zero_interactions() -> list[tuple[torch.Tensor, torch.Tensor]]:  # per layer, unit-by-unit matrices
        return [(h.new_zeros(h.numel(), h.numel()), n.new_zeros(n.numel(), n.numel()))
                for h, n in zip(units["heads"], units["neurons"])]

    def zero_units(name: str, weights: bool = True, **extra) -> Scores:
        return Scores({k: torch.zeros_like(v) for k, v in template.items()} if weights else {}, template.layout,
                      {**template.meta, "criterion": name, "batches": 0},
                      heads=[torch.zeros_like(h) for h in units["heads"]],
                      neurons=[torch.zeros_like(x) for x in units["neurons"]], **extra)

    fisher = zero_units(LOSS_ESTIMATE.name, weights=False) if options.with_fisher else None
    crits = {name: get_criterion(name) for name in names}
    return {name: zero_units(name, interactions=zero_interactions() if crit.needs.interactions else None,
                             fisher=None if crit.estimates_loss else fisher)
            for name, crit in crits.items()}


def _kept(totals: Mapping[str, Scores], keep: float) -> torch.Tensor:
    """One boolean per scored entry of every criterion: is it in the kept set, the entries at or above
    the k-th largest score of their group (k = `keep` x group size; ties at the threshold count)."""
    parts = []
    for scores in totals.values():
        if len(scores):
            groups = [v.reshape(-1) for v in scores.values()]
        else:
            units = scores.unit_scores()
            groups = [torch.cat(units["heads"]), torch.cat(units["neurons"])]
        for g in groups:
            k = round(keep * g.numel())
            if k == 0:
                parts.append(torch.zeros(g.numel(), dtype=torch.bool, device=g.device))
            else:  # kthvalue: half the time of topk on large tensors
                parts.append(g >= torch.kthvalue(g.float().cpu(), g.numel() - k + 1).values.to(g.device))
    return torch.cat(parts)


def _change(previous: torch.Tensor, kept: torch.Tensor) -> float:
    """The fraction of the kept set that was replaced."""
    return float((previous ^ kept).sum()) / 2 / max(1, int(kept.sum()))


def _fingerprint(model: nn.Module, batches, names, every: int, options: ScoreOptions) -> str:
    """A hash of everything that determines the running sums: weights, batches, options, segments."""
    h = hashlib.blake2b(digest_size=16)
    device = model_device(model)
    precisions = [choose_for_scoring(device, options.dtype, noise).name
                  for noise in (None, options.noise_std)]  # what "auto" means on this machine
    recorded = options.recorded()
    if recorded["noise_scale"] == "absolute":  # as checkpoints written before relative noise existed: they resume
        del recorded["noise_scale"]
    if options.objective != "labels":  # as checkpoints written before the distillation objective existed
        recorded["objective"] = options.objective
    h.update(json.dumps({"criteria": names, "every": every, "batches": len(batches), "options": recorded,
                         "precisions": precisions}, sort_keys=True).encode())
    update_with_tensors(h, model.state_dict().items())
    update_with_tensors(h, ((f"{i}/{k}", v) for i, b in enumerate(batches) for k, v in sorted(b.items())
                            if torch.is_tensor(v)))
    return h.hexdigest()


def save_checkpoint(path, totals: Mapping[str, Scores], done: int, changes: list[float], fingerprint: str) -> None:
    """Write the running sums atomically (safetensors; the run's state in the header)."""
    from safetensors.torch import save_file

    tensors, headers = {}, {}
    for name, scores in totals.items():
        tensors.update(scores.to_tensors(prefix=f"{name}/"))
        headers[name] = scores.header()
    header = {"format": FORMAT, "fingerprint": fingerprint, "done": str(done), "changes": json.dumps(changes),
              "scores": json.dumps(headers)}
    with write_file(path, overwrite=True, name="checkpoint") as tmp:
        save_file(tensors, str(tmp), metadata=header)


def load_checkpoint(path, fingerprint: str, names: list[str], device) -> tuple[dict[str, Scores], int, list[float]]:
    """(running sums, batches done, kept-set changes) from a checkpoint of this same run."""
    header, tensors = read_safetensors(path, "is not a readable checkpoint; delete it to start over")
    if header.get("format") != FORMAT:
        raise DeepCutsError(f"{path} is not a deepcuts scoring checkpoint; delete it or choose another path")
    if header.get("fingerprint") != fingerprint:
        raise DeepCutsError(f"checkpoint {path} belongs to another run (different model, data, criteria or "
                            "options); delete it to start over, or rerun with the settings that made it")
    try:
        headers = json.loads(header["scores"])
        totals = {name: Scores.from_tensors(tensors, headers[name], prefix=f"{name}/").to(device) for name in names}
        return totals, int(header["done"]), [float(c) for c in json.loads(header["changes"])]
    except (KeyError, ValueError, TypeError) as e:
        raise DeepCutsError(f"checkpoint {path} is damaged (missing {e}); delete it to start over") from e
