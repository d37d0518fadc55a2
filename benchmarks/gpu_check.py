"""One prepared GPU check: dc.score on CUDA agrees with the CPU, and times of the PyTorch scoring path.

Run on a lent GPU (see benchmarks/RESULTS.md for the command): prints a correctness table and the
scoring times on a BERT-base-shaped random model, 32 x 128 tokens, N noise samples, against the
autograd floor (one forward+backward over the stacked batch) and the original sequential loop.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

import torch  # noqa: E402
from conftest import tiny_batches, tiny_model  # noqa: E402

import deepcuts_fast as dc  # noqa: E402


def agreement() -> list[str]:
    """CUDA scores vs CPU scores (no noise, so the draws cannot differ), and stacked == sequential on CUDA."""
    lines = ["| check | max relative error |", "|---|---|"]
    model, batches = tiny_model("bert"), tiny_batches()
    for crit in ("gradient", "cam-cut", "cam-cut-shift", "magnitude"):
        cpu = dc.score(model, batches, crit, dtype=torch.float32, progress=False)
        gpu = dc.score(model.cuda(), batches, crit, dtype=torch.float32, progress=False)
        model.cpu()
        err = max(float((gpu[k].cpu() - cpu[k]).abs().max() / cpu[k].abs().max().clamp_min(1e-30)) for k in cpu)
        lines.append(f"| {crit} cuda vs cpu | {err:.2e} |")
    model.cuda()
    kw = dict(noise_samples=4, noise_std=0.05, dtype=torch.float32, progress=False)
    a = dc.score(model, batches, "smooth-cam-cut", **kw)
    b = dc.score(model, batches, "smooth-cam-cut", sequential_noise=True, **kw)
    err = max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)
    lines.append(f"| smooth-cam-cut stacked vs sequential (cuda) | {err:.2e} |")
    return lines


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timings(batch: int, seq: int, n: int, repeats: int) -> list[str]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig()).cuda().eval()
    ids = torch.randint(1000, 30000, (batch, seq), device="cuda")
    data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (batch,), device="cuda")}]

    def floor(copies: int, dtype=None):
        def run():
            stacked = {k: v.repeat(copies, *[1] * (v.dim() - 1)) for k, v in data[0].items()}
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(**stacked).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    def reference_loop():
        for _ in range(n):
            loss = model(**data[0]).loss
            loss.backward()
            _ = [p.grad.detach().cpu().numpy() for p in model.parameters() if p.grad is not None]
            model.zero_grad(set_to_none=True)

    rows = [("autograd floor, N copies stacked, fp32", floor(n)),
            ("autograd floor, 1 copy, fp32", floor(1)),
            ("original-style loop (N sequential passes, grads to numpy)", reference_loop),
            ("dc.score smooth-cut weight, fp32", lambda: dc.score(model, data, "smooth-cut", noise_samples=n, dtype=torch.float32,
                                                                   progress=False)),
            ("dc.score cam-cut weight, fp32", lambda: dc.score(model, data, "cam-cut", dtype=torch.float32, progress=False)),
            ("dc.score smooth-cut unit first-order, fp32",
             lambda: dc.score(model, data, "smooth-cut", "unit", unit_method="first-order", noise_samples=n,
                              dtype=torch.float32, progress=False)),
            ("autograd floor, N copies stacked, bf16 autocast", floor(n, torch.bfloat16)),
            ("dc.score smooth-cut weight, bf16 autocast",
             lambda: dc.score(model, data, "smooth-cut", noise_samples=n, dtype=torch.bfloat16, progress=False))]
    lines = [f"BERT-base random, batch {batch} x {seq} tokens, N = {n}, {torch.cuda.get_device_name()}",
             "| method | median ms |", "|---|---|"]
    for name, fn in rows:
        lines.append(f"| {name} | {timed(fn, repeats):.1f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--noise-samples", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    out = agreement()
    print("\n".join(out), flush=True)
    out += [""] + timings(args.batch, args.seq, args.noise_samples, args.repeats)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
