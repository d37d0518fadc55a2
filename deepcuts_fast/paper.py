"""The main job: score every criterion once, then paper mode and structured mode, evaluated.

Paper mode keeps the top fraction of every prunable tensor (layer scope, as the paper) at
compression 2, 3, 3.5 and 4 counted over the encoder parameters. Structured mode plans from the
same scores' unit views and physically prunes (see `structured.py`). Each model is evaluated on
the held-out split.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from . import __version__
from .atomic import write_text
from .machine import machine_info
from .scoring import apply_masks, score_many
from .structured import run_structured_mode
from .train import EvalResult, evaluate

COMPRESSIONS = (2.0, 3.0, 3.5, 4.0)
QUICK_CRITERIA = ("magnitude", "gradient", "cam-cut", "smooth-cut", "random")
KEEP_FLOPS = (0.5,)
FULL_CRITERIA = ("magnitude", "gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut",
                 "smooth-cam-cut-shift", "random")


@dataclass
class RunResult:
    """Dense metrics, scoring time, paper-mode rows and structured-mode rows of one main-job run."""

    settings: dict
    dense: dict
    scoring_seconds: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)  # paper mode: one per (criterion, compression)
    structured: list = field(default_factory=list)  # structured mode: one per (criterion, keep_flops)

    def to_dict(self) -> dict:
        return {
            "version": __version__,
            "machine": machine_info(),
            "settings": self.settings,
            "dense": self.dense,
            "scoring_seconds": self.scoring_seconds,
            "paper_mode": self.rows,
            "structured_mode": self.structured,
        }

    def table(self) -> str:
        """Markdown tables: paper-mode accuracy per criterion and compression, then structured mode."""
        comps = sorted({r["compression"] for r in self.rows})
        head = "| criterion | " + " | ".join(f"c={c:g}" for c in comps) + " |"
        lines = [head, "|" + "---|" * (len(comps) + 1), f"| dense | {self.dense['accuracy']:.4f} " + "| " * (len(comps) - 1) + "|"]
        for crit in dict.fromkeys(r["criterion"] for r in self.rows):
            acc = {r["compression"]: r["accuracy"] for r in self.rows if r["criterion"] == crit}
            lines.append(f"| {crit} | " + " | ".join(f"{acc[c]:.4f}" for c in comps) + " |")
        if self.structured:
            lines += ["", "| criterion (structured) | keep_flops | accuracy | reconstructed | params "
                      "| speedup (batch 32, CPU fp32) |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['criterion']} | {r['keep_flops']:g} | {r['accuracy']:.4f} | "
                      f"{r['accuracy_reconstructed']:.4f} | {r['params']:,} | {r['speedup']:.2f}x |"
                      for r in self.structured]
        return "\n".join(lines)


def run_paper_mode(model: nn.Module, all_scores: dict, evaluation: list, compressions=COMPRESSIONS,
                   log=print) -> list[dict]:
    """Mask at each compression (layer scope, encoder count) with each criterion's scores; evaluate."""
    rows = []
    for crit, scores in all_scores.items():
        for c in compressions:
            masks = scores.masks(c, scope="layer", params="encoder")
            masked = copy.deepcopy(model)
            apply_masks(masked, masks)
            metrics: EvalResult = evaluate(masked, evaluation, progress=False)
            kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
            rows.append({"criterion": crit, "compression": c, "kept_fraction": round(kept, 6),
                         **{k: v for k, v in metrics.to_dict().items() if v is not None}})
            log(f"{crit:>22s}  c={c:<4g} accuracy {metrics.accuracy:.4f}")
    return rows


def run_main_job(model: nn.Module, calibration: list, evaluation: list, criteria=QUICK_CRITERIA,
                 compressions=COMPRESSIONS, keep_flops=KEEP_FLOPS, noise_samples: int = 10,
                 noise_std: float = 1e-3, seed: int = 0, progress: bool = True, log=print,
                 reconstruction: list | None = None) -> RunResult:
    """Evaluate the dense model, score every criterion once (shared passes), then paper and structured
    mode; `reconstruction` batches (default: the calibration ones) feed the least-squares refit."""
    settings = {
        "criteria": list(criteria), "compressions": list(compressions), "scope": "layer",
        "params_counted": "encoder", "keep_flops": list(keep_flops),
        "calibration_batches": len(calibration),
        "calibration_examples": sum(len(b["labels"]) for b in calibration),
        "reconstruction_examples": sum(len(b["labels"]) for b in (reconstruction or calibration)),
        "evaluation_examples": sum(len(b["labels"]) for b in evaluation),
        "noise_samples": noise_samples, "noise_std": noise_std, "seed": seed,
    }
    dense = evaluate(model, evaluation, progress=progress)
    log(f"dense accuracy {dense.accuracy:.4f} on {dense.n} examples")
    result = RunResult(settings=settings, dense=dense.to_dict())
    start = time.perf_counter()
    all_scores = score_many(model, calibration, list(criteria), noise_samples=noise_samples,
                            noise_std=noise_std, seed=seed, progress=progress)
    result.scoring_seconds["all"] = round(time.perf_counter() - start, 2)
    result.rows = run_paper_mode(model, all_scores, evaluation, compressions, log)
    result.structured = run_structured_mode(model, all_scores, reconstruction or calibration, evaluation,
                                            keep_flops, log)
    return result


def write_results(result: RunResult, out: Path) -> Path:
    """Write results.json atomically under `out`."""
    path = out / "results.json"
    write_text(path, json.dumps(result.to_dict(), indent=2))
    return path
