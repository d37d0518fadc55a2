"""`deepcuts run`: the main job on --model and --data (fine-tune, score every criterion, paper and structured modes,
mask analysis, report.md) into a resumable --out folder; the job itself is `deepcuts_fast.job`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import DeepCutsError, first_line
from ..locks import output_lock
from ..outputs import check_folder, open_folder
from .flags import flag_setting
from .parsing import Command, add_common, add_noise_flags


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `run` sub-parser and its flags."""
    from ..job.config import JobConfig

    r = sub.add_parser("run", help="the main job: fine-tune (cached), score every criterion, paper mode, structured "
                                   "mode with latency and reconstruction, mask analysis, report.md; resumable")
    add_common(r, data_required=False)
    quick, full = JobConfig.quick(), JobConfig.full()
    r.add_argument("--quick", action="store_true",
                   help=f"reduced grid ({len(quick.criteria)} criteria, {quick.calibration_batches} calibration "
                        f"batches, keep_flops {', '.join(f'{k:g}' for k in quick.keep_flops)}, "
                        "no recovery fine-tuning)")
    r.add_argument("--out", default=None, help="output folder (default runs/quick or runs/full); a rerun into the "
                                                "same folder reuses the steps that finished")
    r.add_argument("--seed", type=int, default=0, help="seed of the calibration draws and fine-tunes")
    r.add_argument("--calibration-batches", type=int, default=None,
                   help=f"default {quick.calibration_batches} (--quick) or {full.calibration_batches}")
    r.add_argument("--full-pipeline", action="store_true",
                   help="with --quick: the full run's retraining-free pipeline (its criteria and methods, keep_flops "
                        f"{', '.join(f'{k:g}' for k in full.pipeline_keep_flops)}, {full.pipeline_draws} draws of "
                        f"{full.pipeline_examples:,} examples) with the quick grid elsewhere")
    r.add_argument("--pipeline-examples", type=int, default=None,
                   help="training examples of each retraining-free pipeline draw, all of which score and refit; "
                        f"default {quick.pipeline_examples} (--quick) or {full.pipeline_examples}")
    r.add_argument("--recovery-epochs", type=float, default=None,
                   help="recovery fine-tuning of the best slim model per FLOP budget (default "
                        f"{quick.structured_recovery_epochs:g} with --quick, else {full.structured_recovery_epochs:g})")
    r.add_argument("--latency-batch", type=int, default=full.latency_batch,
                   help="batch size of the latency measurements")
    r.add_argument("--latency-seq", type=int, default=full.latency_seq,
                   help="sequence length of the latency measurements and of the FLOP budgets")
    r.add_argument("--no-embedding", action="store_true",
                   help="skip the sentence-embedding section (the base model as given pruned label-free, where it is "
                        f"a sentence-transformers model: {full.embedding_method} at keep_flops "
                        f"{', '.join(f'{k:g}' for k in full.embedding_keep_flops)}, "
                        f"{', '.join(f'{k:g}' for k in quick.embedding_keep_flops)} with --quick)")
    add_noise_flags(r, std_help=f"default {full.noise_std:g} with the job's {full.noise_scale} noise, else "
                                "the scale's library default")
    r.add_argument("--fresh", action="store_true", help="recompute every step instead of reusing finished ones")
    return r


def run(args: argparse.Namespace) -> int:
    """Run the main job into --out (new, empty or an earlier run's folder, which it resumes); a bare encoder is
    fine-tuned first."""
    from ..job import RUN_FOLDER_KIND

    out = Path(args.out or ("runs/quick" if args.quick else "runs/full"))
    inputs = {"--model": args.model, "--data": args.data}
    check_folder(out, inputs, overwrite=True, kind=RUN_FOLDER_KIND, name="--out")  # before anything loads
    with output_lock(out), open_folder(out, kind=RUN_FOLDER_KIND, inputs=inputs, name="--out"):
        return _run(args, out)


def _config(args: argparse.Namespace):
    """The `JobConfig` of --quick / --full-pipeline with the flags' overrides."""
    from dataclasses import replace

    from ..job import JobConfig
    from ..scoring.options import check_noise

    overrides = {"batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed,
                 "dtype": args.dtype, "latency_batch": int(_positive(args.latency_batch, "--latency-batch")),
                 "latency_seq": int(_positive(args.latency_seq, "--latency-seq"))}
    if args.calibration_batches is not None:
        overrides["calibration_batches"] = _positive(args.calibration_batches, "--calibration-batches")
    if args.pipeline_examples is not None:
        overrides["pipeline_examples"] = _positive(args.pipeline_examples, "--pipeline-examples")
    if args.recovery_epochs is not None:
        overrides["structured_recovery_epochs"] = _positive(args.recovery_epochs, "--recovery-epochs", zero=True)
    if args.no_embedding:
        overrides["embedding_keep_flops"] = ()
    if args.noise_scale is not None or args.noise_std is not None:  # e.g. the paper's: --noise-scale absolute
        overrides["noise_scale"], overrides["noise_std"] = check_noise(
            args.noise_std, args.noise_scale or JobConfig().noise_scale, spell=flag_setting)
    config = (JobConfig.quick if args.quick else JobConfig.full)(**overrides)
    if args.full_pipeline:
        config = replace(config.with_full_pipeline(), **{k: v for k, v in overrides.items() if k.startswith("pipeline_")})
    return config


def _run(args: argparse.Namespace, out: Path) -> int:
    """`deepcuts run` once its --out folder is checked and locked."""
    import shutil

    from ..data import encode_labels, load_dataset, make_batches
    from ..job import MainJob
    from ..task import task_model
    from ..tasks import SEQUENCE

    config = _config(args)
    log = (lambda *a: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    dataset = load_dataset(args.data, "train")
    # The fine-tune of a bare encoder follows "auto" (or $DEEPCUTS_PRECISION), not --dtype, so every
    # command that names it (score, eval, prune, run) sees the same cached model.
    # A bare encoder is fine-tuned at --max-length (the recipe's 64 by default), so long texts train as they are scored.
    task = task_model(args.model, on_bare="fine-tune", data=args.data, num_labels=dataset.num_labels,
                      progress=not args.quiet, max_length=config.max_length, task=SEQUENCE)  # a label per text
    _note_truncation(dataset, task.tokenizer, config.max_length, log)
    train = dataset
    dataset = encode_labels(dataset, task.model.config)
    draw = lambda seed, examples: make_batches(  # noqa: E731
        dataset, task.tokenizer, batch_size=config.batch_size, max_length=config.max_length, shuffle=True, seed=seed,
        limit=examples)
    evaluation = _held_out(args.data, task, config.max_length, log, train=train if task.base is not None else None)
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


def _held_out(data: str, task, max_length: int, log, train=None):
    """The job's test batches (reported on) and validation batches (chosen on; None when the data has no
    validation split apart from its test split, e.g. a single file). With `train` (the split the task model
    was fine-tuned on here), a held-out class that split lacks is an error."""
    from ..data import check_seen, encode_labels, load_dataset, make_batches
    from ..job.held_out import HeldOut

    def batches(dataset) -> list:
        if train is not None:
            check_seen(dataset, train)
        dataset = encode_labels(dataset, task.model.config)
        return make_batches(dataset, task.tokenizer, batch_size=64, max_length=max_length, sort_by_length=True)

    validation = None
    if not Path(data).is_file():  # a single file is every split at once
        try:
            validation = load_dataset(data, "validation")
        except DeepCutsError as e:  # only a missing split falls back; bad labels in one stop the run
            log(f"note: no validation split ({first_line(str(e))}); best / winner choices use the test split")
    return HeldOut(test=batches(load_dataset(data, "test")),
                   validation=None if validation is None else batches(validation))


def _note_truncation(dataset, tokenizer, max_length: int, log) -> None:
    """Say when --max-length cuts many training examples, and what length would keep most of them whole."""
    from ..data import truncation

    share, whole = truncation(dataset, tokenizer, max_length)
    if share >= 0.1:
        log(f"note: {share:.0%} of the train examples are longer than --max-length {max_length} tokens and are cut "
            f"to it; --max-length {whole} would keep 95% of them whole (at most the model's positions)")


def _positive(value: float, flag: str, zero: bool = False) -> float:
    """`value` of `flag`, checked to be > 0 (>= 0 with `zero`)."""
    if not (value > 0 or (zero and value == 0)):
        raise DeepCutsError(f"{flag} must be {'>= 0' if zero else '> 0'}, got {value}")
    return value


COMMAND = Command("run", add_parser, run, position=6)
