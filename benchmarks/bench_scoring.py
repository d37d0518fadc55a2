"""Benchmark `dc.score` against the autograd floor and the original DeepCuts loop.

MiniLM-L6 (packaged), CPU, batches of B=16 x 64 tokens (padded to 64), N noise samples.
Reports the median time per calibration batch over several repetitions (after a warm-up) of:

  (a) the original DeepCuts loop (benchmarks/original_deepcuts.py): N sequential train-mode passes;
  (b) the autograd floor: one eval-mode forward + loss.backward() over the N x B stacked batch
      (all parameters require grad, nothing else), for N = noise samples and N = 1;
  (c) dc.score: smooth-cut / cam-cut, weight and unit granularity (unit_method first-order / sum), with the
      library's default noise (relative: 0.15 of each output's std), and smooth-cut with the paper's absolute 1e-3;
  (d) dc.score smooth-cut under bf16 autocast, and the overlap of its global top-10% mask with fp32.
Every dc.score row runs twice: on the PyTorch path (backend="torch") and on the fused kernels (the
`fused` columns: backend="auto", i.e. the C++ extension on CPU, CUDA/Triton on a GPU).

Smooth criteria (N noisy copies) are compared with the N-sample floor, cam-cut (one clean pass) with
the 1-sample floor. Methods are interleaved inside each repetition so that machine noise hits all
of them alike; every method gets the same batches.

    python benchmarks/bench_scoring.py [--batches 2] [--repeats 3] [--noise-samples 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.data import load_dataset, make_batches  # noqa: E402
from deepcuts_fast.kernels import resolve as resolve_backend  # noqa: E402
from deepcuts_fast.benchmarking.latency import (  # noqa: E402
    NOISY_SPREAD, load_average, load_warnings, noise_warning, sample_stats)
from deepcuts_fast.machine import describe_cpu, machine_info  # noqa: E402
from deepcuts_fast.precision import cpu_bf16  # noqa: E402
from original_deepcuts import original_smooth_cut  # noqa: E402

TARGETS = {
    "smooth_weight_vs_floor": 1.15,  # smooth-cut (weight) <= 1.15 x floor(N)
    "original_vs_smooth_weight": 1.5,  # original >= 1.5 x slower than smooth-cut (weight)
    "unit_first_order_vs_floor": 0.8,  # unit first-order <= 0.8 x floor
    "bf16_vs_floor": 0.6,  # smooth-cut bf16 <= 0.6 x fp32 floor(N)
    "bf16_overlap": 0.95,  # top-10% mask overlap bf16 vs fp32 >= 0.95
    "fused_smooth_weight_vs_floor": 1.05,  # fused smooth-cut (weight) <= 1.05 x floor(N), at the CPU's precision
}
ABSOLUTE = {"noise_scale": "absolute", "noise_std": 1e-3}  # the paper's sigma, for the cost of relative noise


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=2, help="calibration batches (16 x 64 tokens each)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed repetitions per method (median and IQR reported; each is a whole scoring run)")
    ap.add_argument("--noise-samples", type=int, default=10, help="N for the smooth criteria")
    ap.add_argument("--original-batches", type=int, default=None,
                    help="batches the (slow) original loop is timed on (default: min(2, --batches))")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--skip-original", action="store_true", help="do not time the original loop")
    ap.add_argument("--json", type=str, default=None, help="write raw timings and results here")
    ap.add_argument("--methods", type=str, default=None,
                    help="comma-separated method keys to time (e.g. floor_n,smooth_w_fused); default: all. "
                         "The PyTorch-path smooth rows draw Philox noise with integer tensor ops and are slow")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# timed methods; each returns (seconds, result or None) for one run over its batches


def _stacked(batch, n):
    return {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in batch.items()}


def floor_fn(model, batches, n, dtype=None):
    """Eval-mode forward + loss.backward() over the n x B stacked batch, all params requiring grad."""
    stacked = [_stacked(b, n) for b in batches]

    def run():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        t0 = time.perf_counter()
        for inputs in stacked:
            model.zero_grad(set_to_none=True)
            if dtype is None:
                loss = model(**inputs).loss
            else:
                with torch.autocast("cpu", dtype=dtype):
                    loss = model(**inputs).loss
            loss.backward()
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        return dt, None

    return run


def original_fn(model, batches, n):
    def run():
        t0 = time.perf_counter()
        out = original_smooth_cut(model, batches, noise_samples=n, noise_std=1e-3, seed=0)
        return time.perf_counter() - t0, out

    return run


def dc_fn(model, batches, criterion, n, seed_from_rep=False, backend="torch", **kw):
    """dc.score with the library's default noise (relative, 0.15 of each output's std) unless `kw` says otherwise."""
    kw.setdefault("dtype", torch.float32)  # the fp32 rows stay fp32 on machines where "auto" means bf16

    def run(rep=0):
        t0 = time.perf_counter()
        out = dc.score(model, batches, criterion, noise_samples=n, progress=False,
                       seed=rep if seed_from_rep else 0, backend=backend, **kw)
        return time.perf_counter() - t0, out

    return run


# ----------------------------------------------------------------------------------------------


def top_fraction_overlap(a, b, fraction=0.1, keys=None):
    """Fraction of a's global top-`fraction` entries (over all `keys`) that b's global top also keeps."""
    keys = keys if keys is not None else [k for k in a if k.endswith(".weight")]
    fa = torch.cat([torch.as_tensor(a[k]).float().reshape(-1) for k in keys])
    fb = torch.cat([torch.as_tensor(b[k]).float().reshape(-1) for k in keys])
    k = max(1, int(math.ceil(fraction * fa.numel())))
    keep_a = torch.zeros(fa.numel(), dtype=torch.bool)
    keep_a[torch.topk(fa, k, sorted=False).indices] = True
    return float(keep_a[torch.topk(fb, k, sorted=False).indices].sum()) / k


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.noise_samples
    info = machine_info()
    load_start = load_average()
    print(f"# {info['processor']} ({info['isa']}) | {info['logical_cpus']} logical CPUs | torch {info['torch']} | "
          f"torch.get_num_threads()={info['threads']} | loadavg at start {load_start}", flush=True)
    for warning in load_warnings(load_start, None, os.cpu_count()):
        print(f"WARNING: {warning}", flush=True)

    tok = dc.load_tokenizer("minilm")
    model = dc.load_model("minilm", num_labels=2, seed=0)
    # timed as a classifier through the labels loss, as the floor computes it: marked trained, so objective "auto"
    # does not switch to distilling the pooled embeddings (another computation, with one more forward per batch)
    model.config.architectures = ["BertForSequenceClassification"]
    data = load_dataset("rotten_tomatoes", "train")
    batches = make_batches(data, tok, batch_size=args.batch_size, max_length=args.seq_len,
                           pad_to_max_length=True, limit=args.batches * args.batch_size)
    n_orig = min(args.original_batches or min(2, args.batches), len(batches))
    print(f"# MiniLM-L6, {len(batches)} batches of {args.batch_size} x {args.seq_len} tokens, N={n}, "
          f"repeats={args.repeats}, original timed on {n_orig} batch(es)", flush=True)

    methods = {  # key -> (label, runner, batches it runs over, N)
        "floor_1": ("(b) autograd floor, N=1", floor_fn(model, batches, 1), len(batches), 1),
        "floor_n": (f"(b) autograd floor, N={n}", floor_fn(model, batches, n), len(batches), n),
        "smooth_w": ("(c) dc smooth-cut, weight", dc_fn(model, batches, "smooth-cut", n, seed_from_rep=True),
                     len(batches), n),
        "smooth_w_abs": ("(c) dc smooth-cut, weight, absolute noise 1e-3",
                         dc_fn(model, batches, "smooth-cut", n, **ABSOLUTE), len(batches), n),
        "cam_w": ("(c) dc cam-cut, weight", dc_fn(model, batches, "cam-cut", n), len(batches), 1),
        "smooth_u_fo": ("(c) dc smooth-cut, unit first-order",
                        dc_fn(model, batches, "smooth-cut", n, granularity="unit", unit_method="first-order"),
                        len(batches), n),
        "smooth_u_sum": ("(c) dc smooth-cut, unit sum",
                         dc_fn(model, batches, "smooth-cut", n, granularity="unit", unit_method="sum"),
                         len(batches), n),
        "cam_u_fo": ("(c) dc cam-cut, unit first-order",
                     dc_fn(model, batches, "cam-cut", n, granularity="unit", unit_method="first-order"),
                     len(batches), 1),
        "cam_u_sum": ("(c) dc cam-cut, unit sum",
                      dc_fn(model, batches, "cam-cut", n, granularity="unit", unit_method="sum"), len(batches), 1),
        "floor_n_bf16": (f"(b') autograd floor, N={n}, bf16 autocast", floor_fn(model, batches, n, torch.bfloat16),
                         len(batches), n),
        "smooth_w_bf16": ("(d) dc smooth-cut, weight, bf16 autocast",
                          dc_fn(model, batches, "smooth-cut", n, dtype=torch.bfloat16), len(batches), n),
    }
    fused_backend = resolve_backend("auto", next(model.parameters()).device)
    for key in [k for k, m in methods.items() if m[0].startswith(("(c)", "(d)"))]:
        label, _, nb, nn_ = methods[key]
        kw = {"cam_w": ("cam-cut", {}), "smooth_w": ("smooth-cut", {}), "smooth_w_abs": ("smooth-cut", ABSOLUTE),
              "smooth_u_fo": ("smooth-cut", dict(granularity="unit", unit_method="first-order")),
              "smooth_u_sum": ("smooth-cut", dict(granularity="unit", unit_method="sum")),
              "cam_u_fo": ("cam-cut", dict(granularity="unit", unit_method="first-order")),
              "cam_u_sum": ("cam-cut", dict(granularity="unit", unit_method="sum")),
              "smooth_w_bf16": ("smooth-cut", dict(dtype=torch.bfloat16))}[key]
        methods[key + "_fused"] = (label + f", fused ({fused_backend})",
                                   dc_fn(model, batches, kw[0], n, backend=fused_backend, **kw[1]), nb, nn_)
    if not args.skip_original:
        methods["original"] = (f"(a) original DeepCuts, N={n} sequential", original_fn(model, batches[:n_orig], n),
                               n_orig, n)
    if args.methods:
        wanted = args.methods.split(",")
        unknown = sorted(set(wanted) - set(methods))
        if unknown:
            raise SystemExit(f"unknown method keys {unknown}; choose from {sorted(methods)}")
        methods = {k: v for k, v in methods.items() if k in wanted}
    native, why = cpu_bf16()
    if not native and any("bf16" in k for k in methods):
        if args.methods:
            print(f"WARNING: bf16 rows requested, but {why}", flush=True)
        else:
            methods = {k: v for k, v in methods.items() if "bf16" not in k}
            print(f"# bf16 rows skipped: {why}", flush=True)

    # warm-up: every timed method once, untimed
    t_warm = time.perf_counter()
    for key, (_, fn, _, _) in methods.items():
        if key != "original":
            fn()
    print(f"# warm-up {time.perf_counter() - t_warm:.1f}s", flush=True)

    times: dict[str, list[float]] = {k: [] for k in methods}
    results: dict[str, list] = {k: [] for k in ("smooth_w", "smooth_w_bf16") if k in methods}
    keys = list(methods)
    t_bench = time.perf_counter()
    for rep in range(args.repeats):
        order = keys[rep % len(keys):] + keys[:rep % len(keys)]  # rotate so no method always runs first
        for key in order:
            label, fn, nb, _ = methods[key]
            dt, out = fn(rep) if key == "smooth_w" else fn()
            times[key].append(dt / nb)
            if key in results and len(results[key]) < 2:
                results[key].append(out)
            print(f"  rep {rep} {label:<44s} {dt / nb:8.3f} s/batch", flush=True)
    bench_s = time.perf_counter() - t_bench
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}
    iqr = {k: sample_stats(v)["iqr_ms"] for k, v in times.items()}  # the same statistics as dc.benchmark (seconds)

    def ratio(a, b, stat=med):
        return stat[a] / stat[b] if a in stat and b in stat else float("nan")

    floor_of = {k: ("floor_n" if methods[k][3] == n else "floor_1") for k in methods}
    floor_of.update(floor_1="floor_1", floor_n="floor_n")

    # overlaps: bf16 vs fp32 (seed 0), and fp32 seed 0 vs seed 1 (noise-to-noise context)
    fp32_runs, bf16_runs = results.get("smooth_w", []), results.get("smooth_w_bf16", [])
    overlap_bf16 = top_fraction_overlap(fp32_runs[0], bf16_runs[0]) if fp32_runs and bf16_runs else None
    overlap_seed = top_fraction_overlap(fp32_runs[0], fp32_runs[1]) if len(fp32_runs) > 1 else None

    rows = []
    for key in ["original", "floor_1", "floor_n", "smooth_w", "cam_w", "smooth_u_fo", "smooth_u_sum",
                "cam_u_fo", "cam_u_sum", "floor_n_bf16", "smooth_w_bf16"]:
        fused = key + "_fused" if key + "_fused" in med else None
        if key not in methods and fused is None:
            continue
        label, _, nb, nn_ = methods[key if key in methods else fused]
        label = label if key in methods else label.rsplit(", fused", 1)[0]
        fl = floor_of[key if key in methods else fused]
        rows.append({
            "key": key, "method": label, "N": nn_, "batches": nb, "median_s_per_batch": med.get(key, float("nan")),
            "min_s": min(times.get(key) or [float("nan")]), "max_s": max(times.get(key) or [float("nan")]),
            "iqr_s": iqr.get(key, float("nan")),
            "floor": fl,
            "x_floor": ratio(key, fl), "x_floor_n": ratio(key, "floor_n"),
            "original_speedup": ratio("original", key) if "original" in med else None,
            "fused_median_s_per_batch": med[fused] if fused else None,
            "fused_x_floor": ratio(fused, fl) if fused else None,
        })

    checks = []

    def check(name, pair, op, target):
        """`pair` = (a, b): ratio of method a to method b; or a plain value (the mask overlap)."""
        if isinstance(pair, tuple) and not all(k in med for k in pair) or pair is None:
            return
        if isinstance(pair, tuple):
            value, value_min = ratio(*pair), ratio(*pair, stat=mins)
        else:
            value, value_min = pair, None
        ok = value <= target if op == "<=" else value >= target
        checks.append({"target": name, "value": value, "value_from_minimums": value_min, "op": op,
                       "threshold": target, "met": bool(ok)})

    check(f"smooth-cut weight / floor(N={n})", ("smooth_w", "floor_n"), "<=", TARGETS["smooth_weight_vs_floor"])
    check(f"fused smooth-cut weight / floor(N={n})", ("smooth_w_fused", "floor_n"), "<=",
          TARGETS["fused_smooth_weight_vs_floor"])
    if "original" in med:
        check("original / smooth-cut weight (speed-up)", ("original", "smooth_w"), ">=",
              TARGETS["original_vs_smooth_weight"])
    check(f"smooth-cut unit first-order / floor(N={n})", ("smooth_u_fo", "floor_n"), "<=",
          TARGETS["unit_first_order_vs_floor"])
    check("cam-cut unit first-order / floor(N=1)", ("cam_u_fo", "floor_1"), "<=",
          TARGETS["unit_first_order_vs_floor"])
    check(f"fused smooth-cut weight bf16 / bf16 floor(N={n})", ("smooth_w_bf16_fused", "floor_n_bf16"), "<=",
          TARGETS["fused_smooth_weight_vs_floor"])
    check(f"smooth-cut bf16 / fp32 floor(N={n})", ("smooth_w_bf16", "floor_n"), "<=", TARGETS["bf16_vs_floor"])
    check("bf16 vs fp32 top-10% mask overlap", overlap_bf16, ">=", TARGETS["bf16_overlap"])

    load_end = load_average()
    # ------------------------------------------------------------------ report
    print()
    print(f"Median seconds per calibration batch ({args.batch_size} x {args.seq_len} tokens), "
          f"{args.repeats} repeats, {describe_cpu()}; "
          "'x own floor' = vs floor(N) for smooth rows, floor(N=1) for cam-cut rows.")
    print()
    print("| method | N | s / batch (median) | IQR | min – max | x own floor | x floor(N=%d) | original / this "
          "| fused s / batch | fused x own floor |" % n)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sp = r["original_speedup"]
        fs, fx = r["fused_median_s_per_batch"], r["fused_x_floor"]
        print(f"| {r['method']} | {r['N']} | {r['median_s_per_batch']:.3f} | {r['iqr_s']:.3f} | "
              f"{r['min_s']:.3f} – {r['max_s']:.3f} | "
              f"{r['x_floor']:.2f} ({r['floor'].replace('floor_n', f'N={n}').replace('floor_1', 'N=1')}) | "
              f"{r['x_floor_n']:.2f} | {'' if sp is None else f'{sp:.2f}x'} | "
              f"{'' if fs is None else f'{fs:.3f}'} | {'' if fx is None else f'{fx:.2f}'} |")
    print()
    if overlap_bf16 is not None:
        print(f"top-10% global mask overlap (weights), smooth-cut bf16 vs fp32: {overlap_bf16:.4f}")
    if overlap_seed is not None:
        print(f"top-10% global mask overlap (weights), smooth-cut fp32 seed 0 vs seed 1: {overlap_seed:.4f}")
    print()
    print("| target | value (medians) | value (minimums) | threshold | result (medians) |")
    print("|---|---:|---:|---:|---|")
    for c in checks:
        vmin = "" if c["value_from_minimums"] is None else f"{c['value_from_minimums']:.3f}"
        print(f"| {c['target']} | {c['value']:.3f} | {vmin} | {c['op']} {c['threshold']} | "
              f"{'met' if c['met'] else 'MISSED'} |")
    print()
    warnings = [noise_warning(methods[key][0], med[key], spread) for key, spread in iqr.items()
                if spread > NOISY_SPREAD * med[key]]
    for warning in warnings + load_warnings(load_start, load_end, os.cpu_count()):
        print(f"WARNING: {warning}")
    print(f"# timed part {bench_s:.0f}s; loadavg start {load_start}, end {load_end}")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "args": vars(args), "loadavg_start": load_start, "loadavg_end": load_end,
            "times_s_per_batch": times, "rows": rows, "checks": checks,
            "overlap_bf16_vs_fp32": overlap_bf16, "overlap_fp32_seed0_vs_seed1": overlap_seed,
        }, indent=2))
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
