"""Structured mode: physically prune to a FLOP budget from each criterion's unit scores, then
measure accuracy single shot, after least-squares reconstruction, after recovery fine-tuning, and
the real latency of the slim models against the dense one."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..benchmarking import benchmark
from ..flops import encoder_flops
from ..pipeline import prune_without_retraining
from .. import planning
from ..planning import Plan
from ..pruning import prune, reconstruct
from ..scoring import Scores
from ..train import finetune
from .config import PIPELINE_METHODS
from .held_out import PREFIX, HeldOut

ERROR_BATCHES = 8  # calibration batches on which the layer-output error is reported


def _accuracy(model: nn.Module, evaluation: HeldOut) -> dict:
    """Test accuracy, loss, macro-F1 and per-example predictions, and validation accuracy where there is a
    validation split."""
    keys = ("accuracy", "loss", "macro_f1", "predictions", PREFIX + "accuracy")
    return {k: v for k, v in evaluation.metrics(model).items() if k in keys}


def prune_and_evaluate(model: nn.Module, scores: Scores, keep: float, seq_len: int, reconstruction: list,
                       evaluation: HeldOut, reference: list[torch.Tensor], dtype: str) -> dict:
    """Global plan at `keep` of the encoder FLOPs, pruned; accuracy single shot and reconstructed
    (reconstruction forwards in `dtype`)."""
    plan = planning.plan(model, scores, keep_flops=keep, seq_len=seq_len, scope="global")
    slim = prune(model, plan)
    single = _accuracy(slim, evaluation)
    start = time.perf_counter()
    refit_model = reconstruct(slim, model, reconstruction, dtype=dtype)
    seconds = time.perf_counter() - start
    refit = _accuracy(refit_model, evaluation)
    probe = reconstruction[:ERROR_BATCHES]
    return {**single, **{f"{k}_reconstructed": v for k, v in refit.items()},
            "reconstruct_seconds": round(seconds, 1),
            "output_error": output_error(slim, reference, probe),
            "output_error_reconstructed": output_error(refit_model, reference, probe),
            "heads": [len(h) for h in plan.heads], "ffn": [len(n) for n in plan.neurons],
            "params": sum(p.numel() for p in slim.parameters()),
            "flop_ratio": encoder_flops(model, seq_len) / encoder_flops(slim, seq_len), "seq_len": seq_len,
            "plan": plan.to_dict()}


@torch.no_grad()
def last_hidden(model: nn.Module, batches: list) -> list[torch.Tensor]:
    """The encoder's last hidden state on each batch's real tokens (the reference of `output_error`)."""
    out = []
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        out.append(model(**inputs, output_hidden_states=True).hidden_states[-1][inputs["attention_mask"].bool()])
    return out


def output_error(slim: nn.Module, reference: list[torch.Tensor], batches: list) -> float:
    """Relative squared error of the slim encoder's last hidden state against the dense `reference`."""
    err = sum(float((s - d).double().pow(2).sum()) for s, d in zip(last_hidden(slim, batches), reference))
    ref = sum(float(d.double().pow(2).sum()) for d in reference)
    return err / max(ref, 1e-30)


def retraining_free(model: nn.Module, criterion: str, keep: float, seq_len: int, scores: dict[str, Scores],
                    reconstruction: list, evaluation: HeldOut, probe: list, reference: list[torch.Tensor],
                    dtype: str, method: str = "one-shot") -> dict:
    """`dc.prune_without_retraining` at `keep` on shared unit scores with the job's `method` (`PIPELINE_METHODS`):
    accuracy, kept units, plan, timings. The output error is taken on `probe` (the same batches for every draw)
    against `reference`."""
    pipeline_method, selection = PIPELINE_METHODS[method]
    slim, plan, info = prune_without_retraining(model, reconstruction, keep, criterion=criterion, seq_len=seq_len,
                                                scores=scores, dtype=dtype, method=pipeline_method,
                                                selection=selection)
    return {**_accuracy(slim, evaluation), "heads": info["heads"], "ffn": info["neurons"],
            "flop_ratio": 1 / info["flops_kept"], "params": sum(p.numel() for p in slim.parameters()),
            "output_error": output_error(slim, reference, probe), "timings": info["timings"],
            "plan": plan.to_dict()}


def rebuild(model: nn.Module, row: dict, reconstruction: list, dtype: str) -> nn.Module:
    """The reconstructed slim model of a structured row, from its stored plan (deterministic)."""
    return reconstruct(prune(model, Plan.from_dict(row["plan"])), model, reconstruction, dtype=dtype)


def recover(slim: nn.Module, train_batches: list, evaluation: HeldOut, epochs: float, lr: float, seed: int,
            dtype: str, progress: bool) -> dict:
    """Fine-tune a slim model in place for `epochs` (in `dtype`), then its accuracy."""
    start = time.perf_counter()
    finetune(slim, train_batches, epochs=epochs, lr=lr, seed=seed, dtype=dtype, progress=progress)
    return {"epochs": epochs, "lr": lr, "seconds": round(time.perf_counter() - start, 1), **_accuracy(slim, evaluation)}


def latency(model: nn.Module, rows: list[dict], device: str, dtype: str, batch: int, seq: int,
            repeats: int) -> list[dict]:
    """Median latency (with its IQR and sample count) and speedup over the dense model of every row's slim
    model, in one benchmark run; the first entry (dense) also carries the benchmark's noise warnings."""
    slims = [prune(model, Plan.from_dict(r["plan"])) for r in rows]
    names = ["dense"] + [f"{r['criterion']}@{r['keep_flops']:g}" for r in rows]
    report = benchmark([model, *slims], batch_sizes=(batch,), seq_lens=(seq,), device=device, dtype=dtype,
                       warmup=1, repeats=repeats, names=names)
    out = [{k: report.row(n, batch, seq)[k] for k in ("model", "median_ms", "iqr_ms", "repeats", "p90_ms", "speedup",
                                                       "flop_ratio")} for n in names]
    out[0]["warnings"] = report.warnings
    return out
