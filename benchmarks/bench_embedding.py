"""Label-free pruning of a sentence-embedding model: all-MiniLM-L6-v2 (`minilm`: mean pooling + Normalize) pruned
without retraining from unlabelled Rotten Tomatoes train texts (labels dropped; `objective="distill"`: the scores'
gradients come from the model's own pooled embedding), evaluated on held-out test texts against the dense model.

Per kept FLOP fraction and calibration draw (a seeded shuffle of the train split, its first --examples texts):
`dc.prune_without_retraining(model, batches, keep, objective="distill", ...)`, one scoring pass per draw shared by
the budgets (`dc.score_many(..., granularity="unit")`). Metrics (`deepcuts_fast.embedding_metrics`) on the first
--test-examples test texts: mean cosine between slim and dense embeddings (goal >= 0.95), nearest-neighbour
overlap@10 among those texts (goal >= 0.70), and a frozen-embedding logistic-regression probe (each model's probe
fitted on its own embeddings of the first --probe-examples train texts with their labels, accuracy on the test
texts; goal: within 1.0 point of dense), slim - dense with its 95% paired-bootstrap interval and McNemar's exact p,
pooled over the draws (each test example's correctness averaged over them). Latency: dense and slim fp32, batch
32 x --max-length, median of interleaved rounds (`dc.benchmark`), slim/dense speedup per draw. The table gives the
mean over the draws and, in brackets, the worst draw. `--baselines magnitude` adds data-free magnitude unit scores
(`dc.score` -> `dc.plan` -> `dc.prune`, no calibration, no refit; one row per budget).

    python benchmarks/bench_embedding.py [--examples 2000] [--test-examples 2000] [--probe-examples 2000] \
        [--keep 0.5,0.33] [--seeds 0,1] [--max-length 128] [--criterion fisher] [--method one-shot] \
        [--baselines magnitude] [--rounds 10] [--json out.jsonl]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.data import load_dataset, make_batches  # noqa: E402
from deepcuts_fast.embedding_metrics import embed, mean_cosine, neighbour_overlap, probe_predictions  # noqa: E402
from deepcuts_fast.machine import machine_info  # noqa: E402
from deepcuts_fast.scoring.objective import sentence_pooling  # noqa: E402
from deepcuts_fast.stats import compare, decode_ids, encode_ids, points  # noqa: E402

RECOVERED = "distill + label-free recovery (dc.distill)"
GOALS = {"cosine": 0.95, "overlap": 0.70, "probe_points": 1.0}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="unlabelled calibration texts per draw (train split)")
    ap.add_argument("--test-examples", type=int, default=2000, help="held-out texts evaluated (test split)")
    ap.add_argument("--probe-examples", type=int, default=2000, help="labelled train texts the probes are fitted on")
    ap.add_argument("--keep", default="0.5,0.33", help="fractions of encoder FLOPs kept, comma-separated")
    ap.add_argument("--seeds", default="0,1", help="calibration draws (seeds of the train-split shuffle)")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text; also the FLOP budget's and "
                                                                "the latency's sequence length")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--criterion", default="fisher", help="criterion of dc.prune_without_retraining")
    ap.add_argument("--method", default="one-shot", choices=("one-shot", "iterative"))
    ap.add_argument("--no-reconstruct", action="store_true", help="one-shot without the least-squares refit")
    ap.add_argument("--recover-epochs", type=float, default=0.0,
                    help="then also dc.distill the slim model on the same calibration texts for this many epochs")
    ap.add_argument("--recover-lr", type=float, default=1e-4, help="learning rate of the label-free recovery")
    ap.add_argument("--hidden-weight", type=float, default=1.0, help="weight of the hidden-state loss of dc.distill")
    ap.add_argument("--baselines", default="", help="'magnitude': data-free magnitude scores, plan, prune")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (batch 32); 0 skips latency")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    ap.add_argument("--summarise", type=Path, default=None,
                    help="only print the table of an earlier --json file (a finished or an interrupted run)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarise:
        summarise(args.summarise, args)
        return
    torch.set_num_threads(args.threads)
    keeps = [float(k) for k in args.keep.split(",") if k.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    model, tok = dc.load_model("minilm"), dc.load_tokenizer("minilm")
    pooling, normalize = sentence_pooling(model.config._name_or_path)
    train, test = load_dataset("rotten_tomatoes", "train"), load_dataset("rotten_tomatoes", "test")
    batching = dict(batch_size=args.batch_size, max_length=args.max_length, sort_by_length=True)
    test_batches = make_batches(test, tok, limit=args.test_examples, **batching)
    probe_batches = make_batches(train, tok, limit=args.probe_examples, **batching)
    labels = np.concatenate([b["labels"].numpy() for b in test_batches])
    probe_labels = np.concatenate([b["labels"].numpy() for b in probe_batches])

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def embeddings(m) -> tuple[torch.Tensor, torch.Tensor]:
        """(test, probe-train) embeddings of a model, pooled as the dense folder says, fp32."""
        return tuple(embed(m, b, pooling=pooling, normalize=normalize) for b in (test_batches, probe_batches))

    emit({"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
          "pooling": pooling, "normalize": normalize, "load_1min": os.getloadavg()[0]})
    dense_test, dense_train = embeddings(model)
    dense_pred = probe_predictions(dense_train, probe_labels, dense_test)
    emit({"row": "dense", "probe_accuracy": float(np.mean(dense_pred == labels)), "predictions": encode_ids(dense_pred),
          "labels": encode_ids(labels)})

    def evaluate(name: str, keep: float, draw, slim, extra: dict) -> dict:
        slim_test, slim_train = embeddings(slim)
        pred = probe_predictions(slim_train, probe_labels, slim_test)
        cosine, cosine_min = mean_cosine(slim_test, dense_test)
        row = {"row": name, "keep": keep, "draw": draw, "cosine": cosine, "cosine_min": cosine_min,
               "overlap": neighbour_overlap(slim_test, dense_test), "predictions": pred.tolist(),
               "probe_accuracy": float(np.mean(pred == labels)), **extra}
        row["probe_points"] = 100 * (row["probe_accuracy"] - float(np.mean(dense_pred == labels)))
        emit({**row, "predictions": encode_ids(pred)})
        return row

    rows = []
    options = dict(criterion=args.criterion, seq_len=args.max_length, method=args.method, objective="distill",
                   reconstruct=not args.no_reconstruct, dtype="fp32", progress=False)
    for seed in seeds:
        calibration = make_batches(train, tok, limit=args.examples, shuffle=True, seed=seed, **batching)
        calibration = [{k: v for k, v in b.items() if k != "labels"} for b in calibration]  # label-free
        t = time.perf_counter()
        scores = dc.score_many(model, calibration, list(dict.fromkeys([args.criterion, "fisher"])),
                               granularity="unit", dtype="fp32", seed=seed, progress=False, objective="distill")
        score_s = time.perf_counter() - t
        slims = {}
        for keep in keeps:
            t = time.perf_counter()
            slim, plan, info = dc.prune_without_retraining(model, calibration, keep, scores=scores, seed=seed,
                                                           **options)
            slims[keep] = slim
            extra = {"achieved": plan.achieved,
                     "score_s": score_s, "prune_s": time.perf_counter() - t, "objective": info.get("objective")}
            rows.append(evaluate("distill", keep, seed, slim, extra))
            if args.recover_epochs:
                t = time.perf_counter()
                slim = dc.distill(slim, model, calibration, epochs=args.recover_epochs, lr=args.recover_lr,
                                  hidden_weight=args.hidden_weight, seed=seed, dtype="fp32", progress=False)
                rows.append(evaluate(RECOVERED, keep, seed, slim, {**extra, "recover_s": time.perf_counter() - t}))
        if args.rounds:
            speed = latency(model, slims, args)
            for row in rows:
                if row["draw"] == seed and row["row"] == "distill":
                    row.update(speed[row["keep"]])
                    emit({"row": "latency", "of": "distill", "keep": row["keep"], "draw": seed, **speed[row["keep"]]})
    if "magnitude" in args.baselines:
        scores = dc.score(model, None, criterion="magnitude", granularity="unit", progress=False)
        slims = {keep: dc.prune(model, dc.plan(model, scores, keep_flops=keep, seq_len=args.max_length))
                 for keep in keeps}
        speed = latency(model, slims, args) if args.rounds else {}
        rows += [evaluate("magnitude (data-free)", keep, "-", slim, speed.get(keep, {}))
                 for keep, slim in slims.items()]
    table(rows, labels, dense_pred, args)


def summarise(path: Path, args) -> None:
    """The table of the rows an earlier run wrote to its --json file, latency rows joined to their models."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    dense = next(r for r in lines if r.get("row") == "dense")
    settings = next(r["args"] for r in lines if "args" in r)
    for name in ("examples", "probe_examples", "max_length"):
        setattr(args, name, settings[name])
    rows = [{**r, "predictions": decode_ids(r["predictions"])} for r in lines
            if r.get("row") not in (None, "dense", "latency")]
    for t in (r for r in lines if r.get("row") == "latency"):
        for row in rows:
            if (row["row"], row["keep"], row["draw"]) == (t["of"], t["keep"], t["draw"]):
                row.update({k: v for k, v in t.items() if k not in ("row", "of", "keep", "draw")})
    table(rows, decode_ids(dense["labels"]), decode_ids(dense["predictions"]), args)


def latency(dense, slims: dict, args) -> dict:
    """{keep: dense and slim median ms with IQR, speedup} at batch 32 x --max-length, fp32, interleaved rounds."""
    report = dc.benchmark([dense, *slims.values()], batch_sizes=(32,), seq_lens=(args.max_length,), dtype="fp32",
                          warmup=2, repeats=args.rounds, min_time=None, threads=args.threads,
                          names=["dense", *map(str, slims)])
    base = report.rows[0]
    for w in report.warnings:
        print(f"latency warning: {w}", file=sys.stderr)
    return {keep: {"dense_ms": base["median_ms"], "dense_iqr_ms": base["iqr_ms"], "slim_ms": row["median_ms"],
                   "slim_iqr_ms": row["iqr_ms"], "speedup": row["speedup"], "noisy": row["noisy"] or base["noisy"]}
            for keep, row in zip(slims, report.rows[1:])}


def table(rows: list[dict], labels: np.ndarray, dense_pred: np.ndarray, args) -> None:
    """The markdown table: per (row kind, keep) the mean over draws and [worst draw] of each metric, the pooled
    probe comparison, the latency, and the goals."""
    dense_acc = float(np.mean(dense_pred == labels))
    print(f"\ndense probe accuracy {100 * dense_acc:.2f}%; {len(labels)} test texts, {args.probe_examples} probe "
          f"train texts, {args.examples} calibration texts per draw, max length {args.max_length}\n")
    print("| pruning | keep FLOPs | draws | cosine, mean [worst] | NN@10 overlap, mean [worst] | "
          "probe acc. slim - dense, pts, mean [worst] | pooled over draws: 95% CI, McNemar | "
          "dense ms [IQR] | slim ms [IQR] | speedup | goals (cos >= 0.95, NN >= 0.70, probe within 1 pt) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["row"] for r in rows):
        for keep in dict.fromkeys(r["keep"] for r in rows if r["row"] == name):
            group = [r for r in rows if r["row"] == name and r["keep"] == keep]
            cos = [r["cosine"] for r in group]
            nn = [r["overlap"] for r in group]
            pts = [r["probe_points"] for r in group]
            pooled = compare(np.asarray([r["predictions"] for r in group]), dense_pred, labels,
                             names=("slim", "dense")).to_dict()
            ms = [r for r in group if "slim_ms" in r]
            timing = (f"{statistics.mean(r['dense_ms'] for r in ms):.0f} [{max(r['dense_iqr_ms'] for r in ms):.0f}] | "
                      f"{statistics.mean(r['slim_ms'] for r in ms):.0f} [{max(r['slim_iqr_ms'] for r in ms):.0f}] | "
                      f"{statistics.mean(r['speedup'] for r in ms):.2f}x" if ms else "- | - | -")
            goals = [min(cos) >= GOALS["cosine"], min(nn) >= GOALS["overlap"],
                     min(pts) >= -GOALS["probe_points"]]
            print(f"| {name} | {keep:g} | {len(group)} | {statistics.mean(cos):.4f} [{min(cos):.4f}] | "
                  f"{statistics.mean(nn):.4f} [{min(nn):.4f}] | {statistics.mean(pts):+.2f} [{min(pts):+.2f}] | "
                  f"{points(pooled)} | {timing} | {' / '.join('PASS' if g else 'MISS' for g in goals)} |")


if __name__ == "__main__":
    main()
