"""Retraining-free structured pruning on the embedded task: accuracy drop from dense per
FLOP budget, criterion and stage, over calibration draws, each against Fisher with its uncertainty,
and the whole-pipeline time.

MiniLM-L6 fine-tuned on the embedded Rotten Tomatoes split (`minilm-rt`); calibration = training
snippets drawn with each seed (and, with --first-draw, the fixed first N training snippets as one more
draw, "first"); evaluation = the 2,000 test snippets (seq 64, sorted by length).
Stages of the one-shot method: "search" (global FLOP search on the criterion's scores rank-matched to
Fisher), "+rearrange" (Fisher mask rearrangement), "+reconstruct" (least-squares refit of the output
projections). `--methods one-shot,iterative,iterative-criterion` adds the stages "iterative"
(`dc.prune_without_retraining(..., method="iterative")`: each sublayer's units chosen by the output error they
leave), "iterative-criterion" (`selection="criterion"`: chosen by the criterion's scores) and
"iterative-output-heads" (heads by output error, neurons by the criterion's scores) on the same scores
and snippets, each also compared with the one-shot "+reconstruct" stage of the same criterion. Scores are computed once per draw for all criteria
and cached (--cache); the pipeline time is measured separately with `dc.prune_without_retraining` (one-shot)
on a fresh scoring pass.

The table gives per (keep_flops, criterion, stage) the mean drop from dense in points and its min-max
range over the draws, and against Fisher at the same budget and stage the accuracy difference pooled over
the draws both ran on (each test example's correctness averaged over those draws): its 95% paired-bootstrap
interval over the test examples (2,000 seeded resamples), McNemar's exact p (the sign test on the pooled
correctness) and the verdict (the better one only where p < 0.05 and the interval excludes 0, else tie).

    python benchmarks/bench_retraining_free.py [--seeds 0,1,2] [--first-draw] [--keep 0.75,0.5,0.33] \
        [--criteria fisher,cam-cut,gradient,magnitude,smooth-cut] [--methods one-shot,iterative] \
        [--time-criterion fisher] [--json out.jsonl]
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
from deepcuts_fast.task import embedded_task_model  # noqa: E402
from deepcuts_fast.machine import machine_info  # noqa: E402
from deepcuts_fast.planning import rearrange  # noqa: E402
from deepcuts_fast.stats import compare, decode_ids, encode_ids  # noqa: E402
from deepcuts_fast.train import evaluate  # noqa: E402

STAGES = ("search", "+rearrange", "+reconstruct")  # the one-shot method, step by step
SELECTION = {"iterative": "output", "iterative-criterion": "criterion",  # which units each iterative sublayer keeps
             "iterative-output-heads": "output-heads"}
METHOD_STAGES = {"one-shot": STAGES, **{m: (m,) for m in SELECTION}}
REFERENCE = "fisher"  # every criterion is compared with this one at the same budget, stage and draws
FIRST = "first"  # the draw of the first N training snippets (--first-draw)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="calibration seeds (which training snippets); '' times only")
    ap.add_argument("--first-draw", action="store_true",
                    help="one more calibration draw: the first --calibration training snippets, unshuffled")
    ap.add_argument("--methods", default="one-shot",
                    help="methods of dc.prune_without_retraining, comma-separated: one-shot (its three stages), "
                         "iterative (method='iterative': units chosen by output error), iterative-criterion "
                         "(method='iterative', selection='criterion': units chosen by the criterion's scores)")
    ap.add_argument("--keep", default="0.75,0.5,0.33", help="fractions of encoder FLOPs kept")
    ap.add_argument("--criteria", default="fisher,cam-cut,gradient,magnitude,smooth-cut")
    ap.add_argument("--calibration", type=int, default=2048, help="calibration snippets per seed")
    ap.add_argument("--reconstruct-examples", type=int, default=512,
                    help="snippets (the first of the calibration set) the least-squares refit uses")
    ap.add_argument("--noise-samples", type=int, default=10, help="N for smooth-cut")
    ap.add_argument("--noise-scale", choices=("relative", "absolute"), default="relative",
                    help="smooth-cut's sigma: a fraction of each layer's output std, or an absolute value")
    ap.add_argument("--noise-std", type=float, default=None,
                    help="smooth-cut's sigma (default: 0.15 relative, 1e-3 absolute)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64, help="max tokens; also the FLOP budget's sequence length")
    ap.add_argument("--eval-dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="precision of the test evaluation (auto: bf16 only where this machine runs it natively)")
    ap.add_argument("--time-criterion", default="fisher", help="criterion of the timed whole-pipeline run ('' skips)")
    ap.add_argument("--time-methods", default="one-shot,iterative",
                    help="methods of the timed runs, comma-separated (one-shot first gives the iterative/one-shot ratio)")
    ap.add_argument("--pipeline-dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="precision of the scoring and reconstruction forwards (grid and timed pipeline; auto: bf16 "
                         "only where this machine runs it natively)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/deepcuts_fast/bench7", help="scores cache")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    ap.add_argument("--summarise", type=Path, nargs="+", default=None,
                    help="only print the table of earlier --json files (runs split over seeds or criteria)")
    args = ap.parse_args(argv)
    if args.noise_std is None:
        args.noise_std = 0.15 if args.noise_scale == "relative" else 1e-3
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarise:
        summarise(args.summarise)
        return
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    draws = [*seeds, *([FIRST] if args.first_draw else [])]
    keeps = [float(k) for k in args.keep.split(",")]
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_STAGES]
    if unknown or not methods:
        raise SystemExit(f"--methods takes {', '.join(METHOD_STAGES)}; got {args.methods!r}")
    task = embedded_task_model(progress=False)
    model, tok = task.model, task.tokenizer
    model.eval()
    train, test = load_dataset("rotten_tomatoes", "train"), load_dataset("rotten_tomatoes", "test")
    test_batches = make_batches(test, tok, batch_size=128, max_length=args.seq_len, sort_by_length=True)

    def accuracy(m):
        """The test EvalResult: accuracy and the per-example predictions the comparisons pair."""
        return evaluate(m, test_batches, dtype=args.eval_dtype)

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    print(json.dumps(machine_info()), flush=True)
    if draws:
        sweep(model, tok, train, draws, keeps, criteria, methods, args, accuracy, emit)
    if args.time_criterion:
        time_pipeline(model, train, tok, args, accuracy, emit)


def draw_batches(train, tok, draw, n: int, args) -> list:
    """The first `n` snippets of a draw: a seeded shuffle of the training set, or its first snippets (FIRST)."""
    order = {"shuffle": False} if draw == FIRST else {"shuffle": True, "seed": draw}
    return make_batches(train, tok, batch_size=args.batch_size, max_length=args.seq_len, limit=n,
                        sort_by_length=True, **order)


def sweep(model, tok, train, draws, keeps, criteria, methods, args, accuracy, emit) -> None:
    """Every (draw, keep_flops, criterion, method): accuracy (and per-example predictions) of each stage."""
    dense = accuracy(model)
    emit({"dense_accuracy": dense.accuracy, "eval_dtype": args.eval_dtype, "labels": encode_ids(dense.labels)})
    results: dict = {}  # (keep, criterion, stage) -> {draw: (accuracy, predictions)}
    for draw in draws:
        calibration, refit_on = [draw_batches(train, tok, draw, n, args)
                                 for n in (args.calibration, args.reconstruct_examples)]
        scores = cached_scores(model, calibration, criteria, draw, args)
        for keep in keeps:
            for crit in criteria:
                for method in methods:
                    evals = run_method(model, method, crit, keep, scores, calibration, refit_on, args, accuracy)
                    for stage, (r, _) in evals.items():
                        results.setdefault((keep, crit, stage), {})[draw] = (r.accuracy, np.asarray(r.predictions))
                    plan = next(iter(evals.values()))[1]
                    emit({"seed": draw, "keep_flops": keep, "criterion": crit, "method": method,
                          **{stage: r.accuracy for stage, (r, _) in evals.items()},
                          "heads": [len(h) for h in plan.heads], "neurons": [len(n) for n in plan.neurons],
                          "predictions": {stage: encode_ids(r.predictions) for stage, (r, _) in evals.items()}})
    stages = [st for m in methods for st in METHOD_STAGES[m]]
    print_table(results, dense.accuracy, np.asarray(dense.labels), keeps, criteria, stages)


def run_method(model, method, crit, keep, scores, calibration, refit_on, args, accuracy) -> dict:
    """{stage: (EvalResult, plan whose kept counts the row reports)} of one method. The one-shot stages are
    computed step by step (search, rearranged, refit); the iterative method through `dc.prune_without_retraining`,
    which gets `method=` only here, so the one-shot sweep runs on versions without that parameter."""
    if method in SELECTION:
        slim, plan, _ = dc.prune_without_retraining(model, calibration, keep, criterion=crit, seq_len=args.seq_len,
                                                    reconstruct_batches=refit_on, dtype=args.pipeline_dtype,
                                                    scores={c: scores[c] for c in {crit, REFERENCE}},
                                                    method="iterative", selection=SELECTION[method])
        return {method: (accuracy(slim), plan)}
    reference = None if crit == REFERENCE else scores[REFERENCE]
    search = dc.plan(model, scores[crit], keep_flops=keep, seq_len=args.seq_len, reference=reference)
    rearranged = rearrange(search, scores[REFERENCE])
    slim = dc.prune(model, rearranged)
    refit = dc.reconstruct(slim, model, refit_on, dtype=args.pipeline_dtype)
    return {"search": (accuracy(dc.prune(model, search)), search), "+rearrange": (accuracy(slim), search),
            "+reconstruct": (accuracy(refit), search)}


def cached_scores(model, calibration: list, criteria: list[str], seed: int | str, args) -> dict:
    """Unit scores of every criterion (and Fisher) for one calibration draw, from the cache when there."""
    args.cache.mkdir(parents=True, exist_ok=True)
    tag = f"n{args.calibration}-b{args.batch_size}-s{args.seq_len}-seed{seed}"
    out: dict = {}
    missing = []
    for crit in dict.fromkeys([*criteria, "fisher"]):
        noise = f"-N{args.noise_samples}-{args.noise_scale}{args.noise_std:g}" if "smooth" in crit else ""
        path = args.cache / (f"{crit}-{tag}{noise}"
                             f"{'' if args.pipeline_dtype == 'fp32' else '-' + args.pipeline_dtype}.safetensors")
        if path.is_file():
            out[crit] = dc.Scores.load(path)
        else:
            missing.append((crit, path))
    if missing:
        fresh = dc.score_many(model, calibration, [c for c, _ in missing], granularity="unit",
                              noise_samples=args.noise_samples, noise_scale=args.noise_scale, noise_std=args.noise_std, seed=seed if isinstance(seed, int) else 0,
                              dtype=args.pipeline_dtype, progress=False)
        for crit, path in missing:
            fresh[crit].save(path)
            out[crit] = fresh[crit]
    return out


def against_reference(results: dict, keep: float, crit: str, stage: str, labels: np.ndarray | None):
    """`stats.compare` of `crit` with Fisher at the same budget and stage, pooled over the draws both ran on; None
    for Fisher itself or without per-example predictions."""
    return against(results, (keep, crit, stage), (keep, REFERENCE, stage), labels)


def against_one_shot(results: dict, keep: float, crit: str, stage: str, labels: np.ndarray | None):
    """`stats.compare` of an iterative stage with the one-shot method's last stage, same criterion and budget;
    None for the one-shot stages themselves."""
    return None if stage in STAGES else against(results, (keep, crit, stage), (keep, crit, STAGES[-1]), labels)


def against(results: dict, key: tuple, ref_key: tuple, labels: np.ndarray | None):
    """`stats.compare` of the results at `key` with those at `ref_key`, pooled over the draws both ran on."""
    mine, ref = results[key], results.get(ref_key, {})
    shared = [d for d in mine if d in ref]
    if key == ref_key or labels is None or not shared or any(mine[d][1] is None or ref[d][1] is None for d in shared):
        return None
    return compare(np.stack([mine[d][1] for d in shared]), np.stack([ref[d][1] for d in shared]), labels,
                   names=(f"{key[1]} {key[2]}", f"{ref_key[1]} {ref_key[2]}"))


def print_table(results: dict, dense: float, labels, keeps: list[float], criteria: list[str],
                stages: list[str]) -> None:
    """Markdown table: per (keep_flops, criterion, stage) the drop from dense in points, mean [min, max] over the
    draws, and the difference from Fisher pooled over the draws with its 95% CI, McNemar p and verdict."""
    draws = sorted({d for v in results.values() for d in v}, key=str)
    print(f"\ndense accuracy {dense:.4f}; drop from dense in points, mean [min, max] over the draws "
          f"({', '.join(map(str, draws))}); vs {REFERENCE}: accuracy of the criterion minus {REFERENCE}'s at the same "
          "budget and stage, in points, pooled over the draws both ran on (each test example's correctness "
          "averaged over them), with its 95% paired-bootstrap interval (2,000 resamples of the test examples) and "
          "McNemar's exact p (sign test on the pooled correctness); the verdict names the better one only where "
          "p < 0.05 and the interval excludes 0; vs one-shot: the same for an iterative stage against the one-shot "
          f"method's {STAGES[-1]} stage of the same criterion and budget\n")
    print(f"| keep_flops | criterion | stage | draws | drop (points) mean [min, max] | vs {REFERENCE} (points) "
          "[95% CI] | p | verdict | vs one-shot (points) [95% CI], p, verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for keep in keeps:
        for crit in criteria:
            for stage in stages:
                cell = results.get((keep, crit, stage))
                if not cell:
                    continue
                drops = [100 * (dense - acc) for acc, _ in cell.values()]
                c = against_reference(results, keep, crit, stage, labels)
                vs = "" if c is None else (f"{100 * c.diff:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}] | "
                                           f"{c.p:.3g} | {c.verdict}")
                o = against_one_shot(results, keep, crit, stage, labels)
                vs_one_shot = "-" if o is None else (f"{100 * o.diff:+.2f} [{100 * o.ci_low:+.2f}, "
                                                     f"{100 * o.ci_high:+.2f}], p={o.p:.3g}, {o.verdict}")
                print(f"| {keep:g} | {crit} | {stage} | {len(cell)} | {statistics.mean(drops):.2f} [{min(drops):.2f}, "
                      f"{max(drops):.2f}] | " + (vs or "- | - | -") + f" | {vs_one_shot} |")


def summarise(paths: list[Path]) -> None:
    """The table of results read back from --json files (one dense accuracy, same eval dtype); the comparisons
    with Fisher need the per-example predictions that files written by this version carry."""
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    dense = {r["dense_accuracy"] for r in rows if "dense_accuracy" in r}
    if len(dense) != 1:
        raise SystemExit(f"the files hold {len(dense)} different dense accuracies; summarise one evaluation setup")
    labels = next((decode_ids(r["labels"]) for r in rows if "dense_accuracy" in r and r.get("labels")), None)
    results: dict = {}
    stages: list[str] = []
    for r in (r for r in rows if "criterion" in r):
        for stage in METHOD_STAGES[r.get("method", "one-shot")]:
            if stage not in r:
                continue
            stages += [stage] if stage not in stages else []
            pred = (r.get("predictions") or {}).get(stage)
            results.setdefault((r["keep_flops"], r["criterion"], stage), {})[r["seed"]] = (
                r[stage], None if pred is None else decode_ids(pred))
    keeps = sorted({k for k, _, _ in results}, reverse=True)
    criteria = list(dict.fromkeys(c for _, c, _ in results))
    print_table(results, dense.pop(), labels, keeps, criteria, stages)


def forward_backward(model, batches: list, dtype: str) -> float:
    """Seconds of one forward+backward pass with weight gradients over `batches` in the pipeline's precision: the
    floor of any gradient-based pruning method (gradients are cleared afterwards)."""
    from deepcuts_fast.precision import autocast, choose

    autocast_dtype = choose("score", "cpu", dtype).autocast_dtype
    start = time.perf_counter()
    for b in batches:
        with autocast("cpu", autocast_dtype):
            loss = model(**b).loss
        loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def time_pipeline(model, train, tok, args, accuracy, emit) -> None:
    """At keep_flops 0.5, seed 0, in one run: one forward+backward pass over the calibration set (after a short
    warm-up), then the whole pipeline (scores + plan + ... + refit) with each of --time-methods; their wall times,
    the ratios to that pass and to the one-shot method, and each slim model's accuracy (outside the timing)."""
    calibration, refit_on = [make_batches(train, tok, batch_size=args.batch_size, max_length=args.seq_len,
                                          shuffle=True, seed=0, limit=n, sort_by_length=True)
                             for n in (args.calibration, args.reconstruct_examples)]
    if args.reconstruct_examples >= args.calibration:  # the whole draw: the pipeline's default, as a user runs it
        refit_on = None
    forward_backward(model, calibration[:2], args.pipeline_dtype)  # warm-up: one-time kernel and allocator setup
    floor = forward_backward(model, calibration, args.pipeline_dtype)
    emit({"forward_backward_s": round(floor, 1), "examples": sum(len(b["labels"]) for b in calibration),
          "pipeline_dtype": args.pipeline_dtype, "threads": torch.get_num_threads()})
    walls = {}
    for method in [m.strip() for m in args.time_methods.split(",") if m.strip()]:
        start, cpu = time.perf_counter(), time.process_time()
        slim, _, info = dc.prune_without_retraining(model, calibration, keep_flops=0.5, criterion=args.time_criterion,
                                                 seq_len=args.seq_len, reconstruct_batches=refit_on,
                                                 dtype=args.pipeline_dtype, method=method)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        walls[method] = wall
        emit({"pipeline_criterion": args.time_criterion, "method": method, "pipeline_dtype": args.pipeline_dtype,
              "pipeline_wall_s": round(wall, 1), "pipeline_cpu_s": round(cpu, 1),
              "x_forward_backward": round(wall / floor, 2),
              **({"x_one_shot": round(wall / walls["one-shot"], 2)} if "one-shot" in walls and method != "one-shot"
                 else {}),
              **info["timings"], "refit_targets": info.get("refit_targets"), "threads": torch.get_num_threads(),
              "accuracy": accuracy(slim).accuracy})


if __name__ == "__main__":
    main()
