"""`deepcuts bench`: the latency benchmark of a (slim) model folder or ONNX file, optionally against a baseline."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..locks import output_lock
from ..outputs import check_folder, write_folder
from ..precision import CHOICES
from .latency import benchmark

Loader = Callable[[str], nn.Module]
BENCH_FOLDER_KIND = "bench"  # the manifest kind of an --out folder (bench.json, bench.csv, bench.png)


def add_bench_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `bench` sub-command to a `deepcuts` sub-parser set; returns its parser."""
    p = subparsers.add_parser("bench", help="latency of a model (and a baseline) over batch sizes and sequence lengths")
    p.add_argument("--model", required=True, help="model folder (slim or dense), 'minilm', or an .onnx file")
    p.add_argument("--baseline", default=None,
                   help="model to compare against (folder, 'minilm' or .onnx); speedups are relative to it")
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1, 32], help="comma-separated, e.g. 1,32")
    p.add_argument("--seq-lens", type=_positive_ints, default=[128], help="comma-separated, e.g. 128,512")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=CHOICES, default="auto",
                   help="precision torch models run in; auto: the fastest one this device runs natively "
                        "(ONNX files run as exported)")
    p.add_argument("--repeats", type=int, default=20, help="at least this many timed passes per model and grid point")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="and at least this many seconds of timed passes per grid point (0: exactly --repeats)")
    p.add_argument("--warmup", type=int, default=3,
                   help="at least this many warm-up rounds, then more until the latency is steady (0: none)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads, set for the run and printed (default: torch's current count)")
    p.add_argument("--out", default=None, help="folder for bench.json, bench.csv and bench.png")
    p.add_argument("--overwrite", action="store_true", help="replace bench.json, bench.csv and bench.png in --out")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-measurement progress lines")
    return p


def run_bench_command(args: argparse.Namespace, load: Loader | None = None) -> int:
    """Run `deepcuts bench` for parsed `args`; `load` turns a model folder into a module (default: `_load`)."""
    out = Path(args.out) if args.out else None
    if out is None:
        return _bench(args, load, None)
    check_folder(out, _inputs(args), overwrite=args.overwrite, kind=BENCH_FOLDER_KIND, name="--out",
                 flag="--overwrite")  # before any model loads
    with output_lock(out):
        return _bench(args, load, out)


def _inputs(args: argparse.Namespace) -> dict[str, str | None]:
    return {"--model": args.model, "--baseline": args.baseline}


def _bench(args: argparse.Namespace, load: Loader | None, out: Path | None) -> int:
    """`deepcuts bench` once its --out files (if any) are checked and locked."""
    paths = [args.baseline, args.model] if args.baseline else [args.model]
    load = load or _load
    models = [p if p.endswith(".onnx") else load(p) for p in paths]
    report = benchmark(models, batch_sizes=args.batch_sizes, seq_lens=args.seq_lens, device=args.device,
                       dtype=args.dtype, warmup=args.warmup, repeats=args.repeats, min_time=args.min_time,
                       names=_names(paths), threads=args.threads, progress=not (args.quiet or args.json))
    written = []
    if out is not None:
        with write_folder(out, kind=BENCH_FOLDER_KIND, overwrite=args.overwrite, inputs=_inputs(args),
                          name="--out", flag="--overwrite") as tmp:
            written = [out / p.name for p in report.save(tmp)]
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(_header(report.settings) + "\n")
    print(report.table())
    if written:
        print(f"\nwrote {', '.join(map(str, written))}")
    return 0


def _header(s: dict) -> str:
    """How the numbers were sampled; the table's caption printed under it names the CPU (model, ISA,
    threads) or GPU and the dtype."""
    floor = f" and at least {s['min_time']:g} s per grid point" if s["min_time"] else ""
    return (f"median and IQR of at least {s['repeats']} timed runs per model{floor} on {s['device']}, "
            f"after warm-up ({s['warmup_rule']}) (speedup and FLOP ratio vs {s['models'][0]})")


def _load(path: str) -> nn.Module:
    """A model folder (slim or dense), 'minilm' or a hub name, as `dc.from_pretrained` loads it."""
    from ..pruning import from_pretrained

    return from_pretrained(path)


def _names(paths: list[str]) -> list[str]:
    names = [Path(p).name or p for p in paths]
    if len(set(names)) < len(names):
        names = [f"{role}:{n}" for role, n in zip(("baseline", "model"), names)]
    return names


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,32, got {text!r}")
    return values

