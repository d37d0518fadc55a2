"""The `deepcuts` command line: score, eval, prune, bench and run (the main job on the embedded default).

Over 300 lines on purpose: `build_parser` defines every flag in one place and the `cmd_*` functions
below read them; splitting the commands into modules would separate the flags from their readers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .atomic import check_writable
from .errors import DeepCutsError, first_line

DTYPE_HELP = ("precision: auto (default) = the fastest dtype this machine runs natively (bf16 on GPUs and CPUs "
              "with native bf16, else fp32), as deepcuts_fast.precision decides; $DEEPCUTS_PRECISION overrides it")


def build_parser() -> argparse.ArgumentParser:
    """The `deepcuts` parser with every sub-command and flag."""
    from .benchmarking import add_bench_command
    from .job.config import JobConfig
    from .precision import CHOICES as DTYPE_CHOICES
    from .task import TASK_MODEL_ALIAS

    parser = argparse.ArgumentParser(prog="deepcuts", description="DeepCuts pruning scores for BERT-family encoders.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, data_required=True):
        p.add_argument("--model", default=TASK_MODEL_ALIAS,
                       help="model folder or hub name; 'minilm' = packaged MiniLM (no task head), "
                            f"'{TASK_MODEL_ALIAS}' = it fine-tuned on the embedded data (default; cached)")
        p.add_argument("--data", required=data_required, default=None if data_required else "rotten_tomatoes",
                       help="'rotten_tomatoes' (embedded), a CSV/TSV/JSON(L) file with text[,text_pair],label, "
                            "or a datasets hub name")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--max-length", type=int, default=64)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)

    s = sub.add_parser("score", help="score every prunable weight with a criterion; writes a safetensors file")
    common(s)
    s.add_argument("--split", default="train")
    s.add_argument("--criterion", default="smooth-cut")
    s.add_argument("--granularity", choices=("weight", "unit"), default="weight")
    s.add_argument("--unit-method", choices=("sum", "first-order"), default="sum")
    s.add_argument("--batches", type=int, default=8, help="number of calibration batches")
    s.add_argument("--noise-samples", type=int, default=10)
    s.add_argument("--noise-std", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--reference", action="store_true",
                   help="reproduce the original code: train mode, sequential noise passes, padding included")
    s.add_argument("--device", default="cpu",
                   help="cpu or cuda (under torchrun, cuda means each rank's cuda:LOCAL_RANK)")
    s.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
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
                   help="kept fraction whose stability --until-stable watches (default 0.5)")
    s.add_argument("--out", required=True, help="output .safetensors file (under torchrun only rank 0 writes it)")

    e = sub.add_parser("eval", help="accuracy / loss of a model on a data split")
    common(e)
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N examples only")

    p = sub.add_parser("prune", help="plan from a scores file and write a physically smaller model folder")
    p.add_argument("--model", default=TASK_MODEL_ALIAS, help="the model the scores were computed on (folder or alias)")
    p.add_argument("--scores", required=True, help="scores file written by `deepcuts score`")
    for target in ("flops", "params", "heads", "neurons"):
        p.add_argument(f"--keep-{target}", type=float, default=None, help=f"fraction of {target} to keep")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length the FLOP budget is counted at")
    p.add_argument("--scope", choices=("global", "layer"), default="global")
    p.add_argument("--min-heads", type=int, default=0, help="heads kept in every layer at least")
    p.add_argument("--min-neurons", type=int, default=0, help="FFN neurons kept in every layer at least")
    p.add_argument("--multiple-of", type=int, default=1, help="round FFN widths to a multiple (e.g. 8 or 64)")
    p.add_argument("--reconstruct", metavar="DATA", default=None,
                   help="after pruning, refit each layer's output projections by least squares so the slim layer "
                        "reproduces the dense one on this data's train split (e.g. rotten_tomatoes or a CSV)")
    p.add_argument("--reconstruct-examples", type=int, default=512,
                   help="calibration examples for --reconstruct (fewer over-fit the FFN output projections)")
    p.add_argument("--max-length", type=int, default=64, help="token length of the --reconstruct examples")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP + " (--reconstruct forwards)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")

    add_bench_command(sub)

    r = sub.add_parser("run", help="the main job: fine-tune (cached), score every criterion, paper mode, structured "
                                   "mode with latency and reconstruction, mask analysis, report.md; resumable")
    common(r, data_required=False)
    quick, full = JobConfig.quick(), JobConfig.full()
    r.add_argument("--quick", action="store_true",
                   help=f"reduced grid ({len(quick.criteria)} criteria, {quick.calibration_batches} calibration "
                        f"batches, keep_flops {', '.join(f'{k:g}' for k in quick.keep_flops)}, "
                        "no recovery fine-tuning)")
    r.add_argument("--out", default=None, help="output folder (default runs/quick or runs/full); a rerun into the "
                                                "same folder reuses the steps that finished")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--calibration-batches", type=int, default=None,
                   help=f"default {quick.calibration_batches} (--quick) or {full.calibration_batches}")
    r.add_argument("--recovery-epochs", type=float, default=None,
                   help="recovery fine-tuning of the best slim model per FLOP budget (default "
                        f"{quick.structured_recovery_epochs:g} with --quick, else {full.structured_recovery_epochs:g})")
    r.add_argument("--latency-batch", type=int, default=full.latency_batch,
                   help="batch size of the latency measurements")
    r.add_argument("--latency-seq", type=int, default=full.latency_seq,
                   help="sequence length of the latency measurements and of the FLOP budgets")
    r.add_argument("--fresh", action="store_true", help="recompute every step instead of reusing finished ones")
    return parser


def _size(text: str) -> int:
    """Bytes from '2GiB', '500MB', '1.5G' or a plain number of bytes."""
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
             "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
    number = text.strip().rstrip("bBiIkKmMgGtT")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 2GiB, 500MB or 1000000") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a memory cap must be at least 1 byte")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Run `deepcuts`; the exit status is 2 for a DeepCutsError, 1 for an unexpected failure, 130 for Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_transformers()
    try:
        from .benchmarking import run_bench_command

        commands = {"score": cmd_score, "eval": cmd_eval, "prune": cmd_prune, "bench": run_bench_command,
                    "run": cmd_run}
        return commands[args.command](args)
    except DeepCutsError as e:
        if args.debug:
            raise
        print(f"deepcuts: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepcuts: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure still ends in one line; --debug shows where
        if args.debug:
            raise
        print(f"deepcuts: error: {type(e).__name__}: {first_line(str(e))} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _quiet_transformers() -> None:
    """Silence transformers' info messages and progress bars: the commands print their own."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _classifier(args, num_labels: int | None):
    """(model, tokenizer) for the --model of score, eval and prune: a bare encoder gets a fresh random head
    with `num_labels` outputs (2 when None), unlike `deepcuts run`, which fine-tunes it first."""
    from .task import TASK_MODEL_ALIAS, task_model

    if args.model == "minilm":
        print("deepcuts: note: the packaged MiniLM has no task head, so a random one is used; "
              f"use --model {TASK_MODEL_ALIAS} for the fine-tuned model", file=sys.stderr)
    task = task_model(args.model, on_bare="random-head", num_labels=num_labels, progress=not args.quiet)
    return task.model, task.tokenizer


def _model_and_data(args, split: str):
    """(model, tokenizer, dataset) for the --model / --data of a command, labels checked."""
    from .data import check_labels, load_dataset

    dataset = load_dataset(args.data, split)
    model, tokenizer = _classifier(args, dataset.num_labels)
    check_labels(dataset, model.config.num_labels)
    return model, tokenizer, dataset


def cmd_score(args) -> int:
    from dataclasses import replace

    from .data import make_batches
    from .scoring import ScoreOptions, get_criterion, score_run
    from .scoring.distributed import main_first, process_group

    out = Path(args.out)
    check_writable(out)
    criterion = get_criterion(args.criterion)  # fail on a misspelt name or a bad option before loading anything
    options = ScoreOptions(granularity=args.granularity, unit_method=args.unit_method, noise_samples=args.noise_samples,
                           noise_std=args.noise_std, dtype=args.dtype, seed=args.seed, reference=args.reference,
                           max_memory=args.max_memory, progress=not args.quiet)
    options.check_criteria([criterion])
    if args.batches < 1:
        raise DeepCutsError("--batches must be >= 1")
    checkpoint = args.checkpoint or (f"{out}.ckpt" if args.checkpoint_every else None)
    with process_group(args.device) as world:
        device = _score_device(args.device, world.size)
        with main_first(world):  # the embedded model is fine-tuned and cached once, by rank 0
            model, tokenizer, dataset = _model_and_data(args, args.split)
        model.to(device)
        batches = make_batches(dataset, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                               shuffle=True, seed=args.seed, limit=args.batches * args.batch_size)
        start = time.perf_counter()
        run = score_run(model, batches, [criterion.name], checkpoint=checkpoint,
                        checkpoint_every=args.checkpoint_every, until_stable=args.until_stable,
                        stable_keep=args.stable_keep, world=world,
                        options=replace(options, progress=options.progress and world.is_main))
        seconds = time.perf_counter() - start
        if not world.is_main:
            return 0
        scores = run.scores[criterion.name]
        scores.save(out)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    summary = {"out": str(out), "criterion": scores.criterion, "granularity": scores.granularity,
               "dtype": scores.meta.get("dtype"), "dtype_reason": scores.meta.get("dtype_reason"),
               "batches": run.batches_used, "batches_max": run.batches_total, "stopped_early": run.stopped_early,
               "resumed_from": run.resumed_from, "processes": run.world_size, "seconds": round(seconds, 3)}
    if run.peak_memory is not None:
        summary["peak_memory_mib"] = round(run.peak_memory / 2**20, 1)
    if args.json:
        print(json.dumps(summary))
        return 0
    notes = [f"{run.world_size} processes"] if run.world_size > 1 else []
    if run.resumed_from:
        notes.append(f"resumed after {run.resumed_from}")
    if run.stopped_early:
        notes.append(f"stable after {run.batches_used} of {run.batches_total}")
    if run.peak_memory is not None:
        notes.append(f"peak GPU memory {summary['peak_memory_mib']:.0f} MiB")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"wrote {out}: {scores.criterion} scores ({scores.granularity}, {summary['dtype']}) from "
          f"{run.batches_used} batches{extra} in {seconds:.1f}s")
    return 0


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


def cmd_eval(args) -> int:
    """`deepcuts eval`: accuracy / loss (or MSE for regression) on a split, and the dtype it ran in."""
    from .data import make_batches
    from .precision import choose
    from .models import model_device
    from .train import evaluate

    model, tokenizer, dataset = _model_and_data(args, args.split)
    batches = make_batches(dataset, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = evaluate(model, batches, dtype=args.dtype, progress=not args.quiet)
    dtype = choose("infer", model_device(model), args.dtype).name
    if args.json:
        print(json.dumps({**result.to_dict(), "dtype": dtype}))
    else:
        metrics = {**{k: v for k, v in result.to_dict().items() if v is not None}, "dtype": dtype}
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0


def cmd_prune(args) -> int:
    """`deepcuts prune`: plan from a scores file, prune (and optionally reconstruct), save the slim folder."""
    from . import planning
    from .flops import encoder_flops, encoder_unit_params
    from .pruning import prune, reconstruct, save_pretrained
    from .scoring import Scores

    out = Path(args.out)
    check_writable(out, folder=True)
    if out.exists() and not args.overwrite:
        raise DeepCutsError(f"{out} already exists; choose a new folder or pass --overwrite")
    scores = Scores.load(args.scores)
    model, tokenizer = _classifier(args, None)
    plan = planning.plan(model, scores, keep_flops=args.keep_flops, keep_params=args.keep_params,
                         keep_heads=args.keep_heads, keep_neurons=args.keep_neurons, seq_len=args.seq_len,
                         scope=args.scope, min_heads=args.min_heads, min_neurons=args.min_neurons,
                         multiple_of=args.multiple_of)
    slim = prune(model, plan)
    if args.reconstruct:
        slim = reconstruct(slim, model, _reconstruction_batches(args, tokenizer), dtype=args.dtype)
    save_pretrained(slim, out, tokenizer=tokenizer, plan=plan, overwrite=args.overwrite)
    summary = {
        "out": str(out),
        "reconstructed_on": args.reconstruct,
        "heads": [len(h) for h in plan.heads],
        "ffn": [len(n) for n in plan.neurons],
        "params": sum(p.numel() for p in slim.parameters()),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "unit_params_kept": encoder_unit_params(slim) / encoder_unit_params(model),
        "flops_kept": encoder_flops(slim, args.seq_len) / encoder_flops(model, args.seq_len),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(plan.summary())
        print(f"kept {summary['flops_kept']:.1%} of encoder FLOPs at seq {args.seq_len}, "
              f"{summary['params']:,} of {summary['dense_params']:,} params; wrote {out}")
    return 0


def _reconstruction_batches(args, tokenizer) -> list:
    """Shuffled, seeded train-split batches of the --reconstruct data (labels are not needed)."""
    from .data import load_dataset, make_batches

    if args.reconstruct_examples < 1:
        raise DeepCutsError(f"--reconstruct-examples must be >= 1, got {args.reconstruct_examples}")
    return make_batches(load_dataset(args.reconstruct, "train"), tokenizer, batch_size=32, max_length=args.max_length,
                        shuffle=True, seed=0, limit=args.reconstruct_examples)


def cmd_run(args) -> int:
    """`deepcuts run`: the main job on --model (a bare encoder is fine-tuned first) and --data, into --out."""
    import shutil

    from .data import check_labels, load_dataset, make_batches
    from .job import JobConfig, MainJob
    from .task import task_model

    out = Path(args.out or ("runs/quick" if args.quick else "runs/full"))
    check_writable(out, folder=True)
    overrides = {"batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed,
                 "dtype": args.dtype, "latency_batch": int(_positive(args.latency_batch, "--latency-batch")),
                 "latency_seq": int(_positive(args.latency_seq, "--latency-seq"))}
    if args.calibration_batches is not None:
        overrides["calibration_batches"] = _positive(args.calibration_batches, "--calibration-batches")
    if args.recovery_epochs is not None:
        overrides["structured_recovery_epochs"] = _positive(args.recovery_epochs, "--recovery-epochs", zero=True)
    config = (JobConfig.quick if args.quick else JobConfig.full)(**overrides)
    log = (lambda *a: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    dataset = load_dataset(args.data, "train")
    # The fine-tune of a bare encoder follows "auto" (or $DEEPCUTS_PRECISION), not --dtype, so every
    # command that names it (score, eval, prune, run) sees the same cached model.
    task = task_model(args.model, on_bare="fine-tune", data=args.data, num_labels=dataset.num_labels,
                      progress=not args.quiet)
    check_labels(dataset, task.model.config.num_labels)
    draw = lambda seed: make_batches(  # noqa: E731
        dataset, task.tokenizer, batch_size=config.batch_size, max_length=config.max_length, shuffle=True, seed=seed,
        limit=max(config.reconstruction_examples, config.calibration_batches * config.batch_size))
    evaluation = make_batches(load_dataset(args.data, "test"), task.tokenizer, batch_size=64,
                              max_length=config.max_length, sort_by_length=True)
    if args.fresh:
        shutil.rmtree(out / "steps", ignore_errors=True)
    job = MainJob(task, draw, evaluation, config, out, args.data, progress=not args.quiet, log=log)
    results = job.run()
    if args.json:
        print(json.dumps(results))
    else:
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.md'}, {out / 'results.json'} and the plots")
    return 0


def _positive(value: float, flag: str, zero: bool = False) -> float:
    """`value` of `flag`, checked to be > 0 (>= 0 with `zero`)."""
    if not (value > 0 or (zero and value == 0)):
        raise DeepCutsError(f"{flag} must be {'>= 0' if zero else '> 0'}, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
