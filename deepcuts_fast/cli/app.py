"""`deepcuts`'s entry point: the parser built from every command module of this package, and `main`, which checks
the flags, runs the command and turns any failure into one line (or one JSON object) and an exit status."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

from ..errors import DeepCutsError, first_line
from .flags import check_flags
from .parsing import GLOBAL_FLAGS, Command, CommandParser, HelpFormatter


def commands() -> list[Command]:
    """The `COMMAND` of every module of this package that declares one, in their `position` order: a new
    command is a new module."""
    found = []
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.name.startswith("_"):
            command = getattr(importlib.import_module(f"{__package__}.{module.name}"), "COMMAND", None)
            found += [command] if command is not None else []
    return sorted(found, key=lambda c: c.position)


def build_parser() -> argparse.ArgumentParser:
    """The `deepcuts` parser with every sub-command and flag."""
    from .._version import __version__

    parser = argparse.ArgumentParser(prog="deepcuts", description="DeepCuts pruning scores for BERT-family encoders.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"deepcuts {__version__}",
                        help="print the version and exit")
    for flag, text in GLOBAL_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=f"{text} (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for command in commands():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `deepcuts`; the exit status is 2 for a DeepCutsError, 1 for an unexpected failure, 130 for Ctrl-C.
    Errors are one line on stderr, or one JSON object {"error", "exit_code"} there under --json."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        check_flags(args)  # bad values fail here, in flag names, before any model or data loads
        _quiet_transformers()
        return next(c for c in commands() if c.name == args.command).run(args)
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


def _quiet_transformers() -> None:
    """Silence transformers' info messages and progress bars: the commands print their own."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
