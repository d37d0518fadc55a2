"""A faithful re-implementation of the ORIGINAL DeepCuts Smooth-Cut scoring loop (benchmark only).

Kept for comparison with `dc.score`; it is deliberately NOT optimised and shares no code with the
package. What the original code did, per calibration batch:

* model in train mode (dropout on), every parameter requires grad;
* N sequential forward+backward passes; in each, a forward hook adds Gaussian noise
  `sigma * randn_like(Y)` to the output `Y` of every prunable encoder Linear;
* plain `loss.backward()` (autograd computes every parameter's gradient, embeddings included);
* after each pass the prunable weight (and bias) gradients are copied to numpy
  (`.grad.detach().numpy().copy()`), then all gradients are zeroed;
* the N copies are averaged in numpy and the smooth-cut score `np.abs(W * Gbar)` is computed in
  numpy; scores are summed over calibration batches.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear inside the encoder layers (Q, K, V, attention output, FFN in, FFN out)."""
    return [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and (".encoder.layer." in f".{name}" or ".transformer.layer." in f".{name}")]


def original_smooth_cut(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    noise_samples: int = 10,
    noise_std: float = 1e-3,
    seed: int = 0,
    train_mode: bool = True,
) -> dict[str, np.ndarray]:
    """Smooth-Cut scores `|W * mean_n G_n|` (summed over batches) the way the original code made them.

    `train_mode=False` (dropout off) is only for correctness checks against `dc.score`.
    Returns {parameter name: numpy score array} for the weights and biases of every prunable Linear.
    """
    linears = prunable_linears(model)
    params = [(f"{name}.{kind}", getattr(lin, kind)) for name, lin in linears
              for kind in ("weight", "bias") if getattr(lin, kind) is not None]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(True)
    model.train(train_mode)

    def add_noise(module, inputs, output):
        return output + noise_std * torch.randn_like(output)

    handles = [lin.register_forward_hook(add_noise) for _, lin in linears] if noise_std else []
    scores: dict[str, np.ndarray] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for batch in batches:
                grads: dict[str, list[np.ndarray]] = {name: [] for name, _ in params}
                for _ in range(noise_samples):
                    model.zero_grad()
                    out = model(**batch)
                    out.loss.backward()
                    for name, p in params:
                        grads[name].append(p.grad.detach().numpy().copy())
                model.zero_grad()
                for name, p in params:
                    gbar = np.mean(np.stack(grads[name]), axis=0)
                    s = np.abs(p.detach().numpy() * gbar)
                    scores[name] = s if name not in scores else scores[name] + s
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return scores
