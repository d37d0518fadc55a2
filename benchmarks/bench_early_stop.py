"""Benchmark `--until-stable`: scoring time saved on the embedded task, and how close the
early-stopped scores are to a full-data run.

The embedded task model (`minilm-rt`: MiniLM-L6 fine-tuned on rotten_tomatoes), CPU fp32, up to
`--batches` calibration batches of 16 x 64 tokens (shuffled train split, seed 0), checked every
`--every` batches. For each granularity it times a full run and one early-stopped run per
tolerance (wall and process CPU time: the CPU time is less disturbed by other jobs on a shared
machine), then compares what they keep:
  - weight granularity: the paper-style masks at `--compression` (scope layer, encoder ratio):
    the fraction of the full run's kept weights the early masks keep too, and test accuracy of both;
  - unit granularity: the plan at `--keep-flops` (global): the fraction of the full run's kept
    heads / neurons the early plan keeps too, and test accuracy of both pruned models.

    python benchmarks/bench_early_stop.py [--batches 48] [--every 4] [--tols 0.02,0.01] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.data import load_dataset, make_batches  # noqa: E402
from deepcuts_fast.task import embedded_task_model  # noqa: E402
from deepcuts_fast.machine import machine_info  # noqa: E402
from deepcuts_fast.train import evaluate  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--criterion", default="cam-cut")
    ap.add_argument("--batches", type=int, default=48, help="maximum calibration batches (16 x 64 tokens)")
    ap.add_argument("--every", type=int, default=4, help="batches between stability checks")
    ap.add_argument("--tols", default="0.02,0.01", help="--until-stable tolerances, comma-separated")
    ap.add_argument("--stable-keep", type=float, default=0.5)
    ap.add_argument("--compression", type=float, default=2.0, help="paper-mask ratio (encoder params)")
    ap.add_argument("--keep-flops", type=float, default=0.5, help="structured plan budget (seq 64)")
    ap.add_argument("--test-examples", type=int, default=1000)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def overlap(full: torch.Tensor, early: torch.Tensor) -> float:
    """Fraction of the full run's kept entries that the early run keeps too."""
    return float((full & early).sum()) / max(1, int(full.sum()))


def timed(model, batches, args, granularity: str, tol: float | None):
    """(run, wall seconds, process CPU seconds) of one score_run; tol None scores every batch."""
    wall, cpu = time.perf_counter(), time.process_time()
    run = dc.score_run(model, batches, args.criterion, checkpoint_every=args.every, until_stable=tol,
                       stable_keep=args.stable_keep, granularity=granularity, dtype=torch.float32, progress=False)
    return run, time.perf_counter() - wall, time.process_time() - cpu


def closeness(model, full, early, granularity: str, test, args) -> dict:
    """Overlap of the kept sets (paper masks or structured plan) and test accuracy of both models."""
    if granularity == "weight":
        mf = full.masks(args.compression, scope="layer", params="encoder")
        me = early.masks(args.compression, scope="layer", params="encoder")
        kept = overlap(torch.cat([m.reshape(-1) for m in mf.values()]), torch.cat([me[k].reshape(-1) for k in mf]))
        models = []
        for masks in (mf, me):
            models.append(copy.deepcopy(model))
            dc.apply_masks(models[-1], masks)
    else:
        pf = dc.plan(model, full, keep_flops=args.keep_flops, seq_len=64)
        pe = dc.plan(model, early, keep_flops=args.keep_flops, seq_len=64)
        both = sum(len(set(a) & set(b)) for a, b in zip(pf.heads + pf.neurons, pe.heads + pe.neurons))
        kept = both / sum(map(len, pf.heads + pf.neurons))
        models = [dc.prune(model, p) for p in (pf, pe)]
    acc = [evaluate(m, test, progress=False).accuracy for m in models]
    return {"kept_overlap": round(kept, 4), "accuracy_full": round(acc[0], 4), "accuracy_early": round(acc[1], 4)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    task = embedded_task_model(progress=False)
    model, tokenizer = task.model, task.tokenizer
    batches = make_batches(load_dataset("rotten_tomatoes", "train"), tokenizer, batch_size=16, max_length=64,
                           shuffle=True, seed=0, limit=args.batches * 16)
    test = make_batches(load_dataset("rotten_tomatoes", "test"), tokenizer, batch_size=64, max_length=64,
                        limit=args.test_examples, sort_by_length=True)
    dc.score(model, batches[:1], args.criterion, dtype=torch.float32, progress=False)  # warm-up
    rows = []
    for granularity in ("weight", "unit"):
        full, full_wall, full_cpu = timed(model, batches, args, granularity, None)
        for tol in [float(t) for t in args.tols.split(",")]:
            early, wall, cpu = timed(model, batches, args, granularity, tol)
            row = dict(criterion=args.criterion, granularity=granularity, every=args.every, tol=tol,
                       batches_full=full.batches_used, batches_early=early.batches_used,
                       wall_full=round(full_wall, 1), wall_early=round(wall, 1), cpu_full=round(full_cpu, 1),
                       cpu_early=round(cpu, 1), cpu_saved=round(1 - cpu / full_cpu, 3),
                       changes=[round(c, 4) for c in early.changes])
            row.update(closeness(model, full.scores[args.criterion], early.scores[args.criterion], granularity,
                                 test, args))
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": machine_info(), "args": vars(args), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
