"""`deepcuts deploy`: a (slim) classifier built in every installed runtime and precision, each timed on this
machine at --batch-size x --max-length and checked against torch fp32 on held-out --data; the fastest one within
--tolerance is written to --out with deploy.json (`dc.deploy`)."""
from __future__ import annotations

import argparse
import json
import sys

from . import loading
from .parsing import DATA_HELP, Command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `deploy` sub-parser and its flags."""
    from ..runtimes import RUNTIMES

    d = sub.add_parser("deploy", help="build a (slim) classifier in every installed runtime, time each on this "
                                      "machine, and write the fastest one that agrees with torch fp32")
    d.add_argument("--model", required=True, help="the classifier to deploy: a slim (or dense) model folder")
    d.add_argument("--data", required=True, help=f"{DATA_HELP}; its examples calibrate int8 and check agreement")
    d.add_argument("--out", required=True, metavar="DIR", help="the deployment folder to write")
    d.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto",
                   help="auto: try every installed runtime; or force one")
    d.add_argument("--batch-size", type=int, default=32, help="rows per request, as served")
    d.add_argument("--max-length", type=int, default=128, help="tokens per row, as served")
    d.add_argument("--tolerance", type=float, default=0.01,
                   help="share of held-out predictions allowed to differ from torch fp32")
    d.add_argument("--split", default="test", help="the split of --data to use")
    d.add_argument("--threads", type=int, default=None, help="threads to time and run with (default: torch's)")
    d.add_argument("--overwrite", action="store_true", help="replace what an earlier deploy wrote in --out")
    return d


def run(args: argparse.Namespace) -> int:
    """Deploy --model to --out, holding a lock on --out, and print the variants' table (or the manifest)."""
    from ..deploy import deploy

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    with loading.output_locks([args.out]):
        result = deploy(args.model, args.out, args.data, runtime=args.runtime, batch_size=args.batch_size,
                        max_length=args.max_length, tolerance=args.tolerance, split=args.split,
                        threads=args.threads, overwrite=args.overwrite, log=log)
    if args.json:
        print(json.dumps(result.manifest))
    return 0


COMMAND = Command("deploy", add_parser, run, position=8)
