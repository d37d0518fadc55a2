"""`deepcuts score`: one criterion's scores (heads and FFN neurons by default, or weights) from calibration batches
of --data, saved to a safetensors file; resumable from checkpoints, early stopping, several processes (torchrun)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ..errors import DeepCutsError
from ..outputs import check_file, same_path
from . import loading
from .parsing import OBJECTIVE_HELP, Command, add_common, add_noise_flags, criterion_help, parse_size


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `score` sub-parser and its flags."""
    from ..scoring.objective import OBJECTIVES

    s = sub.add_parser("score", help="score every prunable head and FFN neuron (or weight) with a criterion; "
                                     "writes a safetensors file")
    add_common(s)
    s.add_argument("--split", default="train", help="data split to score on")
    s.add_argument("--criterion", default="smooth-cut", metavar="NAME", help=criterion_help("what to score with"))
    s.add_argument("--granularity", choices=("unit", "weight"), default="unit",
                   help="unit (default): one score per attention head and FFN neuron, a small file that "
                        "`deepcuts prune --scores` plans from; weight: one score per weight, for the paper-style "
                        "unstructured masks (dc.Scores.masks), a large file (about 42 MB for MiniLM)")
    s.add_argument("--unit-method", choices=("sum", "first-order"), default="sum",
                   help="unit granularity: sum the unit's weight scores, or |sum A*dA| at the unit (no weight "
                        "gradients)")
    s.add_argument("--batches", type=int, default=8, help="number of calibration batches")
    s.add_argument("--objective", choices=OBJECTIVES, default="auto", help=OBJECTIVE_HELP)
    s.add_argument("--noise-samples", type=int, default=10, help="noisy copies per batch (smooth criteria)")
    add_noise_flags(s, reference=True)
    s.add_argument("--seed", type=int, default=0, help="seed of the batch order and the noise")
    s.add_argument("--reference", action="store_true",
                   help="reproduce the original code: train mode, sequential noise passes, padding included, "
                        "absolute noise unless --noise-scale says otherwise")
    s.add_argument("--device", default="cpu",
                   help="cpu or cuda (under torchrun, cuda means each rank's cuda:LOCAL_RANK)")
    s.add_argument("--max-memory", type=parse_size, default=None, metavar="SIZE",
                   help="cap on the stacked noisy batch, e.g. 2GiB or 500MB; runs that would not fit use smaller "
                        "chunks (default: half the free GPU memory, 4 GiB on CPU); on GPU the peak is reported")
    s.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                   help="sum the scores in segments of K batches and save the running sums after each segment to "
                        "--checkpoint (default OUT.ckpt); a rerun of the same command resumes from it; it is "
                        "removed once OUT is written")
    s.add_argument("--checkpoint", default=None, metavar="FILE", help="checkpoint file (implies checkpointing)")
    s.add_argument("--until-stable", type=float, nargs="?", const=0.01, default=None, metavar="TOL",
                   help="stop early once the kept set (top --stable-keep of the scores) changes by less than TOL "
                        "(default 0.01) between segments; --batches is then the maximum, checked every "
                        "--checkpoint-every batches (default 4)")
    s.add_argument("--stable-keep", type=float, default=0.5, metavar="F",
                   help="kept fraction whose stability --until-stable watches")
    s.add_argument("--out", required=True, help="output .safetensors file (under torchrun only rank 0 writes it)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return s


def run(args: argparse.Namespace) -> int:
    """Score --batches of --data with --criterion and write --out; prints what was written."""
    from dataclasses import replace

    from ..data import make_batches
    from ..models import has_task_head
    from ..scoring import ScoreOptions, get_criterion, score_run
    from ..scoring.distributed import main_first, process_group

    out = Path(args.out)
    inputs = {"--model": args.model, "--data": args.data}
    check_file(out, inputs, overwrite=args.overwrite, name="--out", flag="--overwrite")
    criterion = get_criterion(args.criterion)  # fail on a misspelt name or a bad option before loading anything
    options = ScoreOptions(granularity=args.granularity, unit_method=args.unit_method, noise_samples=args.noise_samples,
                           noise_std=args.noise_std, noise_scale=args.noise_scale, dtype=args.dtype, seed=args.seed,
                           reference=args.reference, max_memory=args.max_memory, progress=not args.quiet,
                           objective=args.objective)
    options.check_criteria([criterion])
    checkpoint = args.checkpoint or (f"{out}.ckpt" if args.checkpoint_every else None)
    if checkpoint is not None:
        _check_checkpoint(checkpoint, out, inputs)
    with process_group(args.device) as world, loading.output_locks([out, checkpoint], world.is_main):
        device = _score_device(args.device, world.size)
        with main_first(world):  # the embedded model is fine-tuned and cached once, by rank 0
            model, tokenizer, dataset = loading.model_and_data(args, args.split, head_free=not criterion.needs.data,
                                                               labels=args.objective == "labels")
        if not has_task_head(model.config):  # a bare encoder's data-free scores: no Fisher via its random head
            options = replace(options, with_fisher=False)
        model.to(device)
        batches = make_batches(dataset, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                               shuffle=True, seed=args.seed, limit=args.batches * args.batch_size)
        start = time.perf_counter()
        result = score_run(model, batches, [criterion.name], checkpoint=checkpoint,
                           checkpoint_every=args.checkpoint_every, until_stable=args.until_stable,
                           stable_keep=args.stable_keep, world=world,
                           options=replace(options, progress=options.progress and world.is_main))
        seconds = time.perf_counter() - start
        if not world.is_main:
            return 0
        scores = result.scores[criterion.name]
        scores.save(out, overwrite=args.overwrite)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    _print_summary(args, out, scores, result, seconds)
    return 0


def _print_summary(args: argparse.Namespace, out: Path, scores, result, seconds: float) -> None:
    """Print what `deepcuts score` wrote, from how many batches and processes, as JSON or as one line."""
    summary = {"out": str(out), "criterion": scores.criterion, "granularity": scores.granularity,
               "dtype": scores.meta.get("dtype"), "dtype_reason": scores.meta.get("dtype_reason"),
               "batches": result.batches_used, "batches_max": result.batches_total,
               "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
               "processes": result.world_size, "seconds": round(seconds, 3)}
    if result.peak_memory is not None:
        summary["peak_memory_mib"] = round(result.peak_memory / 2**20, 1)
    if args.json:
        print(json.dumps(summary))
        return
    notes = [f"{result.world_size} processes"] if result.world_size > 1 else []
    if result.resumed_from:
        notes.append(f"resumed after {result.resumed_from}")
    if result.stopped_early:
        notes.append(f"stable after {result.batches_used} of {result.batches_total}")
    if result.peak_memory is not None:
        notes.append(f"peak GPU memory {summary['peak_memory_mib']:.0f} MiB")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"wrote {out}: {scores.criterion} scores ({scores.granularity}, {summary['dtype']}) from "
          f"{result.batches_used} batches{extra} in {seconds:.1f}s")


def _check_checkpoint(checkpoint: str, out: Path, inputs: dict) -> None:
    """Refuse a --checkpoint that is --out (it is deleted once OUT is written) or an input; an existing
    checkpoint is resumed from, so it needs no --overwrite."""
    if same_path(checkpoint, out):
        raise DeepCutsError(f"--checkpoint {checkpoint} is the --out file, and the checkpoint is deleted once the "
                            "scores are written: give another --checkpoint path (default: OUT.ckpt)")
    check_file(checkpoint, inputs, overwrite=True, name="--checkpoint")


def _score_device(name: str, world_size: int):
    """The torch device to score on; under torchrun, cuda is this rank's GPU."""
    import torch

    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise DeepCutsError(f"unknown --device {name!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeepCutsError("--device cuda was given but no CUDA GPU is available; use --device cpu")
    if name == "cuda" and world_size > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


COMMAND = Command("score", add_parser, run, position=1)
