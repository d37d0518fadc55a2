"""What the latency benchmarks share: the model families they time, their dense models, and the command-line
flags that pick them (`bench_latency.py`, `bench_speedup_plan.py`; `bench_deploy.py` takes its random BERT-base)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from torch import nn

import deepcuts_fast as dc

FAMILIES = ("minilm", "bert-base")


def comma_list(cast: Callable) -> Callable[[str], list]:
    """An argparse type: 'a,b,c' -> [cast(a), cast(b), cast(c)], empty items dropped."""
    return lambda text: [cast(v) for v in text.split(",") if v.strip()]


def add_family_args(ap: argparse.ArgumentParser) -> None:
    """--models and --dtypes, as both benchmarks take them."""
    ap.add_argument("--models", type=comma_list(str), default=list(FAMILIES), help=f"subset of {','.join(FAMILIES)}")
    ap.add_argument("--dtypes", type=comma_list(str), default=["fp32", "auto"],
                    help="fp32, bf16, fp16 or auto (the fastest native dtype); duplicates once resolved run once")


def check_family_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse unknown families, and a CUDA device torch cannot see (before "auto" asks the GPU its name)."""
    unknown = sorted(set(args.models) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {', '.join(FAMILIES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA GPU here; use --device cpu")


def dense_model(family: str) -> nn.Module:
    """The dense model of a family: the packaged MiniLM with a random 2-class head, or a seeded random BERT-base
    (BertConfig defaults: hidden 768, 12 heads, FFN 3072, 12 layers). Where the packaged MiniLM is not installed
    (the GPU image), a random model of its shape stands in: latency depends on shapes only."""
    from transformers import BertConfig, BertForSequenceClassification

    if family == "minilm":
        try:
            return dc.load_model("minilm", num_labels=2).eval()
        except dc.DeepCutsError:
            print("packaged MiniLM not installed: timing a random-weight model of its shape", file=sys.stderr)
            config = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6,
                                num_labels=2)
    else:
        config = BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12,
                            num_labels=2)
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()
