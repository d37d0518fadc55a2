"""The `deepcuts` command line: score, eval, prune, bench and run (the main job on the embedded default).

Long on purpose: `build_parser` defines every flag in one place, `check_flags` checks their values
before anything loads, and the `cmd_*` functions below read them; splitting the commands into
modules would separate the flags from their readers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from .errors import DeepCutsError, first_line
from .locks import output_lock
from .outputs import check_file, check_folder, open_folder, same_path

DTYPE_HELP = ("precision: auto (default) = the fastest dtype this machine runs natively (bf16 on GPUs and CPUs "
              "with native bf16, else fp32), as deepcuts_fast.precision decides; $DEEPCUTS_PRECISION overrides it")
DATA_HELP = "'rotten_tomatoes' (embedded), a CSV/TSV/JSON(L) file with text[,text_pair],label, or a datasets hub name"
# Flags every command takes, before or after its name: `deepcuts --json score ...` = `deepcuts score ... --json`.
GLOBAL_FLAGS = {
    "--debug": "show full tracebacks on errors",
    "--json": "print the result as JSON on stdout, and an error as one JSON object {error, exit_code} on stderr",
    "--quiet": "no progress bars",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help when it has a default worth showing (not None or False) and the
    help does not already say its default, so every command's --help tells what an omitted flag means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: shows defaults in --help and takes the GLOBAL_FLAGS after the command too.

    Here those flags default to SUPPRESS: argparse copies a sub-command's defaults over the values the
    top-level parser already set, so a real default would undo `deepcuts --json score ...`.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        shared = {flag: self.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
                  for flag, text in GLOBAL_FLAGS.items()}
        self._global_flags = shared

    def add_argument(self, *names, **kwargs) -> argparse.Action:
        """A command that declares a global flag itself (`bench` has --json and --quiet) keeps the shared
        one, which does not reset the top-level value, with the command's own help text."""
        shared = getattr(self, "_global_flags", {})
        if names and all(name in shared for name in names):
            action = shared[names[0]]
            action.help = kwargs.get("help", action.help)
            return action
        return super().add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The `deepcuts` parser with every sub-command and flag."""
    from ._version import __version__
    from .benchmarking import add_bench_command

    parser = argparse.ArgumentParser(prog="deepcuts", description="DeepCuts pruning scores for BERT-family encoders.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"deepcuts {__version__}",
                        help="print the version and exit")
    for flag, text in GLOBAL_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=f"{text} (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    _add_score(sub)
    _add_eval(sub)
    _add_prune(sub)
    _add_export(sub)
    add_bench_command(sub)
    _add_run(sub)
    _add_make_data(sub)
    return parser


def _add_common(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    """--model, --data, --batch-size, --max-length and --dtype, shared by score, eval and run."""
    from .precision import CHOICES as DTYPE_CHOICES
    from .task import TASK_MODEL_ALIAS

    p.add_argument("--model", default=TASK_MODEL_ALIAS,
                   help="model folder or hub name; 'minilm' = packaged MiniLM (no task head), "
                        f"'{TASK_MODEL_ALIAS}' = it fine-tuned on the embedded data (default; cached)")
    p.add_argument("--data", required=data_required, default=None if data_required else "rotten_tomatoes",
                   help=DATA_HELP)
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    p.add_argument("--max-length", type=int, default=64, help="tokens per example (longer ones are truncated)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)


def _criterion_help(what: str) -> str:
    """Help text of a --criterion flag: `what` it does and every criterion name it takes."""
    from .scoring.criteria import CRITERIA

    return f"{what}; one of: {', '.join(CRITERIA)} (any case; '_' works for '-')"


def _add_noise_flags(p, reference: bool = False, std_help: str | None = None) -> None:
    """--noise-scale and --noise-std of the smooth criteria (both default None: the library's defaults, or the
    job's; `std_help` says what --noise-std defaults to where that is not the library's)."""
    from .scoring.options import DEFAULT_NOISE_STD

    rel, ab = DEFAULT_NOISE_STD["relative"], DEFAULT_NOISE_STD["absolute"]
    p.add_argument("--noise-scale", choices=("relative", "absolute"), default=None,
                   help="smooth criteria's noise on each prunable Linear's output (default relative"
                        + (", absolute with --reference" if reference else "") + "): relative: standard deviation "
                        "--noise-std times that output's own standard deviation over the real tokens (SmoothGrad's "
                        "10-20%%); absolute: --noise-std itself (the paper's 1e-3 leaves Smooth-Cut with the "
                        "gradient criterion's masks)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="the noise's standard deviation, relative or absolute ("
                        + (std_help or f"default {rel:g} relative, {ab:g} absolute")
                        + "); relative must be > 0, absolute >= 0")


def _add_score(sub) -> None:
    s = sub.add_parser("score", help="score every prunable head and FFN neuron (or weight) with a criterion; "
                                     "writes a safetensors file")
    _add_common(s)
    s.add_argument("--split", default="train", help="data split to score on")
    s.add_argument("--criterion", default="smooth-cut", metavar="NAME", help=_criterion_help("what to score with"))
    s.add_argument("--granularity", choices=("unit", "weight"), default="unit",
                   help="unit (default): one score per attention head and FFN neuron, a small file that "
                        "`deepcuts prune --scores` plans from; weight: one score per weight, for the paper-style "
                        "unstructured masks (dc.Scores.masks), a large file (about 42 MB for MiniLM)")
    s.add_argument("--unit-method", choices=("sum", "first-order"), default="sum",
                   help="unit granularity: sum the unit's weight scores, or |sum A*dA| at the unit (no weight "
                        "gradients)")
    s.add_argument("--batches", type=int, default=8, help="number of calibration batches")
    s.add_argument("--noise-samples", type=int, default=10, help="noisy copies per batch (smooth criteria)")
    _add_noise_flags(s, reference=True)
    s.add_argument("--seed", type=int, default=0, help="seed of the batch order and the noise")
    s.add_argument("--reference", action="store_true",
                   help="reproduce the original code: train mode, sequential noise passes, padding included, "
                        "absolute noise unless --noise-scale says otherwise")
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
                   help="kept fraction whose stability --until-stable watches")
    s.add_argument("--out", required=True, help="output .safetensors file (under torchrun only rank 0 writes it)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="accuracy / loss of a model (or of an .onnx file from `deepcuts export`) on a "
                                    "data split")
    _add_common(e)
    model = next(a for a in e._actions if a.dest == "model")
    model.help += "; or an .onnx file written by `deepcuts export`, run with onnxruntime (its tokenizer and config " \
                  "from the FILE.d folder beside it, its precision as exported: --dtype does not apply)"
    e.add_argument("--split", default="test", help="data split to evaluate on")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N examples only")


def _add_prune(sub) -> None:
    from .pipeline import METHODS
    from .precision import CHOICES as DTYPE_CHOICES
    from .pruning.iterative import SELECTIONS
    from .task import TASK_MODEL_ALIAS

    p = sub.add_parser("prune", help="prune heads and FFN neurons without retraining (the whole pipeline on --data, "
                                     "or a plan from a --scores file) and write a physically smaller model folder")
    p.add_argument("--model", default=TASK_MODEL_ALIAS, help="the model to prune (folder or alias); with --scores, "
                                                             "the one the scores were computed on")
    p.add_argument("--data", default=None, metavar="DATA",
                   help=f"labelled calibration data, train split: {DATA_HELP}. Without --scores the retraining-free "
                        "pipeline scores, allocates the FLOP budget against Fisher, rearranges and reconstructs on "
                        "it; with --scores it is the reconstruction data")
    p.add_argument("--scores", default=None, metavar="FILE",
                   help="plan from this `deepcuts score --granularity unit` file instead of scoring (then no "
                        "Fisher allocation or rearrangement); one of --scores / --data is required")
    p.add_argument("--criterion", default=None, metavar="NAME",
                   help=_criterion_help("what the pipeline scores with, besides Fisher (default: fisher; not with "
                                        "--scores)"))
    for target, what in (("flops", "FLOPs"), ("params", "unit parameters"), ("heads", "heads"),
                         ("neurons", "FFN neurons")):
        only = "" if target == "flops" else "; needs --scores"
        p.add_argument(f"--keep-{target}", type=float, default=None, metavar="F",
                       help=f"fraction of the encoder's {what} to keep, in [0, 1]{only}")
    p.add_argument("--speedup", type=float, default=None, metavar="X",
                   help="a latency budget instead: the slim model should run X times as fast as the dense one "
                        "(X >= 1) at --batch-size and --seq-len on --device in --dtype, as predicted by a per-layer "
                        "latency table measured once on this machine and cached; needs --scores")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length the FLOP budget is counted at (with "
                                                            "--speedup: the latency is measured at)")
    p.add_argument("--device", default=None,
                   help="with --speedup: the device the latency is measured and planned for, cpu or cuda "
                        "(default: cpu)")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="spend the budget over all layers or per layer (layer needs --scores)")
    p.add_argument("--min-heads", type=int, default=0, help="heads kept in every layer at least")
    p.add_argument("--min-neurons", type=int, default=0, help="FFN neurons kept in every layer at least")
    p.add_argument("--multiple-of", type=int, default=None,
                   help="round FFN widths to a multiple, e.g. 8 or 64 (needs --scores; default: 1, or 16 with "
                        "--speedup)")
    p.add_argument("--allocation", choices=("auto", "fisher", "normalized", "raw"), default="auto",
                   help="with --scores: how layers and unit types are compared; auto = by the Fisher scores the file "
                        "carries (scored with data), else each layer's scores normalised; raw = the summed scores "
                        "as they are (a baseline)")
    p.add_argument("--no-rearrange", action="store_true",
                   help="pipeline: keep the searched mask instead of rearranging each layer's against Fisher")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="skip the least-squares refit of each layer's output projections on --data (done by "
                        "default whenever --data is given)")
    p.add_argument("--method", choices=METHODS, default="one-shot",
                   help="pipeline: one-shot = search, rearrange, prune, then refit; iterative = keep the search's "
                        "per-layer counts, choose the units bottom-up by the output error they leave and refit each "
                        "sublayer before the next (not with --no-rearrange / --no-reconstruct)")
    p.add_argument("--selection", choices=SELECTIONS, default="output",
                   help="pipeline, --method iterative: which units each sublayer keeps: by the output error their "
                        "removal leaves, by --criterion's scores, or heads by output error and FFN neurons by "
                        "--criterion's scores")
    p.add_argument("--calibration-examples", type=int, default=512, metavar="N",
                   help="examples of --data to score and reconstruct on (fewer over-fit the FFN output projections)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"calibration examples per batch (default: {CALIBRATION_BATCH}); with --speedup also the "
                        f"batch size the latency is measured and planned at (default: {LATENCY_BATCH})")
    p.add_argument("--max-length", type=int, default=64, help="tokens per calibration example")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw from --data")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help=f"{DTYPE_HELP}. It applies to the scoring and reconstruction forwards, and with --speedup to "
                        "the latency the plan is made for")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder written by an earlier `deepcuts prune` (or an empty one)")


def _add_export(sub) -> None:
    from .task import TASK_MODEL_ALIAS

    x = sub.add_parser("export", help="write a model (dense or slim) as an ONNX file for deployment, checked against "
                                      "torch; optionally optimized (fused attention) and int8-quantized")
    x.add_argument("--model", default=TASK_MODEL_ALIAS, help="the model to export (folder or alias)")
    x.add_argument("--out", required=True, metavar="FILE",
                   help="output .onnx file; config.json and the tokenizer files go to the folder FILE.d beside it")
    x.add_argument("--optimize", action="store_true",
                   help="write onnxruntime's transformer-optimized graph (fused attention, layer norms and GELU; "
                        "assumes right padding, the tokenizers' default)")
    x.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8: dynamic quantization (int8 weights, one scale per channel; activations quantized at "
                        "run time); its logits are not held to the fp32 tolerance: re-measure with `deepcuts eval "
                        "--model FILE`")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out file and its FILE.d folder")


def _add_run(sub) -> None:
    from .job.config import JobConfig

    r = sub.add_parser("run", help="the main job: fine-tune (cached), score every criterion, paper mode, structured "
                                   "mode with latency and reconstruction, mask analysis, report.md; resumable")
    _add_common(r, data_required=False)
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
    _add_noise_flags(r, std_help=f"default {full.noise_std:g} with the job's {full.noise_scale} noise, else "
                                 "the scale's library default")
    r.add_argument("--fresh", action="store_true", help="recompute every step instead of reusing finished ones")


def _add_make_data(sub) -> None:
    from .data.synthetic import FORMATS, KINDS, MINORITY, SIZES

    m = sub.add_parser("make-data", help="write a small synthetic data set (train / validation / test files) of one "
                                         "kind into a folder, to try the commands on: " + ", ".join(KINDS))
    m.add_argument("kind", choices=list(KINDS),
                   help="multiclass: 6 topics, string labels, texts of 130-180 words; pairs: text + text_pair, "
                        "entailment / neutral / contradiction; imbalanced: routine / urgent, 90 / 10")
    m.add_argument("out", help="folder to write <split>.csv (or .jsonl) into; new or empty")
    for split, n in SIZES.items():
        m.add_argument(f"--{split}", type=int, default=n, metavar="N", help=f"rows of the {split} split (0: none)")
    m.add_argument("--seed", type=int, default=0, help="the same kind, sizes and seed always give the same files")
    m.add_argument("--format", choices=FORMATS, default="csv", help="file format of the splits")
    m.add_argument("--minority", type=float, default=MINORITY, help="share of `urgent` rows of the imbalanced kind")
    m.add_argument("--overwrite", action="store_true", help="replace the split files of an earlier make-data")


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
    if not (math.isfinite(value) and value <= MAX_SIZE):  # inf, nan, 1e400: int() fails; 1 PiB is no machine
        raise argparse.ArgumentTypeError(f"{text!r}: a memory cap must be a finite size of at most 1024TiB; write "
                                         "e.g. 2GiB or 500MB")
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a memory cap must be at least 1 byte")
    return int(value)


MAX_SIZE = 2**50  # the largest --max-memory taken: 1 PiB


def main(argv: list[str] | None = None) -> int:
    """Run `deepcuts`; the exit status is 2 for a DeepCutsError, 1 for an unexpected failure, 130 for Ctrl-C.
    Errors are one line on stderr, or one JSON object {"error", "exit_code"} there under --json."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        check_flags(args)  # bad values fail here, in flag names, before any model or data loads
        _quiet_transformers()
        from .benchmarking import run_bench_command

        commands = {"score": cmd_score, "eval": cmd_eval, "prune": cmd_prune, "bench": run_bench_command,
                    "run": cmd_run, "export": cmd_export, "make-data": cmd_make_data}
        return commands[args.command](args)
    except DeepCutsError as e:
        if args.debug:
            raise
        return _report_error(args, str(e), 2)
    except KeyboardInterrupt:
        return _report_error(args, "interrupted", 130, line="deepcuts: interrupted")
    except Exception as e:  # an unexpected failure still ends in one line; --debug shows where
        if args.debug:
            raise
        message = f"{type(e).__name__}: {first_line(str(e))} (rerun with --debug for the traceback)"
        return _report_error(args, message, 1)


def _report_error(args: argparse.Namespace, message: str, code: int, line: str | None = None) -> int:
    """Print an error on stderr, as `line` (default "deepcuts: error: MESSAGE") or, under --json, as one
    JSON object a script can parse; returns the exit status `code`."""
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}), file=sys.stderr)
    else:
        print(line or f"deepcuts: error: {message}", file=sys.stderr)
    return code


CALIBRATION_BATCH = 16  # prune's --batch-size for the calibration draw when not given
LATENCY_BATCH = 32  # prune's --batch-size for a --speedup plan's latency when not given

# Value checks of numeric flags, by argparse dest; a command checks the ones it has.
FRACTION_FLAGS = ("keep_flops", "keep_params", "keep_heads", "keep_neurons")
AT_LEAST_ONE_FLAGS = ("seq_len", "multiple_of", "batches", "batch_size", "max_length", "noise_samples",
                      "calibration_examples", "limit")
AT_LEAST_ZERO_FLAGS = ("min_heads", "min_neurons")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse out-of-range values of the numeric flags `args` has, naming the flag, so a command fails at
    once instead of after loading a model (and in Python keyword names)."""
    given = {dest: value for dest, value in vars(args).items() if value is not None}
    for dest in FRACTION_FLAGS:
        if dest in given and not 0 <= given[dest] <= 1:
            raise DeepCutsError(f"{_flag(dest)} is a fraction in [0, 1], got {given[dest]:g}")
    for dest, least in [(d, 1) for d in AT_LEAST_ONE_FLAGS] + [(d, 0) for d in AT_LEAST_ZERO_FLAGS]:
        if dest in given and given[dest] < least:
            raise DeepCutsError(f"{_flag(dest)} must be an integer >= {least}, got {given[dest]}")
    if "noise_std" in given and not (math.isfinite(given["noise_std"]) and given["noise_std"] >= 0):
        raise DeepCutsError(f"--noise-std must be a finite number >= 0, got {given['noise_std']:g}")
    scale = given.get("noise_scale") or ("absolute" if given.get("reference") else "relative")
    if given.get("noise_std") == 0 and scale == "relative":
        raise DeepCutsError("--noise-std must be > 0 with --noise-scale relative (a fraction of each output's "
                            "standard deviation, e.g. 0.15); for no noise pass --noise-scale absolute --noise-std 0")
    if "seed" in given:
        from .scoring.options import check_seed

        check_seed(given["seed"], "--seed")


def _flag(dest: str) -> str:
    """The command-line spelling of an argparse dest: keep_flops -> --keep-flops."""
    return "--" + dest.replace("_", "-")


def _quiet_transformers() -> None:
    """Silence transformers' info messages and progress bars: the commands print their own."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _classifier(args, num_labels: int | None, head_free: bool = False):
    """(model, tokenizer) for the --model of score, eval, prune and export, --max-length checked against its
    positions: a bare encoder is refused (`deepcuts run` fine-tunes it first), unless what follows reads no head
    (`head_free`: data-free scores), when it gets a fresh head with `num_labels` outputs (2 when None)."""
    from .task import task_model

    task = task_model(args.model, on_bare="random-head" if head_free else "refuse", num_labels=num_labels,
                      progress=not args.quiet, max_length=getattr(args, "max_length", None))
    return task.model, task.tokenizer


def _model_and_data(args, split: str, head_free: bool = False):
    """(model, tokenizer, dataset) for the --model / --data of a command, labels checked and numbered as
    the model's head numbers them (its named labels, else sorted class names); `head_free` as in `_classifier`."""
    from .data import encode_labels, load_dataset

    dataset = load_dataset(args.data, split)
    model, tokenizer = _classifier(args, dataset.num_labels, head_free)
    return model, tokenizer, encode_labels(dataset, model.config)


def cmd_score(args) -> int:
    """`deepcuts score`: one criterion's scores (units by default) from --batches of --data, saved to --out."""
    from dataclasses import replace

    from .data import make_batches
    from .models import has_classifier_head
    from .scoring import ScoreOptions, get_criterion, score_run
    from .scoring.distributed import main_first, process_group

    out = Path(args.out)
    inputs = {"--model": args.model, "--data": args.data}
    check_file(out, inputs, overwrite=args.overwrite, name="--out", flag="--overwrite")
    criterion = get_criterion(args.criterion)  # fail on a misspelt name or a bad option before loading anything
    options = ScoreOptions(granularity=args.granularity, unit_method=args.unit_method, noise_samples=args.noise_samples,
                           noise_std=args.noise_std, noise_scale=args.noise_scale, dtype=args.dtype, seed=args.seed,
                           reference=args.reference,
                           max_memory=args.max_memory, progress=not args.quiet)
    options.check_criteria([criterion])
    checkpoint = args.checkpoint or (f"{out}.ckpt" if args.checkpoint_every else None)
    if checkpoint is not None:
        _check_checkpoint(checkpoint, out, inputs)
    with process_group(args.device) as world, _output_locks([out, checkpoint], world.is_main):
        device = _score_device(args.device, world.size)
        with main_first(world):  # the embedded model is fine-tuned and cached once, by rank 0
            model, tokenizer, dataset = _model_and_data(args, args.split, head_free=not criterion.uses_gradient)
        if not has_classifier_head(model.config):  # a bare encoder's data-free scores: no Fisher via its random head
            options = replace(options, with_fisher=False)
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
        scores.save(out, overwrite=args.overwrite)
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


def _check_checkpoint(checkpoint: str, out: Path, inputs: dict) -> None:
    """Refuse a --checkpoint that is --out (it is deleted once OUT is written) or an input; an existing
    checkpoint is resumed from, so it needs no --overwrite."""
    if same_path(checkpoint, out):
        raise DeepCutsError(f"--checkpoint {checkpoint} is the --out file, and the checkpoint is deleted once the "
                            "scores are written: give another --checkpoint path (default: OUT.ckpt)")
    check_file(checkpoint, inputs, overwrite=True, name="--checkpoint")


@contextlib.contextmanager
def _output_locks(paths: list, held: bool):
    """Hold `output_lock` on each distinct path of `paths` (None skipped) when `held` (on the rank that writes)."""
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(str(p) for p in paths if p is not None and held):
            stack.enter_context(output_lock(path))
        yield


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

    if _is_onnx_file(args.model):
        return _eval_onnx(args)
    model, tokenizer, dataset = _model_and_data(args, args.split)
    batches = make_batches(dataset, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = evaluate(model, batches, dtype=args.dtype, progress=not args.quiet)
    dtype = choose("infer", model_device(model), args.dtype).name
    _print_eval(args, result, dtype)
    return 0


def _print_eval(args: argparse.Namespace, result, dtype: str) -> None:
    """Print `deepcuts eval`'s metrics and the dtype it ran in, as JSON or as one line."""
    if args.json:
        print(json.dumps({**result.to_dict(), "dtype": dtype}))
    else:
        per_example = ("predictions", "labels")  # in the JSON form only
        metrics = {**{k: v for k, v in result.to_dict().items() if v is not None and k not in per_example},
                   "dtype": dtype}
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


def _is_onnx_file(model: str) -> bool:
    """Whether a --model value names an ONNX file (by its suffix) rather than a model folder or alias."""
    return str(model).lower().endswith(".onnx")


def _eval_onnx(args: argparse.Namespace) -> int:
    """`deepcuts eval --model FILE.onnx`: the file under onnxruntime on the split, tokenized by the tokenizer
    exported beside it, labels numbered as its config numbers them."""
    from .benchmarking.runners import onnx_quantized
    from .data import encode_labels, load_dataset, make_batches
    from .pruning.onnx_export import OnnxClassifier

    if args.dtype != "auto":
        raise DeepCutsError(f"--dtype {args.dtype} does not apply to an ONNX file, which runs in the precision it was "
                            "exported in (int8 with `deepcuts export --quantize int8`); drop --dtype")
    onnx = OnnxClassifier(args.model)
    dataset = encode_labels(load_dataset(args.data, args.split), onnx.config)
    batches = make_batches(dataset, onnx.tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, sort_by_length=True)
    result = onnx.evaluate(batches, progress=not args.quiet)
    output = onnx.session.get_outputs()[0].type
    _print_eval(args, result, "int8" if onnx_quantized(args.model) else {"tensor(float16)": "fp16"}.get(output, "fp32"))
    return 0


def cmd_export(args) -> int:
    """`deepcuts export`: the model as an .onnx file (checked against torch) and its FILE.d folder (config and
    tokenizer); prints what was written, what fused, and how far the logits are from torch's."""
    from .pruning.onnx_export import SIDE_FOLDER_KIND, side_folder

    out = Path(args.out)
    if out.suffix != ".onnx" or _is_onnx_file(args.model):
        raise DeepCutsError(f"`deepcuts export` writes a model folder as an .onnx file: give --out FILE.onnx (got "
                            f"{args.out}) and --model a model folder or alias (got {args.model})")
    folder = side_folder(out)
    inputs = {"--model": args.model}
    check_file(out, inputs, overwrite=args.overwrite, name="--out", flag="--overwrite")
    check_folder(folder, inputs, overwrite=args.overwrite, kind=SIDE_FOLDER_KIND, name="the folder beside --out",
                 flag="--overwrite")
    with _output_locks([out, folder], held=True):
        return _export(args, out)


def _export(args: argparse.Namespace, out: Path) -> int:
    """`deepcuts export` once its outputs are checked and locked."""
    from .pruning.onnx_export import export

    model, tokenizer = _classifier(args, None)
    result = export(model.float(), out, tokenizer, optimize=args.optimize, quantize=args.quantize,
                    overwrite=args.overwrite)
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


def cmd_prune(args) -> int:
    """`deepcuts prune`: the retraining-free pipeline on --data (criterion + Fisher scores, Fisher-referenced
    global FLOP allocation, mask rearrangement, least-squares reconstruction), or a plan from a --scores file
    (reconstructed on --data when given); writes the slim folder and prints which path ran."""
    from .pruning.io import MODEL_FOLDER_KIND

    out = Path(args.out)
    check_folder(out, {"--model": args.model, "--scores": args.scores, "--data": args.data},
                 overwrite=args.overwrite, kind=MODEL_FOLDER_KIND, name="--out", flag="--overwrite")
    with output_lock(out):
        return _prune(args, out)


def _prune(args: argparse.Namespace, out: Path) -> int:
    """`deepcuts prune` once its --out folder is checked and locked."""
    from .data import make_batches
    from .pruning import save_pretrained
    from .scoring import Scores

    pipeline = _prune_path(args) == "pipeline"  # every flag combination is checked before anything loads
    scores = None if pipeline else Scores.load(args.scores)
    batches = None
    if args.data is None:
        model, tokenizer = _classifier(args, None)
    else:
        model, tokenizer, dataset = _model_and_data(args, "train")
        batches = make_batches(dataset, tokenizer, batch_size=args.batch_size or CALIBRATION_BATCH,
                               max_length=args.max_length, shuffle=True, seed=args.seed, limit=args.calibration_examples)
    if pipeline:
        slim, plan, ran = _prune_pipeline(args, model, batches)
    else:
        slim, plan, ran = _prune_from_scores(args, model, scores, batches)
    save_pretrained(slim, out, tokenizer=tokenizer, plan=plan, overwrite=args.overwrite)
    summary = _prune_summary(args, model, slim, plan, ran, batches)
    if args.json:
        print(json.dumps(summary))
    else:
        print(plan.summary())
        print(_prune_line(summary))
    return 0


def _prune_path(args: argparse.Namespace) -> str:
    """'pipeline' (no --scores) or 'scores', after refusing flag combinations that path cannot honour."""
    from .pipeline import FISHER
    from .scoring.criteria import get_criterion

    budgets = [_flag(dest) for dest in FRACTION_FLAGS if getattr(args, dest) is not None]
    if args.scores is None and args.data is None:
        raise DeepCutsError("give --data DATA (the retraining-free pipeline scores, plans and reconstructs on it) "
                            "or --scores FILE (plan from a `deepcuts score --granularity unit` file), or both")
    if not budgets and args.speedup is None:
        raise DeepCutsError("give a budget: --keep-flops (with --scores also --keep-params, --keep-heads, "
                            "--keep-neurons and/or --speedup)")
    _check_speedup_flags(args, budgets)
    if args.scores is not None:
        if args.criterion is not None:
            raise DeepCutsError("--criterion picks what the pipeline scores with, but --scores FILE already holds "
                                "scores; drop --criterion, or drop --scores to run the pipeline")
        if args.method != "one-shot":
            raise DeepCutsError(f"--method {args.method} is a method of the retraining-free pipeline (--data without "
                                "--scores); drop --scores to run it, or drop --method")
        exclusive = [b for b in budgets if b in ("--keep-flops", "--keep-params")]
        if exclusive and len(budgets) > 1:
            raise DeepCutsError(f"give one budget, not {' and '.join(budgets)}")
        return "scores"
    get_criterion(args.criterion or FISHER)  # a misspelt name fails here, with a suggestion
    scores_only = [b for b in budgets if b != "--keep-flops"]
    scores_only += ["--scope layer"] if args.scope != "global" else []
    scores_only += [f"--multiple-of {args.multiple_of}"] if args.multiple_of not in (None, 1) else []
    scores_only += [f"--allocation {args.allocation}"] if args.allocation != "auto" else []
    if scores_only:
        raise DeepCutsError(f"the retraining-free pipeline (--data without --scores) spends one global --keep-flops "
                            f"budget and does not take {', '.join(scores_only)}; for those, plan from a scores "
                            "file: `deepcuts score --granularity unit ... --out S`, then `deepcuts prune --scores S`")
    switches = (("--no-rearrange", args.no_rearrange), ("--no-reconstruct", args.no_reconstruct))
    one_shot_only = [flag for flag, on in switches if on]
    if args.method != "iterative" and args.selection != "output":
        raise DeepCutsError(f"--selection {args.selection} chooses units inside --method iterative; add "
                            "--method iterative, or drop --selection")
    if args.method == "iterative" and one_shot_only:
        raise DeepCutsError(f"--method iterative chooses units by their output error and always refits, so "
                            f"{' and '.join(one_shot_only)} does not apply to it; drop it, or use --method one-shot")
    return "pipeline"


def _check_speedup_flags(args: argparse.Namespace, budgets: list[str]) -> None:
    """Refuse a --speedup the command cannot honour, and --device without one."""
    if args.speedup is None:
        if args.device is not None:
            raise DeepCutsError("--device says where a --speedup plan's latency is measured; give --speedup X, or "
                                "drop --device")
        return
    if not (math.isfinite(args.speedup) and args.speedup >= 1):
        raise DeepCutsError(f"--speedup is how many times faster than the dense model the slim one should run, a "
                            f"number >= 1; got {args.speedup:g}")
    if args.scores is None:
        raise DeepCutsError("--speedup plans from unit scores on a latency table, but the retraining-free pipeline "
                            "(--data without --scores) spends a --keep-flops budget; score first: `deepcuts score "
                            "--granularity unit ... --out S`, then `deepcuts prune --scores S --speedup X` (add "
                            "--data to reconstruct)")
    if budgets:
        raise DeepCutsError(f"give one budget, not --speedup and {' and '.join(budgets)}")
    from .models import resolve_device

    resolve_device(args.device or "cpu")  # an unknown or absent device fails before the model loads


def _prune_pipeline(args: argparse.Namespace, model, batches: list) -> tuple:
    """(slim, plan, what ran) from `dc.prune_without_retraining` on the calibration `batches`."""
    from .pipeline import FISHER, prune_without_retraining

    slim, plan, info = prune_without_retraining(
        model, batches, args.keep_flops, criterion=args.criterion or FISHER, seq_len=args.seq_len,
        rearrange=not args.no_rearrange, reconstruct=not args.no_reconstruct, dtype=args.dtype,
        min_heads=args.min_heads, min_neurons=args.min_neurons, seed=args.seed, progress=not args.quiet,
        method=args.method, selection=args.selection)
    iterative = args.method == "iterative"
    return slim, plan, {"path": "pipeline", "criterion": info["criterion"], "method": args.method,
                        "selection": info.get("selection"), "rearranged": not (args.no_rearrange or iterative),
                        "reconstructed": not args.no_reconstruct, "timings": info["timings"]}


def _prune_from_scores(args: argparse.Namespace, model, scores, batches: list | None) -> tuple:
    """(slim, plan, what ran): plan from the --scores file, prune, and reconstruct on `batches` (the --data
    draw) unless there are none or --no-reconstruct."""
    from . import planning
    from .pruning import prune, reconstruct

    start = time.perf_counter()
    if args.speedup is not None and not args.quiet:
        print("deepcuts: note: --speedup plans on a latency table of this machine, measured on first use "
              "(a minute or so for a BERT-base at batch 32 on a CPU) and cached", file=sys.stderr)
    plan = planning.plan(model, scores, keep_flops=args.keep_flops, keep_params=args.keep_params,
                         keep_heads=args.keep_heads, keep_neurons=args.keep_neurons, seq_len=args.seq_len,
                         scope=args.scope, min_heads=args.min_heads, min_neurons=args.min_neurons,
                         multiple_of=args.multiple_of, allocation=args.allocation, speedup=args.speedup,
                         batch_size=args.batch_size or LATENCY_BATCH, device=args.device or "cpu", dtype=args.dtype)
    timings = {"search": _seconds_since(start)}
    lap = time.perf_counter()
    slim = prune(model, plan)
    timings["prune"] = _seconds_since(lap)
    refit = batches is not None and not args.no_reconstruct
    if refit:
        lap = time.perf_counter()
        slim = reconstruct(slim, model, batches, dtype=args.dtype)
        timings["reconstruct"] = _seconds_since(lap)
    timings["total"] = _seconds_since(start)
    return slim, plan, {"path": "scores", "criterion": scores.criterion, "rearranged": False, "reconstructed": refit,
                        "timings": timings}


def _seconds_since(start: float) -> float:
    """Seconds since `start` (a perf_counter reading), rounded to milliseconds as the pipeline's timings are."""
    return round(time.perf_counter() - start, 3)


def _prune_summary(args: argparse.Namespace, model, slim, plan, ran: dict, batches: list | None) -> dict:
    """What `deepcuts prune` did: the path that ran (pipeline or scores file), its inputs and steps, what it kept."""
    from .flops import encoder_flops, encoder_unit_params

    return {
        "out": str(args.out),
        **{k: ran[k] for k in ("path", "criterion")},
        "method": ran.get("method"), "selection": ran.get("selection"),
        "allocation": plan.target.get("allocation"),
        "scores": args.scores,
        "data": args.data,
        "calibration_examples": None if batches is None else sum(len(b["input_ids"]) for b in batches),
        **{k: ran[k] for k in ("rearranged", "reconstructed")},
        "reconstructed_on": args.data if ran["reconstructed"] else None,
        "heads": [len(h) for h in plan.heads],
        "ffn": [len(n) for n in plan.neurons],
        "params": sum(p.numel() for p in slim.parameters()),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "unit_params_kept": encoder_unit_params(slim) / encoder_unit_params(model),
        "flops_kept": encoder_flops(slim, args.seq_len) / encoder_flops(model, args.seq_len),
        "seq_len": args.seq_len,
        **{k: plan.target.get(k) for k in ("speedup", "predicted_speedup", "batch_size", "device", "dtype",
                                            "latency_table") if "speedup" in plan.target},
        "timings": ran["timings"],
    }


def _prune_line(s: dict) -> str:
    """The text summary of a `deepcuts prune` run: which path ran, its steps, what it kept, and its timings."""
    if s["path"] == "pipeline":
        how = f"retraining-free pipeline ({s['criterion']} scores, Fisher-referenced allocation"
        if s.get("method") == "iterative":
            how += {"output": ", units chosen iteratively by output error",
                    "criterion": f", units chosen iteratively by {s['criterion']} scores",
                    "output-heads": f", heads chosen iteratively by output error, neurons by {s['criterion']} scores",
                    }[s.get("selection") or "output"]
        else:
            how += ", rearranged" if s["rearranged"] else ", not rearranged"
    else:
        how = f"plan from {s['scores']} ({s['criterion']} scores"
    how += f", reconstructed on {s['data']})" if s["reconstructed"] else ", not reconstructed)"
    if s["calibration_examples"]:
        how += f" on {s['calibration_examples']} calibration examples"
    timings = ", ".join(f"{step} {seconds:.2f}s" for step, seconds in s["timings"].items())
    speed = (f"; predicted {s['predicted_speedup']:.2f}x faster (asked {s['speedup']:g}x) at batch {s['batch_size']} "
             f"on {s['device']} {s['dtype']}, latency table {s['latency_table']}" if s.get("speedup") else "")
    return (f"{how}: kept {s['flops_kept']:.1%} of encoder FLOPs at seq {s['seq_len']}, {s['params']:,} of "
            f"{s['dense_params']:,} params{speed}; wrote {s['out']}\ntimings: {timings}")


def cmd_run(args) -> int:
    """`deepcuts run`: the main job on --model (a bare encoder is fine-tuned first) and --data, into --out
    (new, empty or an earlier run's folder, which it resumes)."""
    out = Path(args.out or ("runs/quick" if args.quick else "runs/full"))
    from .job import RUN_FOLDER_KIND

    inputs = {"--model": args.model, "--data": args.data}
    check_folder(out, inputs, overwrite=True, kind=RUN_FOLDER_KIND, name="--out")  # before anything loads
    with output_lock(out), open_folder(out, kind=RUN_FOLDER_KIND, inputs=inputs, name="--out"):
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    """`deepcuts run` once its --out folder is checked and locked."""
    import shutil
    from dataclasses import replace

    from .data import encode_labels, load_dataset, make_batches
    from .job import JobConfig, MainJob
    from .task import task_model

    overrides = {"batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed,
                 "dtype": args.dtype, "latency_batch": int(_positive(args.latency_batch, "--latency-batch")),
                 "latency_seq": int(_positive(args.latency_seq, "--latency-seq"))}
    if args.calibration_batches is not None:
        overrides["calibration_batches"] = _positive(args.calibration_batches, "--calibration-batches")
    if args.pipeline_examples is not None:
        overrides["pipeline_examples"] = _positive(args.pipeline_examples, "--pipeline-examples")
    if args.recovery_epochs is not None:
        overrides["structured_recovery_epochs"] = _positive(args.recovery_epochs, "--recovery-epochs", zero=True)
    if args.noise_scale is not None or args.noise_std is not None:  # e.g. the paper's: --noise-scale absolute
        from .scoring.options import DEFAULT_NOISE_STD

        overrides["noise_scale"] = args.noise_scale or JobConfig().noise_scale
        overrides["noise_std"] = (DEFAULT_NOISE_STD[overrides["noise_scale"]] if args.noise_std is None
                                  else args.noise_std)
    config = (JobConfig.quick if args.quick else JobConfig.full)(**overrides)
    if args.full_pipeline:
        config = replace(config.with_full_pipeline(), **{k: v for k, v in overrides.items() if k.startswith("pipeline_")})
    log = (lambda *a: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    dataset = load_dataset(args.data, "train")
    # The fine-tune of a bare encoder follows "auto" (or $DEEPCUTS_PRECISION), not --dtype, so every
    # command that names it (score, eval, prune, run) sees the same cached model.
    # A bare encoder is fine-tuned at --max-length (the recipe's 64 by default), so long texts train as they are scored.
    task = task_model(args.model, on_bare="fine-tune", data=args.data, num_labels=dataset.num_labels,
                      progress=not args.quiet, max_length=config.max_length)
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
    from .data import check_seen, encode_labels, load_dataset, make_batches
    from .job.held_out import HeldOut

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


def cmd_make_data(args) -> int:
    """`deepcuts make-data KIND OUT`: a synthetic data set's split files, and what each holds."""
    from .data.synthetic import SPLITS, describe, make_task_data

    for split in SPLITS:
        if getattr(args, split) < 0:
            raise DeepCutsError(f"--{split} must be an integer >= 0, got {getattr(args, split)}")
    with output_lock(args.out):
        files = make_task_data(args.kind, args.out, sizes={split: getattr(args, split) for split in SPLITS},
                               seed=args.seed, fmt=args.format, minority=args.minority, overwrite=args.overwrite)
    summary = describe(files)
    if args.json:
        print(json.dumps({"kind": args.kind, "out": str(args.out), "splits": summary}))
    else:
        for split, s in summary.items():
            counts = ", ".join(f"{label} {n}" for label, n in s["labels"].items())
            print(f"{s['file']}: {s['rows']} rows ({counts})")
        print(f"use it with: deepcuts run --quick --model minilm --data {args.out}"
              + (" --max-length 256" if args.kind == "multiclass" else ""))
    return 0


def _note_truncation(dataset, tokenizer, max_length: int, log) -> None:
    """Say when --max-length cuts many training examples, and what length would keep most of them whole."""
    from .data import truncation

    share, whole = truncation(dataset, tokenizer, max_length)
    if share >= 0.1:
        log(f"note: {share:.0%} of the train examples are longer than --max-length {max_length} tokens and are cut "
            f"to it; --max-length {whole} would keep 95% of them whole (at most the model's positions)")


def _positive(value: float, flag: str, zero: bool = False) -> float:
    """`value` of `flag`, checked to be > 0 (>= 0 with `zero`)."""
    if not (value > 0 or (zero and value == 0)):
        raise DeepCutsError(f"{flag} must be {'>= 0' if zero else '> 0'}, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
