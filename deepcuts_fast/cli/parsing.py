"""The parser plumbing every `deepcuts` command shares: the `Command` a command module declares, the global flags
accepted on either side of the command, --help with defaults, and the flags several commands take alike."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

DTYPE_HELP = ("precision: auto (default) = the fastest dtype this machine runs natively (bf16 on GPUs and CPUs "
              "with native bf16, else fp32), as deepcuts_fast.precision decides; $DEEPCUTS_PRECISION overrides it")
DATA_HELP = ("'rotten_tomatoes' (embedded), a CSV/TSV/JSON(L) file with text[,text_pair],label, or a datasets hub "
             "name; for a tagger a JSON(L) file of tokens,tags rows, for a QA reader SQuAD rows (docs/data.md)")
OBJECTIVE_HELP = ("what the gradients come from: labels (the data's labels through the model's trained head), "
                  "distill (the dense model's own outputs: its logits, or a bare encoder's pooled embedding; the data "
                  "may be plain text, a .txt file with one text a line or a CSV/JSONL text column), or auto (default: "
                  "labels when the data has them and the model a trained head, else distill, said in one line)")
# Flags every command takes, before or after its name: `deepcuts --json score ...` = `deepcuts score ... --json`.
GLOBAL_FLAGS = {
    "--debug": "show full tracebacks on errors",
    "--json": "print the result as JSON on stdout, and an error as one JSON object {error, exit_code} on stderr",
    "--quiet": "no progress bars",
}
MAX_SIZE = 2**50  # the largest --max-memory taken: 1 PiB


@dataclass(frozen=True)
class Command:
    """One `deepcuts` command, declared as `COMMAND` by its module in this package (which is all it takes to add
    one): `add_parser(subparsers)` adds its sub-parser and flags, `run(args)` runs it and returns the exit status,
    and `position` says where `deepcuts --help` lists it (the workflow's order)."""

    name: str
    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]
    position: int


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


def add_common(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    """--model, --data, --batch-size, --max-length and --dtype, shared by score, eval and run."""
    from ..precision import CHOICES as DTYPE_CHOICES
    from ..task import TASK_MODEL_ALIAS

    p.add_argument("--model", default=TASK_MODEL_ALIAS,
                   help="model folder or hub name; 'minilm' = packaged MiniLM (no task head), "
                        f"'{TASK_MODEL_ALIAS}' = it fine-tuned on the embedded data (default; cached)")
    p.add_argument("--data", required=data_required, default=None if data_required else "rotten_tomatoes",
                   help=DATA_HELP)
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    p.add_argument("--max-length", type=int, default=64, help="tokens per example (longer ones are truncated)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)


def criterion_help(what: str) -> str:
    """Help text of a --criterion flag: `what` it does and every criterion name it takes."""
    from ..scoring.criteria import CRITERIA

    return f"{what}; one of: {', '.join(CRITERIA)} (any case; '_' works for '-')"


def add_noise_flags(p: argparse.ArgumentParser, reference: bool = False, std_help: str | None = None) -> None:
    """--noise-scale and --noise-std of the smooth criteria (both default None: the library's defaults, or the
    job's; `std_help` says what --noise-std defaults to where that is not the library's)."""
    from ..scoring.options import DEFAULT_NOISE_STD, NOISE_SCALES

    rel, ab = DEFAULT_NOISE_STD["relative"], DEFAULT_NOISE_STD["absolute"]
    p.add_argument("--noise-scale", choices=NOISE_SCALES, default=None,
                   help="smooth criteria's noise on each prunable Linear's output (default relative"
                        + (", absolute with --reference" if reference else "") + "): relative: standard deviation "
                        "--noise-std times that output's own standard deviation over the real tokens (SmoothGrad's "
                        "10-20%%); absolute: --noise-std itself (the paper's 1e-3 leaves Smooth-Cut with the "
                        "gradient criterion's masks)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="the noise's standard deviation, relative or absolute ("
                        + (std_help or f"default {rel:g} relative, {ab:g} absolute")
                        + "); relative must be > 0, absolute >= 0")


def parse_size(text: str) -> int:
    """Bytes from '2GiB', '500MB', '1.5G' or a plain number of bytes (the argparse type of --max-memory)."""
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
