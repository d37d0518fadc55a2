"""Paper mode: unstructured masks from each criterion (layer scope, as the paper), evaluated single
shot, after a short recovery fine-tune with the mask held fixed, and with lottery-ticket rewinding
(the surviving weights reset to their pre-fine-tuning values, then the original fine-tune rerun).

The smooth criteria's noise is the job's (`JobConfig.noise_scale`, `noise_std`, recorded in results.json's
settings and every score's meta): by default 0.15 of each prunable output's standard deviation, not the
paper's absolute sigma 1e-3, which at these activations' scale leaves Smooth-Cut's masks equal to the
gradient criterion's; `deepcuts run --noise-scale absolute --noise-std 1e-3` reproduces the paper's setting."""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..scoring import Scores, apply_masks
from ..train import finetune
from .held_out import HeldOut


def paper_masks(scores: Scores, compression: float) -> dict[str, torch.Tensor]:
    """The paper's masks: top fraction of every prunable tensor, compression counted over the encoder."""
    return scores.masks(compression, scope="layer", params="encoder")


def _kept_fraction(masks: dict[str, torch.Tensor]) -> float:
    return round(sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()), 6)


def single_shot(model: nn.Module, scores: Scores, compression: float, evaluation: HeldOut) -> dict:
    """Accuracy of `model` with the criterion's mask applied, no retraining."""
    masks = paper_masks(scores, compression)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    return {"kept_fraction": _kept_fraction(masks), **evaluation.metrics(masked)}


def recovered(model: nn.Module, scores: Scores, compression: float, train_batches: list, evaluation: HeldOut,
              epochs: float, lr: float, seed: int, dtype: str, progress: bool) -> dict:
    """Accuracy after fine-tuning the masked model for `epochs` (in `dtype`) with the mask fixed."""
    masks = paper_masks(scores, compression)
    masked = copy.deepcopy(model)
    start = time.perf_counter()
    finetune(masked, train_batches, epochs=epochs, lr=lr, seed=seed, dtype=dtype, progress=progress, masks=masks)
    return {"epochs": epochs, "lr": lr, "seconds": round(time.perf_counter() - start, 1),
            **evaluation.metrics(masked)}


def rewound(initial: nn.Module, scores: Scores, compression: float, train_batches: list, evaluation: HeldOut,
            finetune_settings: dict, progress: bool) -> dict:
    """Lottery-ticket rewinding: the pre-fine-tuning weights under the mask, fine-tuned as originally
    (`finetune_settings`: epochs, lr, seed and dtype of the original fine-tune)."""
    masks = paper_masks(scores, compression)
    start = time.perf_counter()
    finetune(initial, train_batches, progress=progress, masks=masks, **finetune_settings)
    return {**finetune_settings, "seconds": round(time.perf_counter() - start, 1), **evaluation.metrics(initial)}
