"""Retraining-free structured pruning on the embedded task: accuracy drop from dense per
FLOP budget, criterion and stage, over calibration seeds, and the whole-pipeline time.

MiniLM-L6 fine-tuned on the embedded Rotten Tomatoes split (`minilm-rt`); calibration = training
snippets drawn with each seed; evaluation = the 2,000 test snippets (seq 64, sorted by length).
Stages: "search" (global FLOP search on the criterion's scores rank-matched to Fisher), "+rearrange"
(Fisher mask rearrangement), "+reconstruct" (least-squares refit of the output projections). Scores
are computed once per seed for all criteria and cached (--cache); the pipeline time is measured
separately with `dc.prune_without_retraining` on a fresh scoring pass.

    python benchmarks/bench_retraining_free.py [--seeds 0,1,2] [--keep 0.75,0.5,0.33] \
        [--criteria fisher,cam-cut,gradient,magnitude,smooth-cut] [--time-criterion fisher] [--json out.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.data import load_dataset, make_batches  # noqa: E402
from deepcuts_fast.task import embedded_task_model  # noqa: E402
from deepcuts_fast.machine import machine_info  # noqa: E402
from deepcuts_fast.planning import rearrange  # noqa: E402
from deepcuts_fast.train import evaluate  # noqa: E402

STAGES = ("search", "+rearrange", "+reconstruct")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="calibration seeds (which training snippets); '' times only")
    ap.add_argument("--keep", default="0.75,0.5,0.33", help="fractions of encoder FLOPs kept")
    ap.add_argument("--criteria", default="fisher,cam-cut,gradient,magnitude,smooth-cut")
    ap.add_argument("--calibration", type=int, default=2048, help="calibration snippets per seed")
    ap.add_argument("--reconstruct-examples", type=int, default=512,
                    help="snippets (the first of the calibration set) the least-squares refit uses")
    ap.add_argument("--noise-samples", type=int, default=10, help="N for smooth-cut")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64, help="max tokens; also the FLOP budget's sequence length")
    ap.add_argument("--eval-dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="precision of the test evaluation (auto: bf16 only where this machine runs it natively)")
    ap.add_argument("--time-criterion", default="fisher", help="criterion of the timed whole-pipeline run ('' skips)")
    ap.add_argument("--pipeline-dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="precision of the scoring and reconstruction forwards (grid and timed pipeline; auto: bf16 "
                         "only where this machine runs it natively)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/deepcuts_fast/bench7", help="scores cache")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    ap.add_argument("--summarise", type=Path, nargs="+", default=None,
                    help="only print the table of earlier --json files (runs split over seeds or criteria)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarise:
        summarise(args.summarise)
        return
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    keeps = [float(k) for k in args.keep.split(",")]
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    task = embedded_task_model(progress=False)
    model, tok = task.model, task.tokenizer
    model.eval()
    train, test = load_dataset("rotten_tomatoes", "train"), load_dataset("rotten_tomatoes", "test")
    test_batches = make_batches(test, tok, batch_size=128, max_length=args.seq_len, sort_by_length=True)

    def accuracy(m) -> float:
        return evaluate(m, test_batches, dtype=args.eval_dtype).accuracy

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    print(json.dumps(machine_info()), flush=True)
    if seeds:
        sweep(model, tok, train, seeds, keeps, criteria, args, accuracy, emit)
    if args.time_criterion:
        time_pipeline(model, train, tok, args, accuracy, emit)


def sweep(model, tok, train, seeds, keeps, criteria, args, accuracy, emit) -> None:
    """Every (seed, keep_flops, criterion): accuracy after search, rearrangement and reconstruction."""
    dense = accuracy(model)
    emit({"dense_accuracy": dense, "eval_dtype": args.eval_dtype})
    results: dict = {}
    for seed in seeds:
        calibration, refit_on = [make_batches(train, tok, batch_size=args.batch_size, max_length=args.seq_len,
                                              shuffle=True, seed=seed, limit=n, sort_by_length=True)
                                 for n in (args.calibration, args.reconstruct_examples)]
        scores = cached_scores(model, calibration, criteria, seed, args)
        for keep in keeps:
            for crit in criteria:
                reference = None if crit == "fisher" else scores["fisher"]
                search = dc.plan(model, scores[crit], keep_flops=keep, seq_len=args.seq_len, reference=reference)
                rearranged = rearrange(search, scores["fisher"])
                slim = dc.prune(model, rearranged)
                refit = dc.reconstruct(slim, model, refit_on, dtype=args.pipeline_dtype)
                accs = {"search": accuracy(dc.prune(model, search)), "+rearrange": accuracy(slim),
                        "+reconstruct": accuracy(refit)}
                for stage, acc in accs.items():
                    results.setdefault((keep, crit, stage), []).append(acc)
                emit({"seed": seed, "keep_flops": keep, "criterion": crit, **accs,
                      "heads": [len(h) for h in search.heads], "neurons": [len(n) for n in search.neurons]})
    print_table(results, dense, keeps, criteria)


def cached_scores(model, calibration: list, criteria: list[str], seed: int, args) -> dict:
    """Unit scores of every criterion (and Fisher) for one calibration seed, from the cache when there."""
    args.cache.mkdir(parents=True, exist_ok=True)
    tag = f"n{args.calibration}-b{args.batch_size}-s{args.seq_len}-seed{seed}"
    out: dict = {}
    missing = []
    for crit in dict.fromkeys([*criteria, "fisher"]):
        path = args.cache / (f"{crit}-{tag}{'-N%d' % args.noise_samples if 'smooth' in crit else ''}"
                             f"{'' if args.pipeline_dtype == 'fp32' else '-' + args.pipeline_dtype}.safetensors")
        if path.is_file():
            out[crit] = dc.Scores.load(path)
        else:
            missing.append((crit, path))
    if missing:
        fresh = dc.score_many(model, calibration, [c for c, _ in missing], granularity="unit",
                              noise_samples=args.noise_samples, seed=seed, dtype=args.pipeline_dtype, progress=False)
        for crit, path in missing:
            fresh[crit].save(path)
            out[crit] = fresh[crit]
    return out


def print_table(results: dict, dense: float, keeps: list[float], criteria: list[str]) -> None:
    """Markdown table: accuracy drop from dense in points, mean and [min, max] over seeds."""
    print(f"\ndense accuracy {dense:.4f}; drop from dense in points, mean [min, max] over seeds\n")
    print("| keep_flops | criterion | seeds | " + " | ".join(STAGES) + " |")
    print("|---|---|---|" + "---|" * len(STAGES))
    for keep in keeps:
        for crit in criteria:
            if (keep, crit, STAGES[0]) not in results:
                continue
            cells = []
            for stage in STAGES:
                drops = [100 * (dense - a) for a in results[(keep, crit, stage)]]
                cells.append(f"{statistics.mean(drops):.2f} [{min(drops):.2f}, {max(drops):.2f}]")
            print(f"| {keep:g} | {crit} | {len(results[(keep, crit, STAGES[0])])} | " + " | ".join(cells) + " |")


def summarise(paths: list[Path]) -> None:
    """The table of results read back from --json files (one dense accuracy, same eval dtype)."""
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    dense = {r["dense_accuracy"] for r in rows if "dense_accuracy" in r}
    if len(dense) != 1:
        raise SystemExit(f"the files hold {len(dense)} different dense accuracies; summarise one evaluation setup")
    results: dict = {}
    for r in (r for r in rows if "criterion" in r):
        for stage in STAGES:
            results.setdefault((r["keep_flops"], r["criterion"], stage), []).append(r[stage])
    keeps = sorted({k for k, _, _ in results}, reverse=True)
    criteria = list(dict.fromkeys(c for _, c, _ in results))
    print_table(results, dense.pop(), keeps, criteria)


def time_pipeline(model, train, tok, args, accuracy, emit) -> None:
    """Whole pipeline (scores + plan + rearrange + prune + reconstruction) at keep_flops 0.5, seed 0,
    then the accuracy of its slim model (and the dense one, same evaluation) outside the timing."""
    calibration, refit_on = [make_batches(train, tok, batch_size=args.batch_size, max_length=args.seq_len,
                                          shuffle=True, seed=0, limit=n, sort_by_length=True)
                             for n in (args.calibration, args.reconstruct_examples)]
    start, cpu = time.perf_counter(), time.process_time()
    slim, _, info = dc.prune_without_retraining(model, calibration, keep_flops=0.5, criterion=args.time_criterion,
                                             seq_len=args.seq_len, reconstruct_batches=refit_on,
                                             dtype=args.pipeline_dtype)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    emit({"pipeline_criterion": args.time_criterion, "pipeline_dtype": args.pipeline_dtype,
          "pipeline_wall_s": round(wall, 1), "pipeline_cpu_s": round(cpu, 1), **info["timings"],
          "threads": torch.get_num_threads(), "accuracy": accuracy(slim), "dense_accuracy": accuracy(model)})


if __name__ == "__main__":
    main()
