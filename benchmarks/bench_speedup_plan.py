"""Latency budgets: does `dc.plan(model, scores, speedup=s)` deliver s on the device it planned for?

Models: the packaged MiniLM (`dc.load_model("minilm", num_labels=2)`, random task head) and a BERT-base-shaped
random model (BertConfig defaults: hidden 768, 12 heads, FFN 3072, 12 layers; seeded, no download). For each
model, dtype (fp32 and "auto", the fastest native dtype, de-duplicated once resolved) and batch size: the
per-layer latency table is measured (in a fresh cache unless --reuse-cache), a plan is made at every speedup
from magnitude unit scores, each plan is pruned, and the dense and slim models are timed together by
`dc.benchmark` (round-robin, so load from other processes hits all of them alike).

Printed per slim model: the speedup asked, the one the table predicts, the one measured (dense median over
slim median), the error of the measured speedup against the asked one and against the predicted one, and the
FLOP ratio a FLOP budget would have had to ask for. Target: measured within 10% of asked at batch 32.

    python benchmarks/bench_speedup_plan.py [--models minilm,bert-base] [--batch-sizes 32,1] [--seq-len 128]
        [--dtypes fp32,auto] [--speedups 1.5,2,3] [--repeats 7] [--min-time 0] [--warmup 2] [--threads N]
        [--device cpu] [--reuse-cache] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from benchmarks.model_families import (add_family_args, check_family_args, comma_list,  # noqa: E402
                                       dense_model)
from deepcuts_fast.machine import describe_cpu, machine_info  # noqa: E402
from deepcuts_fast.planning import latency_table  # noqa: E402
from deepcuts_fast.precision import choose, distinct  # noqa: E402

TARGET = 0.10  # measured speedup within 10% of the asked one (at batch 32)
TARGET_BATCH = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_family_args(ap)
    ap.add_argument("--batch-sizes", type=comma_list(int), default=[32, 1])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--speedups", type=comma_list(float), default=[1.5, 2.0, 3.0])
    ap.add_argument("--repeats", type=int, default=7, help="at least this many timed runs per model")
    ap.add_argument("--min-time", type=float, default=0.0, help="and at least this many seconds per batch size")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of the tables and the timing "
                                                              "(default: torch's current count)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reuse-cache", action="store_true",
                    help="read latency tables from the deepcuts cache instead of measuring them afresh")
    ap.add_argument("--out", type=Path, default=None, help="write the rows, machine and tables as JSON here")
    args = ap.parse_args(argv)
    check_family_args(ap, args)
    return args



def plans(model: nn.Module, scores: dc.Scores, speedups: list[float], batch: int, dtype: str,
          args: argparse.Namespace) -> tuple[list[dc.Plan], float]:
    """One plan per speedup at `batch` (the first measures the latency table); the seconds planning took."""
    start = time.perf_counter()
    made = []
    for s in speedups:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made.append(dc.plan(model, scores, speedup=s, batch_size=batch, seq_len=args.seq_len, device=args.device,
                                dtype=dtype))
        for w in caught:
            if "misses its speedup" in str(w.message):
                print(f"  plan warning: {w.message}", file=sys.stderr)
    return made, time.perf_counter() - start


def run_one(family: str, model: nn.Module, scores: dc.Scores, batch: int, dtype: str,
            args: argparse.Namespace) -> tuple[list[dict], dict, list[str]]:
    """(rows, latency table record, benchmark warnings) of one model, dtype and batch size."""
    made, seconds = plans(model, scores, args.speedups, batch, dtype, args)
    table = latency_table.table_for(model, args.seq_len, batch, args.device, dtype)
    print(f"  {latency_table.describe(table)} (planning incl. table {seconds:.1f} s)", file=sys.stderr)
    slims = [dc.prune(model, p) for p in made]
    names = [f"{family}-dense"] + [f"{family}-x{s:g}" for s in args.speedups]
    report = dc.benchmark([model, *slims], batch_sizes=[batch], seq_lens=[args.seq_len], device=args.device,
                          dtype=dtype, warmup=args.warmup, repeats=args.repeats, min_time=args.min_time, names=names,
                          progress=True)
    rows = []
    for p, row in zip(made, report.rows[1:]):
        asked, predicted, measured = p.target["speedup"], p.target["predicted_speedup"], row["speedup"]
        rows.append({"model": family, "batch": batch, "seq": args.seq_len, "dtype": row["dtype"], "asked": asked,
                     "predicted": predicted, "measured": measured, "error": measured / asked - 1,
                     "prediction_error": measured / predicted - 1, "dense_ms": report.rows[0]["median_ms"],
                     "slim_ms": row["median_ms"], "slim_iqr": row["iqr_ms"] / row["median_ms"],
                     "dense_iqr": report.rows[0]["iqr_ms"] / report.rows[0]["median_ms"],
                     "flop_ratio": row["flop_ratio"], "heads": sum(map(len, p.heads)),
                     "neurons": sum(map(len, p.neurons)), "table": table.key})
    return rows, {"key": table.key, **table.to_dict(), "planning_s": seconds}, report.warnings


def machine_record(device: str) -> dict:
    """The machine facts dc.benchmark records, with a one-line description (CPU model, ISA, threads or the GPU)."""
    import transformers

    info = machine_info() | {"transformers": transformers.__version__, "device": device}
    info["description"] = (f"{torch.cuda.get_device_name(torch.device(device))}, {info['threads']} CPU threads"
                           if device.startswith("cuda") else describe_cpu())
    return info


def markdown(rows: list[dict]) -> str:
    """The result table: asked, predicted and measured speedups, errors, and the FLOP ratio for contrast."""
    lines = [f"| model | batch | dtype | asked | predicted | measured | error vs asked (target <= {TARGET:.0%} at "
             f"batch {TARGET_BATCH}) | measured / predicted | dense ms | slim ms (IQR) | FLOP ratio | heads | FFN |",
             "|" + "---|" * 13]
    for r in rows:
        verdict = ("ok" if abs(r["error"]) <= TARGET else "MISSED") if r["batch"] == TARGET_BATCH else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['asked']:g}x | {r['predicted']:.2f}x | "
                     f"{r['measured']:.2f}x | {r['error']:+.1%} ({verdict}) | {r['prediction_error']:+.1%} | "
                     f"{r['dense_ms']:.1f} | {r['slim_ms']:.1f} ({r['slim_iqr']:.0%}) | {r['flop_ratio']:.2f}x | "
                     f"{r['heads']} | {r['neurons']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # before the tables: they are measured (and keyed) at this count
    if not args.reuse_cache:
        os.environ["DEEPCUTS_CACHE"] = tempfile.mkdtemp(prefix="deepcuts-speedup-bench-")
    dtypes = [choose("infer", args.device, d).name for d in distinct("infer", args.device, args.dtypes)]
    rows, tables, notes = [], [], []
    load = os.getloadavg()[0]
    for family in args.models:
        model = dense_model(family)
        scores = dc.score(model, None, "magnitude", granularity="unit", progress=False)
        for dtype in dtypes:
            for batch in args.batch_sizes:
                print(f"{family} {dtype} batch {batch}", file=sys.stderr)
                got, table, warned = run_one(family, model, scores, batch, dtype, args)
                rows += got
                tables.append(table)
                notes += warned
    machine = machine_record(args.device)
    command = " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    print(f"\n{machine['description']}; torch {machine['torch']}, transformers {machine['transformers']}; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after\ncommand: {command}\n")
    print(markdown(rows))
    for note in dict.fromkeys(notes):
        print(f"warning: {note}")
    at_target = [r for r in rows if r["batch"] == TARGET_BATCH]
    if at_target:
        worst = max(abs(r["error"]) for r in at_target)
        print(f"\nbatch {TARGET_BATCH}: worst |measured / asked - 1| = {worst:.1%} "
              f"({'target met' if worst <= TARGET else 'target missed'})")
    if args.out is not None:
        args.out.write_text(json.dumps({"command": command, "machine": machine, "rows": rows, "tables": tables},
                                       indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
