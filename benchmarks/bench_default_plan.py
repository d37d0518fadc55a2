"""`dc.plan` without options against the retraining-free pipeline's search-only plan and the raw-sum
allocation, on the embedded task: test accuracy of each plan, single shot (no rearrangement, no
reconstruction), per criterion, FLOP budget and calibration draw.

Per draw, one unit-scoring pass gives every criterion's scores (each carrying Fisher's scores of the
same pass, as every scoring with data does). "default" is `dc.plan(model, scores, keep_flops=k)`;
"search" is the plan `dc.prune_without_retraining(..., rearrange=False, reconstruct=False)` searched
from the same scores; "raw" is `allocation="raw"`, the summed scores compared as they are. Accuracies
are on the 2,000 test snippets in fp32; the calibration draw is the main job's (batches of 16, length 64).

    python benchmarks/bench_default_plan.py [--seeds 0,1,2] [--keep 0.5,0.33] [--batches 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.data import encode_labels, load_dataset, make_batches  # noqa: E402
from deepcuts_fast.machine import describe_cpu  # noqa: E402
from deepcuts_fast.task import embedded_task_model  # noqa: E402
from deepcuts_fast.train import evaluate  # noqa: E402

PLANS = ("raw", "default", "search")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--keep", default="0.5,0.33")
    ap.add_argument("--criteria", default="gradient,cam-cut,smooth-cut,magnitude,fisher")
    ap.add_argument("--batches", type=int, default=32, help="calibration batches of 16 per draw")
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length the FLOP budget is counted at")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    keeps = [float(k) for k in args.keep.split(",")]
    criteria = [c.strip() for c in args.criteria.split(",")]
    task = embedded_task_model(progress=False)
    model, tok = task.model, task.tokenizer
    train = encode_labels(load_dataset("rotten_tomatoes", "train"), model.config)
    test = encode_labels(load_dataset("rotten_tomatoes", "test"), model.config)
    test_batches = make_batches(test, tok, batch_size=128, max_length=64, sort_by_length=True)
    accuracy_of: dict[str, float] = {}

    def accuracy(plan: dc.Plan) -> float:
        key = json.dumps([plan.heads, plan.neurons])
        if key not in accuracy_of:
            accuracy_of[key] = evaluate(dc.prune(model, plan), test_batches).accuracy
        return accuracy_of[key]

    print(f"machine: {describe_cpu()}; scoring dtype fp32, evaluation fp32", flush=True)
    dense = evaluate(model, test_batches).accuracy
    results: dict = {}
    for seed in seeds:
        calibration = make_batches(train, tok, batch_size=16, max_length=64, shuffle=True, seed=seed,
                                   limit=16 * args.batches)
        scores = dc.score_many(model, calibration, [*criteria, "fisher"], granularity="unit", seed=seed,
                               dtype="fp32", progress=False)
        for keep in keeps:
            for crit in criteria:
                _, _, info = dc.prune_without_retraining(model, calibration, keep, criterion=crit,
                                                         seq_len=args.seq_len, rearrange=False, reconstruct=False,
                                                         scores=scores)
                plans = {"raw": dc.plan(model, scores[crit], keep_flops=keep, seq_len=args.seq_len,
                                        allocation="raw"),
                         "default": dc.plan(model, scores[crit], keep_flops=keep, seq_len=args.seq_len),
                         "search": info["search_plan"]}
                row = {"seed": seed, "keep_flops": keep, "criterion": crit,
                       **{name: accuracy(p) for name, p in plans.items()},
                       "default_is_search": (plans["default"].heads, plans["default"].neurons) == (
                           plans["search"].heads, plans["search"].neurons)}
                results[(keep, crit, seed)] = row
                print(json.dumps(row), flush=True)
    print_table(results, dense, keeps, criteria, seeds)


def print_table(results: dict, dense: float, keeps, criteria, seeds) -> None:
    """Markdown: accuracy mean [min, max] over draws per plan, and default minus search in points."""
    print(f"\ndense accuracy {dense:.4f}; test accuracy of each plan, mean [min, max] over {len(seeds)} draw(s)\n")
    print("| keep_flops | criterion | raw sum | default `dc.plan` | search-only | default - search (points) "
          "| same plan |")
    print("|---|---|---|---|---|---|---|")
    for keep in keeps:
        for crit in criteria:
            rows = [results[(keep, crit, s)] for s in seeds]
            cells = []
            for name in PLANS:
                accs = [r[name] for r in rows]
                cells.append(f"{statistics.fmean(accs):.4f} [{min(accs):.4f}, {max(accs):.4f}]")
            diff = [100 * (r["default"] - r["search"]) for r in rows]
            same = sum(r["default_is_search"] for r in rows)
            print(f"| {keep:g} | {crit} | " + " | ".join(cells)
                  + f" | {statistics.fmean(diff):+.2f} [{min(diff):+.2f}, {max(diff):+.2f}] | {same}/{len(rows)} |")


if __name__ == "__main__":
    main()
