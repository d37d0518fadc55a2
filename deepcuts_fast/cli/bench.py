"""`deepcuts bench`: the latency benchmark of a model folder or ONNX file, optionally against a baseline; its
flags and run live with the benchmark (`benchmarking.command`), this module registers them as a command."""
from __future__ import annotations

import argparse

from .parsing import Command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `bench` sub-parser and its flags."""
    from ..benchmarking import add_bench_command

    return add_bench_command(sub)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the flags describe."""
    from ..benchmarking import run_bench_command

    return run_bench_command(args)


COMMAND = Command("bench", add_parser, run, position=5)
