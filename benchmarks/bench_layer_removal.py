"""Whole-layer removal on the embedded task: test accuracy and torch latency of the retraining-free slim model per
FLOP budget and number of encoder layers removed, over calibration draws, each paired with the same budget
without layer removal (McNemar on the test examples pooled over the draws, paired-bootstrap interval).

MiniLM-L6 fine-tuned on the embedded Rotten Tomatoes split (`minilm-rt`); per draw, `--calibration` training
reviews (a seeded shuffle) calibrate the unit scores (`--criterion` and Fisher), `dc.layer_importance` and the
refit; the slim model is `dc.prune_without_retraining(keep_flops=K, drop_layers=the D least important layers)`
(one-shot, no fine-tuning); evaluation = the 2,000 test reviews at seq 64. Latency (first draw's slim models, dense torch fp32
as the baseline): `dc.benchmark` at `--batch-size` x 128 tokens, fp32, interleaved rounds after warm-up until
steady; the machine line names the CPU, ISA, threads and allocator. For the comparison with the best dense
runtime (ONNX Runtime int8, OpenVINO) run `bench_deploy.py --drop-layers D`.

    python benchmarks/bench_layer_removal.py [--keep 0.5,0.33,0.25] [--drop 0,1,2] [--seeds 0,1,2,3]
        [--calibration 1024] [--criterion cam-cut] [--batch-size 32] [--repeats 10] [--no-latency]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.data import encode_labels, load_dataset, make_batches  # noqa: E402
from deepcuts_fast.machine import allocator, describe_cpu  # noqa: E402
from deepcuts_fast.pipeline import DEFAULT_CRITERION  # noqa: E402
from deepcuts_fast.stats import compare, points  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", default="0.5,0.33,0.25", help="comma-separated keep_flops budgets")
    ap.add_argument("--drop", default="0,1,2", help="comma-separated numbers of layers to remove (0: none)")
    ap.add_argument("--seeds", default="0,1,2,3", help="calibration draws (seeded shuffles of the training set)")
    ap.add_argument("--calibration", type=int, default=1024, help="training reviews per draw")
    ap.add_argument("--criterion", default=DEFAULT_CRITERION["one-shot"],
                    help="criterion of the pipeline (default: its one-shot default)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="latency batch size (sequence 128)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-latency", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    keeps = [float(k) for k in args.keep.split(",")]
    drops = [int(d) for d in args.drop.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {describe_cpu()}; {allocator()}; torch threads {torch.get_num_threads()}; criterion "
          f"{args.criterion}", flush=True)
    task = dc.task_model("minilm-rt", progress=False)
    model, tok = task.model.eval(), task.tokenizer
    train = encode_labels(load_dataset("rotten_tomatoes", "train"), model.config)
    test = make_batches(encode_labels(load_dataset("rotten_tomatoes", "test"), model.config), tok, batch_size=128,
                        max_length=args.seq_len, sort_by_length=True)
    dense = dc.evaluate(model, test)
    print(f"dense accuracy {dense.accuracy:.4f} on {dense.n} test reviews", flush=True)
    results: dict = {}  # (keep, drop) -> [EvalResult per draw]
    first_slims: dict = {}
    for seed in seeds:
        calibration = make_batches(train, tok, batch_size=64, max_length=args.seq_len, shuffle=True, seed=seed,
                                   limit=args.calibration, sort_by_length=True)
        scores = dc.score_many(model, calibration, list(dict.fromkeys([args.criterion, "fisher"])), granularity="unit",
                               progress=False)
        importance = dc.layer_importance(model, calibration)
        order = sorted(range(len(importance)), key=lambda i: (importance[i], -i))
        print(f"draw {seed}: layer importance {[round(v, 4) for v in importance]}", flush=True)
        for keep in keeps:
            for drop in drops:
                slim, plan, info = dc.prune_without_retraining(model, calibration, keep, criterion=args.criterion,
                                                               seq_len=args.seq_len, scores=scores,
                                                               drop_layers=sorted(order[:drop]))
                r = dc.evaluate(slim, test)
                results.setdefault((keep, drop), []).append(r)
                print(f"draw {seed} keep {keep} drop {drop} (layers {plan.dropped}): accuracy {r.accuracy:.4f} "
                      f"({100 * (r.accuracy - dense.accuracy):+.2f} pt), heads {[len(h) for h in plan.heads]}, "
                      f"neurons {[len(n) for n in plan.neurons]}", flush=True)
                if seed == seeds[0]:
                    first_slims[(keep, drop)] = slim
    print_table(results, dense, keeps, drops, seeds)
    if not args.no_latency:
        latency(model, first_slims, args)


def print_table(results: dict, dense, keeps: list[float], drops: list[int], seeds: list[int]) -> None:
    print(f"\n| keep FLOPs | layers removed | mean drop (pt) | worst draw (pt) | vs no removal, pooled over "
          f"{len(seeds)} draws |\n|---|---|---|---|---|")
    labels = np.asarray(dense.labels)
    for keep in keeps:
        for drop in drops:
            rs = results[(keep, drop)]
            drops_pt = [100 * (r.accuracy - dense.accuracy) for r in rs]
            versus = ""
            if drop and (keep, 0) in results:
                a = np.stack([np.asarray(r.predictions) for r in rs])
                b = np.stack([np.asarray(r.predictions) for r in results[(keep, 0)]])
                versus = points(compare(a, b, labels, names=(f"drop {drop}", "drop 0")).to_dict())
            print(f"| {keep} | {drop} | {statistics.mean(drops_pt):+.2f} | {min(drops_pt):+.2f} | {versus} |")


def latency(model, slims: dict, args) -> None:
    names = ["dense", *(f"keep {k} drop {d}" for k, d in slims)]
    report = dc.benchmark([model, *slims.values()], batch_sizes=(args.batch_size,), seq_lens=(128,), dtype="fp32",
                          repeats=args.repeats, names=names)
    print()
    print(report.table())


if __name__ == "__main__":
    main()
