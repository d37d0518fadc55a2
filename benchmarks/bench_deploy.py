"""The deployment comparison, measured side by side in one benchmark run per model family: dense and slim, built
by every installed runtime of `deepcuts_fast.runtimes` (torch, ONNX Runtime, OpenVINO) in every precision it offers
on this machine (fp32, int8, bf16 only where native), with the test accuracy of every MiniLM variant. Every row is
compared with dense torch fp32 and with the fastest dense variant of the same run, which the table names.

MiniLM: `minilm-rt` (the packaged MiniLM-L6 fine-tuned on the embedded reviews) and its slim model from
`dc.prune_without_retraining(keep_flops=0.5)` (one-shot with `--criterion`, by default the pipeline's, 2,048
calibration reviews at seq 64 that also serve the refit, the first 256 of them calibrate OpenVINO int8, no
fine-tuning of the slim model).
MiniLM shape: the packaged MiniLM-L6 with a random 2-class head (nothing fine-tuned) and its slim model from a
magnitude plan at keep_flops 0.5 (latency only). BERT-base shape: a random BERT (hidden 768, 12 layers, 12 heads,
FFN 3072; no download), sliced the same way (latency only: their accuracy means nothing; OpenVINO int8 is then
calibrated on random token ids). Latency: median and IQR at `--batch-sizes`, sequence 128, after warm-up until
steady, in interleaved rounds; the allocator, threads and CPU are printed with the table.

    python benchmarks/bench_deploy.py [--families minilm,minilm-shape,bert-base] [--batch-sizes 1,32]
        [--runtimes torch,ort,openvino] [--repeats 10] [--out /tmp/deploy] [--keep 0.5] [--drop-layers 0]
        [--criterion cam-cut]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from benchmarks.model_families import dense_model  # noqa: E402
from deepcuts_fast.data import encode_labels, load_dataset, make_batches  # noqa: E402
from deepcuts_fast.benchmarking.deployment import compare_deployment, deployment_table  # noqa: E402
from deepcuts_fast.machine import allocator, describe_cpu  # noqa: E402
from deepcuts_fast.pipeline import DEFAULT_CRITERION  # noqa: E402
from deepcuts_fast.precision import choose  # noqa: E402

KEEP = 0.5


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="minilm,bert-base", help=f"comma-separated, of {', '.join(FAMILIES)}")
    ap.add_argument("--batch-sizes", default="1,32", help="comma-separated, e.g. 1,32")
    ap.add_argument("--runtimes", default=None, help="comma-separated runtimes (default: every installed one)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="folder for the artifacts (default: a temp folder)")
    ap.add_argument("--keep", type=float, default=KEEP, help="keep_flops of the slim models")
    ap.add_argument("--drop-layers", type=int, default=0,
                    help="minilm: also remove this many whole layers (the least important by dc.layer_importance on "
                         "the calibration reviews; the shape-only models: the last ones)")
    ap.add_argument("--criterion", default=DEFAULT_CRITERION["one-shot"],
                    help="minilm: the pipeline's criterion (default: its one-shot default)")
    args = ap.parse_args(argv)
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}: choose from {', '.join(FAMILIES)}")
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        ap.error(f"--batch-sizes takes comma-separated positive integers such as 1,32, got {args.batch_sizes!r}")
    bf16 = choose("infer", torch.device("cpu"), "auto").name == "bf16"
    print(f"machine: {describe_cpu()}; {allocator()}; bf16 native: {bf16}", flush=True)
    for family in families:
        dense, slim, tok, test, calibration = FAMILIES[family](args.keep, args.drop_layers, args.criterion)
        print(f"{family} slim (keep_flops {args.keep}, layers kept {getattr(slim.config, 'deepcuts_layer_ids', 'all')}): "
              f"heads per layer {slim.config.deepcuts_heads}, "
              f"FFN neurons per layer {slim.config.deepcuts_ffn}", flush=True)
        folder = None if args.out is None else args.out / family
        result = compare_deployment(dense, slim, tok, folder, test=test, calibration=calibration,
                                    runtimes=None if args.runtimes is None else args.runtimes.split(","),
                                    batch_sizes=batches, seq_len=128, repeats=args.repeats,
                                    log=lambda m: print(m, flush=True))
        print(f"\n## {family}\n", flush=True)
        for batch in batches:
            print("\n".join(deployment_table(result, batch)) + "\n", flush=True)
        for w in result["benchmark"]["warnings"]:
            print(f"Warning: {w}.")


def minilm(keep: float = KEEP, drop_layers: int = 0,
           criterion: str = DEFAULT_CRITERION["one-shot"]) -> tuple[nn.Module, nn.Module, object, list, list]:
    task = dc.task_model("minilm-rt", progress=False)
    model, tok = task.model, task.tokenizer
    train = encode_labels(load_dataset("rotten_tomatoes", "train"), model.config)
    test = encode_labels(load_dataset("rotten_tomatoes", "test"), model.config)
    calibration = make_batches(train, tok, batch_size=64, max_length=64, shuffle=True, seed=0, limit=2048,
                               sort_by_length=True)
    slim, _, info = dc.prune_without_retraining(model, calibration, keep_flops=keep, seq_len=128,
                                                drop_layers=drop_layers or None, criterion=criterion)
    print(f"minilm slim ({info['criterion']}): {info['flops_kept']:.3f} of the FLOPs, pipeline "
          f"{info['timings']['total']:.1f} s", flush=True)
    test = make_batches(test, tok, batch_size=64, max_length=64, sort_by_length=True)
    return model, slim, tok, test, calibration[:4]  # 256 reviews calibrate OpenVINO int8, as dc.deploy's default


def shape_only(family: str, keep: float = KEEP, drop_layers: int = 0) -> tuple[nn.Module, nn.Module, object, None, None]:
    """A family's dense model (`model_families.dense_model`) and its slim model from a magnitude plan at KEEP,
    for latency only (no test data; int8 calibrated on random token ids)."""
    model, tok = dense_model(family), dc.load_tokenizer("minilm")  # BERT's 30,522-token vocabulary, as MiniLM's
    scores = dc.score(model, None, "magnitude", granularity="unit", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # magnitude scores have no Fisher estimate: normalised per layer
        layers = model.config.num_hidden_layers
        plan = dc.plan(model, scores, keep_flops=keep, seq_len=128,
                       drop_layers=list(range(layers - drop_layers, layers)) or None)
    return model, dc.prune(model, plan), tok, None, None


FAMILIES = {"minilm": minilm,  # the shape-only models are sliced by magnitude: no criterion
            "minilm-shape": lambda keep, drop, criterion: shape_only("minilm", keep, drop),
            "bert-base": lambda keep, drop, criterion: shape_only("bert-base", keep, drop)}

if __name__ == "__main__":
    main()
