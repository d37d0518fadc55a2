"""One scoring pass: every calibration batch forward and backward with probes on the prunable Linears.

A clean pass runs each batch once; a noisy pass (the smooth criteria) stacks the batch's N noisy copies
in the batch dimension, in chunks under a memory cap. After each batch the probes' statistics go to
one route per criterion (deepcuts_fast.scoring.routes), which turns them into scores and sums them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import ContextManager

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import HEAD_ROLES, OUTPUT_ROLES, ROLES, embeddings_module, encoder_layers
from ..errors import DeepCutsError
from ..precision import autocast
from ..models import model_device, to_device
from .criteria import Criterion
from .layout import LayerLayout
from .objective import Objective
from .options import DEFAULT_NOISE_STD, ScoreOptions
from .probes import Chunk, LinearProbe, PassContext, attached
from .routes import Route, RouteSetup, route_for
from .scores import Scores

Observer = Callable[[Mapping[str, torch.Tensor], "torch.dtype | None"], ContextManager]
"""(a batch's inputs as the model gets them, the autocast dtype) -> a context entered around that batch's forward
in a clean pass, so a caller can record what the dense model computes on the way (the refit's targets)."""
DEFAULT_CPU_MEMORY = 4 << 30
CPU_CHUNK_TOKENS = 5000  # stacking beyond ~5k tokens per pass is slower on CPU (activations leave the cache)


class ScoringPass:
    """One pass (clean or noisy) over all calibration batches for a group of criteria."""

    def __init__(self, model: nn.Module, layout: list[LayerLayout], criteria: Sequence[Criterion], noisy: bool,
                 options: ScoreOptions, dtype: torch.dtype | None, backend: str,
                 objective: Objective = Objective("labels"), observer: Observer | None = None) -> None:
        """`dtype`: the autocast dtype (None: fp32); `backend`: the resolved kernel backend; `objective`: the
        resolved loss (`deepcuts_fast.scoring.objective.resolve_objective`); `observer`, when given, is entered
        around each batch's forward (see `Observer`)."""
        self.model, self.layout, self.criteria, self.options = model, layout, list(criteria), options
        self.objective, self.observer = objective, observer
        self._targets: tuple[int, torch.Tensor | None] | None = None  # (batch index, its targets), reused by chunks
        self.samples = options.noise_samples if noisy else 1
        self.dtype, self.backend = dtype, backend
        self.device = model_device(model)
        self.weight_grads = not options.first_order and any(c.needs.weight_gradients for c in self.criteria)
        self.noise_std = options.noise_std if noisy else 0.0
        context = PassContext(seed=options.seed, backend=backend, noise_std=self.noise_std,
                              relative_noise=options.relative_noise)
        self.probes = self._make_probes(context)

    def _make_probes(self, context: PassContext) -> list[dict[str, LinearProbe]]:
        needs = [c.needs for c in self.criteria]
        rows = self.weight_grads and any(n.output_means for n in needs)
        interactions = any(n.mask_gradients for n in needs)
        diagonal_only = not any(n.interactions for n in needs)
        activations = self.options.first_order or interactions
        layers = []
        for layer in encoder_layers(self.model):
            distinct = layer.distinct()  # a fused Linear gets one probe, as its first role
            layers.append({r: LinearProbe(
                name=layer.names[r], index=layer.index * len(ROLES) + i, module=layer.linears[r], ctx=context, role=r,
                unit_width=layer.head_dim if r in HEAD_ROLES else 1, want_grad=self.weight_grads, want_rows=rows,
                want_activation=activations and r in OUTPUT_ROLES, want_interactions=interactions and r in OUTPUT_ROLES,
                diagonal_only=diagonal_only,
            ) for i, r in enumerate(ROLES) if r in distinct})
        return layers

    def run(self, batches: Sequence[Mapping[str, torch.Tensor]], indices: Sequence[int],
            meta: Mapping) -> dict[str, Scores]:
        """Score the batches (`indices`: their positions in the whole calibration set) with every criterion."""
        chunk = 1 if self.options.sequential_noise else self._samples_per_chunk(batches[0])
        chunks = [range(s, min(s + chunk, self.samples)) for s in range(0, self.samples, chunk)]
        fused = (self.backend != "torch" and len(chunks) == 1 and self.weight_grads
                 and sum(c.needs.weight_gradients for c in self.criteria) == 1)  # Fisher reads activations, not G
        setup = RouteSetup(self.layout, self.samples, self.options.shift, self.options.unit, self.backend, self.device)
        routes = {c.name: route_for(c, setup, self.probes, self.options.first_order, fused) for c in self.criteria}
        with self._scoring_mode(), tqdm(total=len(batches) * len(chunks), desc=f"scoring {'+'.join(routes)}",
                                        disable=not self.options.progress, leave=False) as bar:
            for b, batch in zip(indices, batches):
                for samples in chunks:
                    self._forward_backward(b, batch, samples)
                    bar.update(1)
                self._epilogue(b, routes.values())
        self._targets = None
        meta = {**meta, "batches": len(batches), "samples_per_chunk": chunk, "objective": self.objective.describe(),
                "weight_score": "fused" if fused else ("epilogue" if self.backend != "torch" else "torch")}
        return {name: route.finish(meta) for name, route in routes.items()}

    @contextlib.contextmanager
    def _scoring_mode(self) -> Iterator[None]:
        """No parameter gradients, eval (or train) mode, seeded dropout; all restored afterwards."""
        model = self.model
        flags = [(p, p.requires_grad) for p in model.parameters()]
        was_training = model.training
        attention = model.config._attn_implementation
        for p, _ in flags:
            p.requires_grad_(False)
        model.train(self.options.train_mode)
        if self.device.type == "cpu" and self.dtype is not None and attention == "sdpa":
            model.set_attn_implementation("eager")  # torch's CPU sdpa backward is ~4x slower in bf16
        handle = embeddings_module(model).register_forward_hook(_start_graph)
        fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        try:
            with fork:
                torch.manual_seed(self.options.seed)
                yield
        finally:
            handle.remove()
            for p in self._all_probes():
                p.reset()
                p.score_in_backward = None  # a fused route's hook belongs to this pass only
            for p, flag in flags:
                p.requires_grad_(flag)
            if model.config._attn_implementation != attention:
                model.set_attn_implementation(attention)
            model.train(was_training)

    def _samples_per_chunk(self, batch: Mapping[str, torch.Tensor]) -> int:
        """How many noisy copies of a batch fit under the memory cap (a rough activation estimate)."""
        batch_size, seq = batch["input_ids"].shape[:2]
        first = self.probes[0]
        hidden, ffn = first["query"].module.in_features, first["ffn_in"].module.out_features
        heads = first["query"].module.out_features // self.layout[0].head_dim
        elt = 2 if self.dtype in (torch.bfloat16, torch.float16) else 4
        per_layer = batch_size * seq * (10 * hidden + 3 * ffn) * elt + 3 * batch_size * heads * seq * seq * elt
        per_sample = per_layer * len(self.layout)
        cap = self.options.max_memory or default_memory(self.device)
        chunk = min(self.samples, cap // per_sample)
        if self.device.type == "cpu" and self.options.max_memory is None:
            chunk = min(chunk, CPU_CHUNK_TOKENS // (batch_size * seq))
        return max(1, chunk)

    def _forward_backward(self, b: int, batch: Mapping[str, torch.Tensor], samples: range) -> None:
        k = len(samples)
        inputs, labels = self.objective.split({key: v for key, v in to_device(batch, self.device).items()
                                               if torch.is_tensor(v)})
        batch_size = inputs["input_ids"].shape[0]
        clean_targets = self.objective.distill and not self.noise_std  # drawn from this very forward's outputs
        targets = None if clean_targets else self._batch_targets(b, inputs, labels)
        if k > 1:
            inputs = {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in inputs.items()}
            targets = targets.repeat(k, *([1] * (targets.dim() - 1)))
        mask = inputs.get("attention_mask")
        if mask is None or self.options.include_padding:
            mask = torch.ones(inputs["input_ids"].shape, device=self.device)
        chunk = Chunk(batch_index=b, samples=samples, token_mask=mask.reshape(-1).float(), loss_scale=float(batch_size))
        observed = self.observer(inputs, self.dtype) if self.observer is not None else contextlib.nullcontext()
        with attached(self._all_probes(), chunk):
            with autocast(self.device, self.dtype), observed:
                outputs = self.objective.outputs(self.model, inputs)
            if clean_targets:
                targets = self.objective.targets(outputs, labels, self.options.seed, b, inputs.get("attention_mask"))
            loss = self.objective.loss(outputs, targets, batch_size)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
        if not finite:  # with the probes (and their noise) detached
            raise self._loss_error(b, inputs, targets, batch_size, loss.item())

    @torch.no_grad()
    def _batch_targets(self, b: int, inputs: Mapping[str, torch.Tensor],
                       labels: torch.Tensor | None) -> torch.Tensor | None:
        """Batch `b`'s targets for every noisy copy: its labels, or one draw from the dense model's clean outputs
        (a forward without the probes, so without noise), made once per batch and shared by its chunks."""
        if self._targets is None or self._targets[0] != b:
            dense = None
            if self.objective.distill:
                with autocast(self.device, self.dtype):
                    dense = self.objective.outputs(self.model, inputs)
            self._targets = (b, self.objective.targets(dense, labels, self.options.seed, b,
                                                       inputs.get("attention_mask")))
        return self._targets[1]

    def _loss_error(self, b: int, inputs: Mapping[str, torch.Tensor], targets: torch.Tensor, batch_size: int,
                    loss: float) -> DeepCutsError:
        """The error for a non-finite loss on batch `b`: the noise's fault when the same inputs give a finite loss
        without it (probes detached, so no noise), else the model's weights' or the labels'."""
        if self.noise_std:
            with torch.no_grad(), autocast(self.device, self.dtype):
                clean = self.objective.loss(self.objective.outputs(self.model, inputs), targets, batch_size)
            if torch.isfinite(clean):
                scale = self.options.noise_scale
                return DeepCutsError(
                    f"the smooth criteria's noise is too large for this model: with noise_std={self.noise_std:g} "
                    f"({scale}) the loss on calibration batch {b} is {loss}, without the noise it is finite; lower "
                    f"--noise-std (noise_std), e.g. to the {scale} default {DEFAULT_NOISE_STD[scale]:g}")
        return DeepCutsError(f"non-finite loss ({loss}) on calibration batch {b}; check the model weights and "
                             f"{'inputs' if self.objective.distill else 'labels'}")

    @torch.no_grad()
    def _epilogue(self, b: int, routes: Iterable[Route]) -> None:
        """Hand one batch's statistics to every route, layer by layer, then clear them."""
        self._check_finite(b)
        for layer, probes in enumerate(self.probes):
            for route in routes:
                route.add(b, layer, probes)
            for p in probes.values():
                p.reset()

    def _check_finite(self, b: int) -> None:
        """Name the layer nearest the loss whose gradients are not finite (where they went bad)."""
        stats = [(p, (p.grad if p.grad is not None else p.grad_bias) if self.weight_grads else p.act_dot)
                 for p in self._all_probes()]
        probes = [p for p, stat in stats if stat is not None]
        sums = torch.stack([stat.sum() for _, stat in stats if stat is not None])
        finite = torch.isfinite(sums).tolist()  # one device sync per batch
        for p, ok in zip(reversed(probes), reversed(finite)):
            if not ok:
                raise DeepCutsError(f"non-finite gradients in {p.name} on calibration batch {b}; "
                                    "check the model weights and inputs, or score in fp32")

    def _all_probes(self) -> list[LinearProbe]:
        return [p for probes in self.probes for p in probes.values()]


def shared_passes(criteria: Sequence[Criterion]) -> list[tuple[bool, list[Criterion]]]:
    """(noisy, the criteria it scores) of each pass `criteria` (all needing data) take: a clean pass for those
    that declare no noise, then a noisy one for those that do; a pass with no criterion is left out."""
    return [(noisy, group) for noisy in (False, True) if (group := [c for c in criteria if c.needs.noise == noisy])]


def default_memory(device: torch.device) -> int:
    """The default cap on the stacked noisy batch: half the free GPU memory, or 4 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_CPU_MEMORY


def _start_graph(module: nn.Module, inputs, output):
    """Make the embedding output require grad so the encoder builds a graph with frozen weights."""
    if torch.is_tensor(output) and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return output

