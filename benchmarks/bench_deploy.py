"""The deployment comparison, measured side by side in one benchmark run per model family: dense and slim,
torch and ONNX Runtime, fp32 and int8 (and torch bf16 where this machine runs bf16 natively), with the
test accuracy of every MiniLM variant.

MiniLM: `minilm-rt` (the packaged MiniLM-L6 fine-tuned on the embedded reviews) and its slim model from
`dc.prune_without_retraining(keep_flops=0.5)` (Fisher, one-shot, 2,048 calibration reviews at seq 64 that
also serve the refit, no fine-tuning).
BERT-base shape: a random BERT (hidden 768, 12 layers, 12 heads, FFN 3072; no download) and its slim
model from a magnitude plan at keep_flops 0.5 (latency only: its accuracy means nothing).
ONNX rows are `dc.export(..., optimize=True)` files, the int8 ones with `quantize="int8"` (ONNX Runtime
dynamic quantization, per channel). Torch bf16 rows are bf16 copies of the torch models, timed in the
same run as the fp32 ones. Latency: median and IQR at batch 1 and 32, sequence 128; speedup over dense
torch fp32 of the same run. Accuracy: the 2,000 embedded test reviews (sequence 64).

    python benchmarks/bench_deploy.py [--families minilm,bert-base] [--repeats 10] [--out /tmp/deploy]
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
from deepcuts_fast.machine import describe_cpu  # noqa: E402
from deepcuts_fast.precision import choose  # noqa: E402
from deepcuts_fast.benchmarking.deployment import compare_deployment, deployment_table  # noqa: E402

KEEP = 0.5


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="minilm,bert-base")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="folder for the ONNX files (default: a temp folder)")
    args = ap.parse_args(argv)
    bf16 = choose("infer", torch.device("cpu"), "auto").name == "bf16"
    print(f"machine: {describe_cpu()}; bf16 native: {bf16}", flush=True)
    for family in args.families.split(","):
        dense, slim, tok, test = FAMILIES[family]()
        print(f"{family} slim: heads per layer {slim.config.deepcuts_heads}, "
              f"FFN neurons per layer {slim.config.deepcuts_ffn}", flush=True)
        folder = None if args.out is None else args.out / family
        result = compare_deployment(dense, slim, tok, folder, test=test, batch_sizes=(1, 32), seq_len=128,
                                    repeats=args.repeats, bf16=bf16, log=lambda m: print(m, flush=True))
        print(f"\n## {family}\n", flush=True)
        for batch in (1, 32):
            print("\n".join(deployment_table(result, batch)) + "\n", flush=True)
        for w in result["benchmark"]["warnings"]:
            print(f"Warning: {w}.")


def minilm() -> tuple[nn.Module, nn.Module, object, list]:
    task = dc.task_model("minilm-rt", progress=False)
    model, tok = task.model, task.tokenizer
    train = encode_labels(load_dataset("rotten_tomatoes", "train"), model.config)
    test = encode_labels(load_dataset("rotten_tomatoes", "test"), model.config)
    calibration = make_batches(train, tok, batch_size=64, max_length=64, shuffle=True, seed=0, limit=2048,
                               sort_by_length=True)
    slim, _, info = dc.prune_without_retraining(model, calibration, keep_flops=KEEP, seq_len=128)
    print(f"minilm slim: {info['flops_kept']:.3f} of the FLOPs, pipeline {info['timings']['total']:.1f} s", flush=True)
    return model, slim, tok, make_batches(test, tok, batch_size=64, max_length=64, sort_by_length=True)


def bert_base() -> tuple[nn.Module, nn.Module, object, None]:
    model, tok = dense_model("bert-base"), dc.load_tokenizer("minilm")  # BERT's 30,522-token vocabulary, as MiniLM's
    scores = dc.score(model, None, "magnitude", granularity="unit", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # magnitude scores have no Fisher estimate: normalised per layer
        plan = dc.plan(model, scores, keep_flops=KEEP, seq_len=128)
    return model, dc.prune(model, plan), tok, None


FAMILIES = {"minilm": minilm, "bert-base": bert_base}

if __name__ == "__main__":
    main()
