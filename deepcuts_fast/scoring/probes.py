"""Hooks on the prunable Linears that gather what the criteria need during one forward+backward.

Per Linear: the weight gradient `G = dY^T X` (computed here, so autograd computes no weight
gradients at all) or, on the fused path, its score `|W * G * scale * roww|` straight from X and dY
(kernel 1), the masked sum of the output (GradCAM row weights), Gaussian output noise (SmoothGrad,
kernel 3, Philox-keyed by (seed, batch, Linear index, sample)), and for the unit-activation Linears
the first-order statistics of `A` and `dA` (kernel 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..kernels import activation_stats, add_noise, weight_score


@dataclass
class FusedScore:
    """Where the fused weight score of one Linear goes (one chunk per batch, one criterion) and its row weighting."""

    scale: float  # 1 / noise samples
    shift: float | None  # None: rows not weighted; else roww = mean output + shift
    s: torch.Tensor | None = None  # per-weight score accumulator (weight granularity)
    rows: torch.Tensor | None = None  # this batch's row sums of the score (unit granularity)
    cols: torch.Tensor | None = None  # this batch's column sums of the score (unit granularity)


@dataclass
class PassContext:
    """What the hooks need to know about the chunk being run (set before each forward)."""

    token_mask: torch.Tensor | None = None  # (rows,) float: 1 for tokens that count
    batch_index: int = 0
    samples: range = range(0)  # noise-sample indices stacked in this chunk
    noise_std: float = 0.0
    seed: int = 0
    backend: str = "torch"  # the resolved kernel backend
    loss_scale: float = 1.0  # turns a gradient of the batch-mean loss into per-example gradients (batch size)


@dataclass
class LinearProbe:
    """Accumulators for one prunable Linear over the chunks of one calibration batch."""

    name: str
    index: int
    module: nn.Linear
    ctx: PassContext
    role: str = ""  # query, key, value, attn_out, ffn_in or ffn_out
    want_grad: bool = False
    want_rows: bool = False  # masked output sums for GradCAM row weights
    want_activation: bool = False  # first-order stats on this Linear's input (a unit activation)
    fisher_group: int = 0  # > 0: per-example mask gradients of units of this many input channels (Fisher)
    fused: FusedScore | None = None  # set: the weight score is computed in the backward hook, no G kept
    grad: torch.Tensor | None = None
    grad_bias: torch.Tensor | None = None
    out_sum: torch.Tensor | None = None
    act_stats: torch.Tensor | None = None  # (4, in): masked sums of A, dA, A * dA, |A * dA|
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
        self.grad = self.grad_bias = self.out_sum = self.act_stats = self.fisher = None
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

    @property
    def act_sum(self) -> torch.Tensor | None:
        """Masked sum of the unit activation A over this batch's tokens."""
        return None if self.act_stats is None else self.act_stats[0]

    @property
    def act_dot(self) -> torch.Tensor | None:
        """Masked `sum_t A * dA`, the first-order unit statistic."""
        return None if self.act_stats is None else self.act_stats[2]

    def _add_noise(self, output: torch.Tensor) -> torch.Tensor:
        """`output + std * N(0, 1)` in place, each stacked sample with its own Philox key."""
        ctx = self.ctx
        add_noise(output, ctx.noise_std, ctx.seed, ctx.batch_index, self.index, ctx.samples, backend=ctx.backend)
        return output

    def _weight_grad(self, x: torch.Tensor, dy: torch.Tensor) -> None:
        flat_dy = dy.flatten(0, -2)
        _add(self, "grad_bias", flat_dy.sum(0, dtype=torch.float32))
        if self.fused is not None:
            f = self.fused
            roww = None if f.shift is None else self.out_sum / at_least_one(self.tokens) + f.shift
            weight_score(x, flat_dy, self.module.weight.detach(), roww, f.scale, f.s, f.rows, f.cols,
                         backend=self.ctx.backend)
            return
        flat_x = x.flatten(0, -2).to(flat_dy.dtype)
        _add(self, "grad", (flat_dy.t() @ flat_x).float())

    def _activation_grad(self, x: torch.Tensor, dx: torch.Tensor, mask: torch.Tensor, examples: int) -> None:
        flat_dx = dx.flatten(0, -2)
        if self.act_stats is None:
            self.act_stats = torch.zeros(4, x.shape[-1], device=x.device)
        activation_stats(x, flat_dx, mask, self.act_stats, backend=self.ctx.backend)
        if self.fisher_group:
            self._fisher(x, flat_dx, mask, examples)

    def _fisher(self, x: torch.Tensor, flat_dx: torch.Tensor, mask: torch.Tensor, examples: int) -> None:
        """Add sum over examples of g g^T, g = each example's per-unit sum over its real tokens of A * dA."""
        product = x.to(flat_dx.dtype) * flat_dx
        channels = product.shape[1]
        per_token = (product.float() * mask[:, None]).view(examples, product.shape[0] // examples, channels)
        g = per_token.sum(1).view(examples, channels // self.fisher_group, self.fisher_group).sum(2)
        g = g * self.ctx.loss_scale
        _add(self, "fisher", g.T @ g)


def at_least_one(count: torch.Tensor | float) -> torch.Tensor | float:
    """A token count clamped to >= 1, so means over no token are 0 rather than NaN."""
    return count.clamp_min(1.0) if torch.is_tensor(count) else max(count, 1.0)


def _masked_sum(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum of the rows whose mask is 1, accumulated in fp32."""
    if rows.dtype != torch.float32:
        rows = rows.float()
    return mask @ rows


def _add(probe: LinearProbe, attr: str, value: torch.Tensor) -> None:
    current = getattr(probe, attr)
    value = value.float()
    setattr(probe, attr, value if current is None else current.add_(value))
