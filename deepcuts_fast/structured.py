"""Structured mode of the main job: physically prune to a FLOP budget with each criterion, then
measure accuracy (single shot and after least-squares reconstruction on the calibration batches)
and the real CPU speedup of the slim model against the dense one."""
from __future__ import annotations

from torch import nn

from .benchmarking import benchmark
from .benchmarking.runners import max_seq_len
from .flops import encoder_flops
from .planning import plan
from .pruning import prune, reconstruct
from .train import evaluate

SEQ_LEN = 128
LATENCY_BATCH = 32


def run_structured_mode(model: nn.Module, all_scores: dict, calibration: list, evaluation: list,
                        keep_flops=(0.5,), log=print) -> list[dict]:
    """One row per (criterion, keep_flops): accuracy, size, FLOP ratio and measured speedup."""
    seq = min(SEQ_LEN, max_seq_len(model) or SEQ_LEN)
    slims, rows = [], []
    for crit, scores in all_scores.items():
        for keep in keep_flops:
            the_plan = plan(model, scores, keep_flops=keep, seq_len=seq, scope="global")
            slim = prune(model, the_plan)
            metrics = evaluate(slim, evaluation, progress=False)
            refit = evaluate(reconstruct(slim, model, calibration), evaluation, progress=False)
            rows.append({"criterion": crit, "keep_flops": keep, "accuracy": metrics.accuracy, "loss": metrics.loss,
                         "accuracy_reconstructed": refit.accuracy, "loss_reconstructed": refit.loss,
                         "heads": [len(h) for h in the_plan.heads], "ffn": [len(n) for n in the_plan.neurons],
                         "params": sum(p.numel() for p in slim.parameters()),
                         "flop_ratio": encoder_flops(model, seq) / encoder_flops(slim, seq), "seq_len": seq})
            slims.append(slim)
            log(f"{crit:>22s}  keep_flops={keep:<4g} accuracy {metrics.accuracy:.4f}, "
                f"reconstructed {refit.accuracy:.4f}")
    report = benchmark([model, *slims], batch_sizes=(LATENCY_BATCH,), seq_lens=(seq,), warmup=1, repeats=5,
                       names=["dense"] + [f"slim{i}" for i in range(len(slims))])
    for i, row in enumerate(rows):
        measured = report.row(f"slim{i}", LATENCY_BATCH, seq)
        row.update(latency_ms=measured["median_ms"], speedup=measured["speedup"])
    return rows
