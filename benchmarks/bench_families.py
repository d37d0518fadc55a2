"""Dense vs slim fp32 latency of every registered encoder family: does each turn its FLOP reduction into speedup?

For every family in the registry (`deepcuts_fast.families.FAMILIES`, so a newly added family is benchmarked
without touching this script), a seeded random sequence classifier of base size (`Family.config(768, 12, 3072,
layers, num_labels=2)`: the family's own config names and released-checkpoint settings) is pruned to keep a
fraction of its encoder FLOPs through the public API: `dc.score(model, None, "magnitude", granularity="unit")`
(data-free), `dc.plan(model, scores, keep_flops=..., seq_len=...)`, `dc.prune`. Dense and slim then run fp32 torch
forwards (inference mode) on the same seeded random token ids from the family's vocabulary (with token_type_ids
where the family's tokenizer returns them), after warm-up, in interleaved rounds (one pass of each per round, the
project's `benchmarking` runners and sampling), at least --rounds rounds and --min-time seconds per family.

Reported per family: dense and slim median ms with IQR, speedup = dense / slim, FLOP reduction = dense encoder
FLOPs / slim encoder FLOPs (`flops.encoder_flops`, heads and FFN neurons only), and FLOP efficiency = speedup /
FLOP reduction, with PASS where it is >= 0.9 and MISS below. Embeddings, LayerNorms, residual adds and the
classifier head are not prunable and not counted, so they cap the efficiency; it is reported as measured.
A family whose build, pruning or timing fails gets an ERROR row with the error's first line (exit status 1).

    python benchmarks/bench_families.py [--families bert,roberta] [--layers 12] [--batch-size 8] [--seq-len 128]
        [--keep 0.5] [--rounds 20] [--min-time 0] [--warmup 3] [--threads N] [--seed 0]
        [--hidden 768 --heads 12 --ffn 3072] [--json PATH [--overwrite]]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from benchmarks.model_families import comma_list  # noqa: E402
from deepcuts_fast.benchmarking import latency  # noqa: E402
from deepcuts_fast.benchmarking.runners import TorchRunner  # noqa: E402
from deepcuts_fast.errors import first_line  # noqa: E402
from deepcuts_fast.families import FAMILIES, Family  # noqa: E402
from deepcuts_fast.flops import encoder_flops  # noqa: E402
from deepcuts_fast.machine import cpu_flags, describe_cpu, machine_info  # noqa: E402
from deepcuts_fast.outputs import check_file, write_text  # noqa: E402

TARGET = 0.9  # FLOP efficiency: measured speedup >= 0.9 x the encoder FLOP reduction
_ID_LOW = 5  # random ids start above the usual special ids (pad 0 / 1, cls, sep, ...), as dc.benchmark's do
# /proc/cpuinfo flags that decide fp32 / bf16 GEMM speed, printed as they are (machine.cpu_isa names the best one)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
_MALLOCS = ("jemalloc", "tcmalloc", "mimalloc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", type=comma_list(str), default=None,
                    help=f"subset of the registered families (default: all: {','.join(FAMILIES)})")
    ap.add_argument("--layers", type=int, default=12, help="encoder layers of every model")
    ap.add_argument("--hidden", type=int, default=768, help="hidden size (768: base)")
    ap.add_argument("--heads", type=int, default=12, help="attention heads (12: base)")
    ap.add_argument("--ffn", type=int, default=3072, help="FFN width (3072: base)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length of the FLOP target and the timing")
    ap.add_argument("--keep", type=float, default=0.5, help="keep_flops fraction of the slim model")
    ap.add_argument("--rounds", type=int, default=20, help="at least this many interleaved dense/slim rounds")
    ap.add_argument("--min-time", type=float, default=0.0, help="and at least this many seconds of rounds per family")
    ap.add_argument("--warmup", type=int, default=3, help="untimed passes of each model before the rounds")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's current count)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and token ids")
    ap.add_argument("--json", type=Path, default=None, help="also write the results (machine, settings, rows) here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = ap.parse_args(argv)
    if args.families is None:
        args.families = list(FAMILIES)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown or not args.families:
        ap.error(f"unknown families {unknown}; registered: {', '.join(FAMILIES)}")
    for name in ("layers", "hidden", "heads", "ffn", "batch_size", "seq_len", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.hidden % args.heads:
        ap.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    if not 0 < args.keep < 1:
        ap.error("--keep must be a fraction between 0 and 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.warmup < 0 or args.min_time < 0:
        ap.error("--warmup and --min-time must be >= 0")
    return args


def dense_model(family: Family, args: argparse.Namespace) -> nn.Module:
    """A seeded random fp32 sequence classifier of `family` with the benchmark's shape, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    config = family.config(args.hidden, args.heads, args.ffn, args.layers, num_labels=2)
    torch.manual_seed(args.seed)
    return AutoModelForSequenceClassification.from_config(config).float().eval()


def slim_model(model: nn.Module, keep: float, seq_len: int) -> tuple[nn.Module, dc.Plan]:
    """`model` pruned to `keep` of its encoder FLOPs at `seq_len` with data-free magnitude unit scores."""
    scores = dc.score(model, None, "magnitude", granularity="unit", progress=False)
    plan = dc.plan(model, scores, keep_flops=keep, seq_len=seq_len)
    return dc.prune(model, plan).eval(), plan


def feed(family: Family, model: nn.Module, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random token ids in the model's vocabulary, a full attention mask, and zero token_type_ids where
    the family's tokenizer returns them."""
    vocab = model.config.vocab_size
    ids = torch.randint(min(_ID_LOW, vocab - 1), vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in family.inputs:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def time_pair(dense: nn.Module, slim: nn.Module, inputs: dict[str, torch.Tensor], args: argparse.Namespace
              ) -> tuple[dict, dict]:
    """Median / IQR statistics of dense and slim: warm-up, then interleaved rounds (`latency`'s sampling)."""
    runners = [TorchRunner(m, torch.device("cpu"), torch.float32) for m in (dense, slim)]
    feeds = [inputs, inputs]
    with torch.inference_mode():
        for runner in runners:
            for _ in range(args.warmup):
                runner.run(inputs)
        samples = latency._sample(runners, feeds, args.rounds, args.min_time)
    return latency.sample_stats(samples[0]) | {"runs": len(samples[0])}, latency.sample_stats(samples[1]) | {
        "runs": len(samples[1])}


def measure_family(model_type: str, args: argparse.Namespace) -> dict:
    """One result row: the two models' latencies, their FLOP reduction and the efficiency, or the error."""
    family = FAMILIES[model_type]
    start = time.perf_counter()
    try:
        dense = dense_model(family, args)
        slim, plan = slim_model(dense, args.keep, args.seq_len)
        dense_flops, slim_flops = encoder_flops(dense, args.seq_len), encoder_flops(slim, args.seq_len)
        inputs = feed(family, dense, args.batch_size, args.seq_len, args.seed)
        d, s = time_pair(dense, slim, inputs, args)
    except Exception as e:  # a family that cannot be built, pruned or run is reported, the others still measured
        print(f"{model_type}: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
        return {"family": model_type, "error": f"{type(e).__name__}: {first_line(e)}"}
    speedup = d["median_ms"] / s["median_ms"]
    reduction = dense_flops / slim_flops
    row = {
        "family": model_type, "dense": d, "slim": s, "speedup": speedup, "flop_reduction": reduction,
        "flop_efficiency": speedup / reduction, "passed": speedup / reduction >= TARGET,
        "dense_encoder_flops": dense_flops, "slim_encoder_flops": slim_flops, "achieved": plan.achieved,
        "heads_kept": sum(map(len, plan.heads)), "heads": sum(plan.num_heads),
        "neurons_kept": sum(map(len, plan.neurons)), "neurons": sum(plan.ffn_widths),
        "vocab_size": dense.config.vocab_size, "inputs": list(inputs),
        "noisy": [name for name, st in (("dense", d), ("slim", s))
                  if st["iqr_ms"] > latency.NOISY_SPREAD * st["median_ms"]],
        "seconds": time.perf_counter() - start,
    }
    print(f"{model_type}: dense {d['median_ms']:.1f} ms, slim {s['median_ms']:.1f} ms, speedup {speedup:.2f}x, "
          f"FLOP reduction {reduction:.2f}x, efficiency {speedup / reduction:.2f} ({row['seconds']:.0f} s)",
          file=sys.stderr)
    return row


def allocator() -> str:
    """The heap allocator torch's CPU tensors come from: a preloaded jemalloc / tcmalloc / mimalloc, else libc's."""
    preloaded = [p for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split() if any(m in p for m in _MALLOCS)]
    if preloaded:
        return "LD_PRELOAD " + ", ".join(preloaded)
    libc, version = platform.libc_ver()
    return f"{libc or 'system'} {version} malloc (no LD_PRELOAD allocator)".replace("  ", " ")


def machine(threads: int) -> dict:
    """`machine_info()` with the one-line CPU description, the GEMM-relevant ISA flags, transformers and the
    allocator; called while the run's thread count is set."""
    import transformers

    flags = cpu_flags()
    info = machine_info() | {"description": describe_cpu(), "transformers": transformers.__version__,
                             "isa_flags": [f for f in ISA_FLAGS if f in flags], "allocator": allocator()}
    info["threads"] = threads
    return info


def machine_line(info: dict) -> str:
    """The machine in one line: CPU model, best ISA and threads, the ISA flags, versions, allocator, load."""
    flags = " ".join(info["isa_flags"]) or "none of " + "/".join(ISA_FLAGS)
    load = "/".join("?" if x is None else f"{x:.2f}" for x in (info["load_1min_before"], info["load_1min_after"]))
    return (f"machine: {info['description']}; ISA flags: {flags}; torch {info['torch']}, transformers "
            f"{info['transformers']}; allocator: {info['allocator']}; 1-min load average before/after {load}")


def table(rows: list[dict]) -> str:
    """Markdown: per family, dense / slim median [IQR], speedup, FLOP reduction, efficiency vs the target."""
    lines = [f"| family | dense ms, median [IQR] | slim ms, median [IQR] | speedup | FLOP reduction "
             f"| FLOP efficiency | >= {TARGET} |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | - | - | - | - | - | ERROR: {r['error'].replace('|', '/')} |")
            continue
        d, s = r["dense"], r["slim"]
        lines.append(f"| {r['family']} | {d['median_ms']:.1f} [{d['iqr_ms']:.1f}] | {s['median_ms']:.1f} "
                     f"[{s['iqr_ms']:.1f}] | {r['speedup']:.2f}x | {r['flop_reduction']:.2f}x | "
                     f"{r['flop_efficiency']:.2f} | {'PASS' if r['passed'] else 'MISS'} |")
    return "\n".join(lines)


def notes(rows: list[dict]) -> list[str]:
    """What the table does not show: units kept, inputs fed, noisy rows."""
    out = []
    for r in rows:
        if "error" in r:
            continue
        out.append(f"{r['family']}: kept {r['heads_kept']}/{r['heads']} heads, {r['neurons_kept']}/{r['neurons']} "
                   f"FFN neurons (keep_flops achieved {r['achieved'].get('keep_flops', float('nan')):.3f}); "
                   f"{r['dense']['runs']} rounds; inputs {', '.join(r['inputs'])}; vocab {r['vocab_size']}")
        if r["noisy"]:
            out.append(f"warning: noisy: {r['family']} {' and '.join(r['noisy'])} IQR above "
                       f"{latency.NOISY_SPREAD:.0%} of the median")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["bench_families.py", *(sys.argv[1:] if argv is None else argv)])
    if args.json is not None:
        check_file(args.json, overwrite=args.overwrite, name="--json", flag="--overwrite")
    old_threads = torch.get_num_threads()
    threads = args.threads or old_threads
    torch.set_num_threads(threads)
    try:
        print(f"threads: {threads} (torch intra-op; {'--threads' if args.threads else 'torch default'})",
              file=sys.stderr)
        load_before = latency.load_average()
        rows = [measure_family(t, args) for t in args.families]
        load_after = latency.load_average()
        info = machine(threads) | {"load_1min_before": load_before, "load_1min_after": load_after}
    finally:
        torch.set_num_threads(old_threads)
    warnings = latency.load_warnings(load_before, load_after, os.cpu_count())
    settings = {"command": command, "families": args.families, "shape": {
        "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn, "layers": args.layers},
        "batch_size": args.batch_size, "seq_len": args.seq_len, "keep_flops": args.keep, "criterion": "magnitude",
        "granularity": "unit", "dtype": "fp32", "rounds": args.rounds, "min_time": args.min_time,
        "warmup": args.warmup, "threads": threads, "seed": args.seed, "target_efficiency": TARGET}

    print(f"\n{command}")
    print(machine_line(info))
    print(f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, FFN {args.ffn}; batch {args.batch_size} x "
          f"seq {args.seq_len}; fp32; keep_flops {args.keep:g} (magnitude unit scores); at least {args.rounds} "
          f"interleaved rounds and {args.min_time:g} s per family after {args.warmup} warm-up passes\n")
    print(table(rows))
    print()
    print("\n".join(notes(rows) + [f"warning: {w}" for w in warnings]))
    if args.json is not None:
        text = json.dumps({"machine": info, "settings": settings, "rows": rows, "warnings": warnings}, indent=2)
        print(f"\nwrote {write_text(args.json, text + chr(10), overwrite=args.overwrite, name='--json')}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
