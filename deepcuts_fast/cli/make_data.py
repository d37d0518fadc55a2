"""`deepcuts make-data KIND OUT`: a small synthetic data set (train / validation / test files) of one kind, to try
the other commands on, and what each split holds."""
from __future__ import annotations

import argparse
import json

from ..errors import DeepCutsError
from ..locks import output_lock
from .parsing import Command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `make-data` sub-parser and its flags."""
    from ..data.synthetic import FORMATS, KINDS, MINORITY, SIZES

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
    return m


def run(args: argparse.Namespace) -> int:
    """Write the split files and print each one's rows and labels, and how to use them."""
    from ..data.synthetic import SPLITS, describe, make_task_data

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


COMMAND = Command("make-data", add_parser, run, position=7)
