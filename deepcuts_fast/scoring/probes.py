"""Hooks on the prunable Linears that gather what the criteria need during one forward+backward.

Per Linear: the weight gradient `G = dY^T X` (computed here, so autograd computes no weight
gradients at all), the masked sum of the output (GradCAM row weights), Gaussian output noise
(SmoothGrad), and for the unit-activation Linears the first-order statistic `sum_t A * dA`.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch
from torch import nn


def noise_key(seed: int, batch: int, layer: int, sample: int) -> int:
    """Seed of one noise draw, keyed so stacked and sequential passes draw identical noise."""
    digest = hashlib.blake2b(f"{seed}/{batch}/{layer}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class PassContext:
    """What the hooks need to know about the chunk being run (set before each forward)."""

    token_mask: torch.Tensor | None = None  # (rows,) float: 1 for tokens that count
    batch_index: int = 0
    samples: range = range(0)  # noise-sample indices stacked in this chunk
    noise_std: float = 0.0
    seed: int = 0
    pool: Executor | None = None  # CPU threads that draw the noise of different samples in parallel
    loss_scale: float = 1.0  # turns a gradient of the batch-mean loss into per-example gradients (batch size)


@dataclass
class LinearProbe:
    """Accumulators for one prunable Linear over the chunks of one calibration batch."""

    name: str
    index: int
    module: nn.Linear
    ctx: PassContext
    want_grad: bool = False
    want_rows: bool = False  # masked output sums for GradCAM row weights
    want_activation: bool = False  # first-order stats on this Linear's input (a unit activation)
    fisher_group: int = 0  # > 0: per-example mask gradients of units of this many input channels (Fisher)
    grad: torch.Tensor | None = None
    grad_bias: torch.Tensor | None = None
    out_sum: torch.Tensor | None = None
    act_sum: torch.Tensor | None = None
    act_dot: torch.Tensor | None = None
    fisher: torch.Tensor | None = None  # (units, units): sum over examples of g g^T, g = per-example mask gradient
    tokens: torch.Tensor | float = 0.0  # stays on the device: no host sync per forward
    handles: list = field(default_factory=list)

    def attach(self) -> None:
        self.handles.append(self.module.register_forward_hook(self._forward))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def reset(self) -> None:
        """Clear the per-batch accumulators."""
        self.grad = self.grad_bias = self.out_sum = self.act_sum = self.act_dot = self.fisher = None
        self.tokens = 0.0

    def _forward(self, module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        mask = self.ctx.token_mask
        flat_out = output.flatten(0, -2)
        if self.want_rows or self.want_activation:
            self.tokens = self.tokens + mask.sum()
        if self.want_rows:
            _add(self, "out_sum", _masked_sum(mask, flat_out.detach()))
        if self.want_activation:
            flat_x = x.flatten(0, -2)
            _add(self, "act_sum", _masked_sum(mask, flat_x.detach()))
            if x.requires_grad:
                examples = x.shape[0] if x.dim() > 2 else 1
                x.register_hook(lambda dx, x=flat_x.detach(), m=mask, e=examples: self._activation_grad(x, dx, m, e))
        if self.want_grad and not output.requires_grad:  # e.g. the output dense of a layer with no heads:
            output = output.detach().requires_grad_(True)  # its bias still feeds the residual stream
        if self.ctx.noise_std:
            output = self._add_noise(output)
        if self.want_grad:
            saved_x = x.detach()
            output.register_hook(lambda dy: self._weight_grad(saved_x, dy))
        return output

    def _add_noise(self, output: torch.Tensor) -> torch.Tensor:
        """`output + std * N(0, 1)`, each stacked sample drawn from its own keyed generator."""
        noise = torch.empty_like(output)
        per_sample = output.shape[0] // len(self.ctx.samples)

        def draw(i: int) -> None:
            g = torch.Generator(device=output.device)
            g.manual_seed(noise_key(self.ctx.seed, self.ctx.batch_index, self.index, self.ctx.samples[i]))
            noise[i * per_sample:(i + 1) * per_sample].normal_(generator=g)

        if self.ctx.pool is not None and len(self.ctx.samples) > 1:
            list(self.ctx.pool.map(draw, range(len(self.ctx.samples))))
        else:
            for i in range(len(self.ctx.samples)):
                draw(i)
        if output.grad_fn is not None:  # a Linear's output is not saved for backward: add in place
            return output.add_(noise, alpha=self.ctx.noise_std)
        return torch.add(output, noise, alpha=self.ctx.noise_std)

    def _weight_grad(self, x: torch.Tensor, dy: torch.Tensor) -> None:
        flat_dy = dy.flatten(0, -2)
        flat_x = x.flatten(0, -2).to(flat_dy.dtype)
        _add(self, "grad", (flat_dy.t() @ flat_x).float())
        _add(self, "grad_bias", flat_dy.sum(0, dtype=torch.float32))

    def _activation_grad(self, x: torch.Tensor, dx: torch.Tensor, mask: torch.Tensor, examples: int) -> None:
        flat_dx = dx.flatten(0, -2)
        product = x.to(flat_dx.dtype) * flat_dx
        _add(self, "act_dot", _masked_sum(mask, product))
        if self.fisher_group:
            channels = product.shape[1]
            per_token = (product.float() * mask[:, None]).view(examples, product.shape[0] // examples, channels)
            g = per_token.sum(1).view(examples, channels // self.fisher_group, self.fisher_group).sum(2)
            g = g * self.ctx.loss_scale
            _add(self, "fisher", g.T @ g)


def _masked_sum(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum of the rows whose mask is 1, accumulated in fp32."""
    if rows.dtype != torch.float32:
        rows = rows.float()
    return mask @ rows


def _add(probe: LinearProbe, attr: str, value: torch.Tensor) -> None:
    current = getattr(probe, attr)
    value = value.float()
    setattr(probe, attr, value if current is None else current.add_(value))
