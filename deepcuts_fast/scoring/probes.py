"""Hooks on the prunable Linears that gather what the criteria need during one forward+backward.

Per Linear: the weight gradient `G = dY^T X` (computed here, so autograd computes no weight
gradients at all) or, when a route scores in the backward hook, whatever that route does with X and
dY; the masked sum of the output (GradCAM row weights); Gaussian output noise (SmoothGrad, kernel 3,
Philox-keyed by (seed, batch, Linear index, sample); relative noise is scaled by `output_std`); and for
the unit-activation Linears the first-order statistics of `A` and `dA` (kernel 2) and the per-example
unit interactions (Fisher).
The hooks are attached for one chunk at a time and read that chunk's `Chunk`.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels import activation_stats, add_noise


@dataclass(frozen=True)
class PassContext:
    """What every hook of one pass shares."""

    seed: int
    backend: str  # the resolved kernel backend
    noise_std: float = 0.0  # 0: a clean pass
    relative_noise: bool = False  # sigma = noise_std x each output's std (output_std), else noise_std itself


@dataclass(frozen=True)
class Chunk:
    """One forward+backward: a batch with some of its noise samples stacked in the batch dimension."""

    batch_index: int  # the batch's position in the whole calibration set, which keys its noise
    samples: range  # noise-sample indices stacked in this chunk
    token_mask: torch.Tensor  # (rows,) float: 1 for tokens that count
    loss_scale: float  # the batch size: turns a gradient of the batch-mean loss into per-example gradients


@dataclass
class LinearProbe:
    """Accumulators for one prunable Linear over the chunks of one calibration batch."""

    name: str
    index: int  # position among all prunable Linears of the model, which keys its noise
    module: nn.Linear
    ctx: PassContext
    role: str  # one of arch.ROLES
    unit_width: int  # rows or columns of this Linear one unit owns: the head size, or 1 for FFN neurons
    want_grad: bool = False
    want_rows: bool = False  # masked output sums for GradCAM row weights
    want_activation: bool = False  # first-order stats on this Linear's input (a unit activation)
    want_interactions: bool = False  # per-example unit gradients of this Linear's input, multiplied out
    diagonal_only: bool = False  # of those products, only the squares (Fisher's unit scores, no interactions)
    score_in_backward: Callable[[LinearProbe, torch.Tensor, torch.Tensor], None] | None = None  # (probe, X, dY)
    grad: torch.Tensor | None = None
    grad_bias: torch.Tensor | None = None
    out_sum: torch.Tensor | None = None
    act_stats: torch.Tensor | None = None  # (4, in): masked sums of A, dA, A * dA, |A * dA|
    interactions: torch.Tensor | None = None  # (units, units): sum over examples of g g^T, g = mask gradients;
    #                                            (units,): its diagonal only, with `diagonal_only`
    tokens: torch.Tensor | float = 0.0  # stays on the device: no host sync per forward

    def reset(self) -> None:
        """Clear the per-batch accumulators."""
        self.grad = self.grad_bias = self.out_sum = self.act_stats = self.interactions = None
        self.tokens = 0.0

    @property
    def act_sum(self) -> torch.Tensor | None:
        """Masked sum of the unit activation A over this batch's tokens."""
        return None if self.act_stats is None else self.act_stats[0]

    @property
    def act_dot(self) -> torch.Tensor | None:
        """Masked `sum_t A * dA`, the first-order unit statistic."""
        return None if self.act_stats is None else self.act_stats[2]

    def _forward(self, chunk: Chunk, module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        mask = chunk.token_mask
        flat_out = output.flatten(0, -2)
        if self.want_rows or self.want_activation:
            self.tokens = self.tokens + mask.sum()
        if self.want_rows:
            _add(self, "out_sum", _masked_sum(mask, flat_out.detach()))
        if self.want_activation and x.requires_grad:
            flat_x = x.flatten(0, -2).detach()
            examples = x.shape[0] if x.dim() > 2 else 1
            x.register_hook(lambda dx: self._activation_grad(flat_x, dx, chunk, examples))
        if self.want_grad and not output.requires_grad:  # e.g. the output dense of a layer with no heads:
            output = output.detach().requires_grad_(True)  # its bias still feeds the residual stream
        if self.ctx.noise_std:
            std = self.ctx.noise_std
            if self.ctx.relative_noise:  # a device tensor, one sigma per stacked sample: no host sync on a GPU
                std = output_std(flat_out.detach(), mask, len(chunk.samples)).mul_(std)
            add_noise(output, std, self.ctx.seed, chunk.batch_index, self.index, chunk.samples,
                      backend=self.ctx.backend)  # in place, each stacked sample with its own Philox key
        if self.want_grad:
            saved_x = x.detach()
            output.register_hook(lambda dy: self._weight_grad(saved_x, dy))
        return output

    def _weight_grad(self, x: torch.Tensor, dy: torch.Tensor) -> None:
        flat_dy = dy.flatten(0, -2)
        _add(self, "grad_bias", flat_dy.sum(0, dtype=torch.float32))
        if self.score_in_backward is not None:
            self.score_in_backward(self, x, flat_dy)
            return
        flat_x = x.flatten(0, -2).to(flat_dy.dtype)
        _add(self, "grad", (flat_dy.t() @ flat_x).float())

    def _activation_grad(self, x: torch.Tensor, dx: torch.Tensor, chunk: Chunk, examples: int) -> None:
        flat_dx = dx.flatten(0, -2)
        if self.act_stats is None:
            self.act_stats = torch.zeros(4, x.shape[-1], device=x.device)
        activation_stats(x, flat_dx, chunk.token_mask, self.act_stats, backend=self.ctx.backend)
        if self.want_interactions:
            self._add_interactions(x, flat_dx, chunk, examples)

    def _add_interactions(self, x: torch.Tensor, flat_dx: torch.Tensor, chunk: Chunk, examples: int) -> None:
        """Add sum over examples of g g^T (or of g * g with `diagonal_only`), g = each example's per-unit sum over
        its real tokens of A * dA."""
        product = x.to(flat_dx.dtype) * flat_dx
        channels = product.shape[1]
        per_token = (product.float() * chunk.token_mask[:, None]).view(examples, product.shape[0] // examples, channels)
        g = per_token.sum(1).view(examples, channels // self.unit_width, self.unit_width).sum(2)
        g = g * chunk.loss_scale
        _add(self, "interactions", (g * g).sum(0) if self.diagonal_only else g.T @ g)


@contextlib.contextmanager
def attached(probes: Iterable[LinearProbe], chunk: Chunk) -> Iterator[None]:
    """The probes' hooks on their Linears for one chunk's forward and backward."""
    handles = [p.module.register_forward_hook(_first_call(functools.partial(p._forward, chunk))) for p in probes]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _first_call(hook: Callable) -> Callable:
    """`hook` for the first call of its Linear in the chunk's forward only: that is the call on the batch's tokens.
    A later call runs the same weights on something else (DeBERTa's shared Q/K projections of its relative-position
    embeddings), not a token activation; its share of the weight gradient is left out of the scores."""
    called = []

    def first_only(module: nn.Module, inputs: tuple, output: torch.Tensor):
        if called:
            return None
        called.append(True)
        return hook(module, inputs, output)

    return first_only


def output_std(rows: torch.Tensor, mask: torch.Tensor, samples: int) -> torch.Tensor:
    """(samples,) fp32: each stacked sample's standard deviation of a Linear's output `rows` (tokens x channels)
    over its tokens whose `mask` is 1 and all channels, the scale relative noise is measured against.

    Per sample, so a sample's noise does not depend on which samples share its chunk (stacked, chunked and
    sequential passes stay equal); over real tokens only, because padding rows are not part of the data and
    their share varies from batch to batch (with `include_padding` the mask is all ones, and so is this).
    Measured on the output before its own noise is added (upstream noise included: that is its input).

    Two passes over the output and no copy of it in fp32 (one in other dtypes): per token the sum and the
    norm of its channels, then per sample the masked sums of those in fp64, var = E[y^2] - E[y]^2."""
    with torch.no_grad():
        y = rows.reshape(samples, rows.shape[0] // samples, rows.shape[-1])  # a pruned-away Linear: 0 wide
        if y.dtype != torch.float32:
            y = y.float()
        m = mask.reshape(samples, -1).double()
        count = (m.sum(1) * rows.shape[-1]).clamp_min_(1)
        mean = (y.sum(-1).double() * m).sum(1) / count
        square = (torch.linalg.vector_norm(y, dim=-1).double().square_() * m).sum(1) / count
        return (square - mean.square()).clamp_min_(0).sqrt_().float()


def _masked_sum(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum of the rows whose mask is 1, accumulated in fp32."""
    if rows.dtype != torch.float32:
        rows = rows.float()
    return mask @ rows


def _add(probe: LinearProbe, attr: str, value: torch.Tensor) -> None:
    current = getattr(probe, attr)
    value = value.float()
    setattr(probe, attr, value if current is None else current.add_(value))
