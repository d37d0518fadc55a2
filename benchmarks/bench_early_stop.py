"""Benchmark `--until-stable` (issue 6): scoring time saved on the embedded task, and how close the
early-stopped scores are to a full-data run.

The embedded task model (`minilm-rt`: MiniLM-L6 fine-tuned on rotten_tomatoes), CPU fp32, up to
`--batches` calibration batches of 16 x 64 tokens (shuffled train split, seed 0), checked every
`--every` batches. For each configuration it times a full run and an early-stopped run, then
compares what they keep:
  - weight granularity: the paper-style masks at `--compression` (scope layer, encoder ratio):
    the fraction of the full run's kept weights the early masks keep too, and test accuracy of both;
  - unit granularity: the plan at `--keep-flops` (global): the fraction of the full run's kept
    heads / neurons the early plan keeps too, and test accuracy of both pruned models.

    python benchmarks/bench_early_stop.py [--batches 64] [--every 4] [--tol 0.01] [--json out.json]
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
from deepcuts_fast.embedded import embedded_task_model  # noqa: E402
from deepcuts_fast.machine import machine_info  # noqa: E402
from deepcuts_fast.train import evaluate  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--criterion", default="cam-cut")
    ap.add_argument("--batches", type=int, default=64, help="maximum calibration batches (16 x 64 tokens)")
    ap.add_argument("--every", type=int, default=4, help="batches between stability checks")
    ap.add_argument("--tol", type=float, default=0.01, help="--until-stable tolerance")
    ap.add_argument("--stable-keep", type=float, default=0.5)
    ap.add_argument("--compression", type=float, default=2.0, help="paper-mask ratio (encoder params)")
    ap.add_argument("--keep-flops", type=float, default=0.5, help="structured plan budget (seq 64)")
    ap.add_argument("--test-examples", type=int, default=1000)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def overlap(full: torch.Tensor, early: torch.Tensor) -> float:
    """Fraction of the full run's kept entries that the early run keeps too."""
    return float((full & early).sum()) / max(1, int(full.sum()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, tokenizer, _ = embedded_task_model(progress=False)
    batches = make_batches(load_dataset("rotten_tomatoes", "train"), tokenizer, batch_size=16, max_length=64,
                           shuffle=True, seed=0, limit=args.batches * 16)
    test = make_batches(load_dataset("rotten_tomatoes", "test"), tokenizer, batch_size=64, max_length=64,
                        limit=args.test_examples, sort_by_length=True)
    dc.score(model, batches[:1], args.criterion, progress=False)  # warm-up
    rows = []
    for granularity in ("weight", "unit"):
        kw = dict(criterion=args.criterion, granularity=granularity, every=args.every)
        start = time.perf_counter()
        full = dc.score_run(model, batches, args.criterion, checkpoint_every=args.every, granularity=granularity,
                            progress=False)
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        early = dc.score_run(model, batches, args.criterion, checkpoint_every=args.every, until_stable=args.tol,
                             stable_keep=args.stable_keep, granularity=granularity, progress=False)
        early_s = time.perf_counter() - start
        f, e = full.scores[args.criterion], early.scores[args.criterion]
        row = dict(kw, batches_full=full.batches_used, batches_early=early.batches_used,
                   seconds_full=round(full_s, 2), seconds_early=round(early_s, 2),
                   time_saved=round(1 - early_s / full_s, 3), changes=[round(c, 4) for c in early.changes])
        if granularity == "weight":
            mf = f.masks(args.compression, scope="layer", params="encoder")
            me = e.masks(args.compression, scope="layer", params="encoder")
            row["kept_overlap"] = round(overlap(torch.cat([m.reshape(-1) for m in mf.values()]),
                                                torch.cat([me[k].reshape(-1) for k in mf])), 4)
            accs = []
            for masks in (mf, me):
                masked = copy.deepcopy(model)
                dc.apply_masks(masked, masks)
                accs.append(evaluate(masked, test, progress=False).accuracy)
        else:
            pf = dc.plan(model, f, keep_flops=args.keep_flops, seq_len=64)
            pe = dc.plan(model, e, keep_flops=args.keep_flops, seq_len=64)
            kept = sum(len(set(a) & set(b)) for a, b in zip(pf.heads + pf.neurons, pe.heads + pe.neurons))
            row["kept_overlap"] = round(kept / sum(map(len, pf.heads + pf.neurons)), 4)
            accs = [evaluate(dc.prune(model, p), test, progress=False).accuracy for p in (pf, pe)]
        row["accuracy_full"], row["accuracy_early"] = round(accs[0], 4), round(accs[1], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": machine_info(), "args": vars(args), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
