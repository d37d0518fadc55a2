"""Latency of dense vs physically pruned encoders: is the FLOP reduction a real speedup?

Models: MiniLM-L6 (packaged, random task head) and a BERT-base-sized random model (BertConfig
defaults: 12 layers, hidden 768, 12 heads, FFN 3072). Each is pruned with magnitude unit scores to
keep 75 / 50 / 33 % of its encoder FLOPs at the benchmark's sequence length (`dc.plan` + `dc.prune`),
then dense and slim models are timed together (`dc.benchmark`, round-robin) in every dtype.
The thread count is fixed for the run and printed with the CPU model and ISA; every row has its
median and IQR (at least --repeats runs and --min-time seconds per grid point), and noisy rows or a
load average above the CPU count are printed as warnings under the table. --dtypes defaults to
fp32 and "auto" (the fastest dtype this device runs natively), de-duplicated once resolved, so a
CPU without native bf16 times fp32 only.

Reported per slim model: measured speedup over the dense model, theoretical FLOP ratio, their ratio
(target >= 0.9 in fp32 on CPU, fp16 on GPU) and its speedup over the fp32 dense model (the gain of
pruning and bf16 together). FLOPs count heads and FFN only (embeddings, LayerNorms and the head are
not prunable), so a ratio of 1.0 needs the rest of the forward pass to be negligible.

    python benchmarks/bench_latency.py [--models minilm,bert-base] [--batch-sizes 1,32] [--seq-len 128]
        [--dtypes fp32,auto] [--keep 0.75,0.5,0.33] [--repeats 20] [--min-time 1] [--warmup 3]
        [--threads N] [--device cpu] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import nn  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from benchmarks.model_families import (add_family_args, check_family_args, comma_list,  # noqa: E402
                                       dense_model)
from deepcuts_fast.benchmarking import BenchmarkReport, benchmark  # noqa: E402
from deepcuts_fast.precision import distinct  # noqa: E402

TARGET = 0.9  # measured speedup >= 0.9 x theoretical FLOP reduction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_family_args(ap)
    ap.add_argument("--batch-sizes", type=comma_list(int), default=[1, 32])
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length of the FLOP targets and the timing")
    ap.add_argument("--keep", type=comma_list(float), default=[0.75, 0.5, 0.33], help="keep_flops fractions")
    ap.add_argument("--repeats", type=int, default=20, help="at least this many timed runs per model and grid point")
    ap.add_argument("--min-time", type=float, default=1.0, help="and at least this many seconds per grid point")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's current count)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--multiple-of", type=int, default=1, help="round FFN widths to a multiple (64 for GPUs)")
    ap.add_argument("--out", type=Path, default=None, help="folder for bench.json / bench.csv / bench.png")
    args = ap.parse_args(argv)
    check_family_args(ap, args)
    return args



def slim_models(model: nn.Module, keeps: list[float], seq_len: int, multiple_of: int = 1) -> dict[float, nn.Module]:
    """keep_flops fraction -> the model pruned to it with magnitude unit scores (no data needed)."""
    scores = dc.score(model, None, "magnitude", progress=False)
    return {keep: dc.prune(model, dc.plan(model, scores, keep_flops=keep, seq_len=seq_len, multiple_of=multiple_of))
            for keep in keeps}


def measure(family: str, dense: nn.Module, slims: dict[float, nn.Module], args: argparse.Namespace
            ) -> list[BenchmarkReport]:
    """One report per distinct dtype; dense first, so speedups and FLOP ratios are relative to it."""
    names = [f"{family}-dense"] + [f"{family}-keep{keep:g}" for keep in slims]
    return [benchmark([dense, *slims.values()], batch_sizes=args.batch_sizes, seq_lens=[args.seq_len],
                      device=args.device, dtype=dtype, warmup=args.warmup, repeats=args.repeats,
                      min_time=args.min_time, names=names, threads=args.threads, progress=True)
            for dtype in distinct("infer", args.device, args.dtypes)]


def summary(reports: list[BenchmarkReport]) -> str:
    """Markdown: per model and dtype, speedup / FLOP ratio vs the target and the speedup over fp32 dense."""
    lines = [f"| model | batch | seq | dtype | FLOP ratio | speedup | speedup / FLOP ratio (target >= {TARGET}) "
             "| speedup vs fp32 dense |", "|" + "---|" * 8]
    fp32 = {(r.settings["models"][0], row["batch"], row["seq"]): row["median_ms"]  # dense fp32 latency
            for r in reports if r.settings["dtype"] == "fp32"
            for row in r.rows if row["model"] == r.settings["models"][0]}
    for report in reports:
        dense_name = report.settings["models"][0]
        for row in report.rows:
            ratio = row["flop_ratio"]
            efficiency = "-" if not ratio or row["model"] == dense_name else (
                f"{row['speedup'] / ratio:.2f} ({'ok' if row['speedup'] / ratio >= TARGET else 'below'})")
            dense_fp32 = fp32.get((dense_name, row["batch"], row["seq"]))
            vs_fp32 = "-" if dense_fp32 is None else f"{dense_fp32 / row['median_ms']:.2f}x"
            lines.append(f"| {row['model']} | {row['batch']} | {row['seq']} | {row['dtype']} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}x'} | {row['speedup']:.2f}x | {efficiency} | "
                         f"{vs_fp32} |")
    return "\n".join(lines)


def combined(reports: list[BenchmarkReport], command: str) -> BenchmarkReport:
    """All rows and warnings in one report, with the machine and the command line that produced them."""
    return BenchmarkReport(rows=[row for r in reports for row in r.rows], machine=reports[0].machine,
                           settings={"command": command, "runs": [r.settings for r in reports]},
                           warnings=list(dict.fromkeys(w for r in reports for w in r.warnings)))


def settings_lines(reports: list[BenchmarkReport]) -> str:
    """Per run: its dtype and why, threads and sampling floors, so the numbers are read with them."""
    return "\n".join(f"{s['models'][0]}: dtype {s['dtype']} ({s['dtype_reason']}), {s['threads']} threads, "
                     f"at least {s['repeats']} runs and {s['min_time'] or 0:g} s per grid point"
                     for s in (r.settings for r in reports))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reports = []
    for family in args.models:
        dense = dense_model(family)
        reports += measure(family, dense, slim_models(dense, args.keep, args.seq_len, args.multiple_of), args)
    report = combined(reports, " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]))
    print("\n" + json.dumps(report.machine) + "\n")
    print(settings_lines(reports) + "\n")
    print(report.table())
    print()
    print(summary(reports))
    if args.out is not None:
        print(f"\nwrote {', '.join(map(str, report.save(args.out)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
