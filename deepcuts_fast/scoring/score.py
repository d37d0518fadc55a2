"""`dc.score`: run the calibration batches once per pass and turn probe statistics into scores.

Criteria that share ingredients share passes: gradient, cam-cut and cam-cut-shift use one clean
pass; the smooth criteria use one pass with the N noisy copies stacked in the batch dimension
(chunked under a memory cap); magnitude and random need no data.

Kernels (deepcuts_fast.kernels) by backend: with backend "torch" every probe accumulates its weight
gradient G and the PyTorch epilogue turns it into scores. With a fused backend (cpp, triton, cuda), a
pass with one criterion whose N noise samples run in one chunk per batch computes each weight score
straight from X and dY in the backward hook (kernel 1, no G kept); otherwise G is accumulated over
the chunks and the fused epilogue runs once per batch. Noise (kernel 3) and first-order statistics
(kernel 2) always go through the chosen backend.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..arch import ROLES, UNIT_AXIS, embeddings_module, encoder_layers, prunable_linears
from ..errors import DeepCutsError
from ..kernels import BACKENDS, resolve, weight_score_epilogue
from ..precision import NAMES, autocast, choose_for_scoring, parse_dtype
from .criteria import Criterion, get_criterion
from .layout import LayerLayout, model_layout, reduce_sums_to_units, reduce_to_units
from .probes import FusedScore, LinearProbe, PassContext, at_least_one
from .scores import Scores

GRANULARITIES = ("weight", "unit")
UNIT_METHODS = ("sum", "first-order")
DEFAULT_CPU_MEMORY = 4 << 30
CPU_CHUNK_TOKENS = 5000  # stacking beyond ~5k tokens per pass is slower on CPU (activations leave the cache)


@dataclass(frozen=True)
class ScoreOptions:
    """Everything that changes the numbers, recorded in the saved scores."""

    granularity: str = "weight"
    unit_method: str = "sum"
    noise_samples: int = 10
    noise_std: float = 1e-3
    shift: float = 10.0
    seed: int = 0
    dtype: str = "auto"  # as requested; each pass records what it resolved to (see deepcuts_fast.precision)
    train_mode: bool = False
    sequential_noise: bool = False
    include_padding: bool = False


def score(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    criterion: str = "smooth-cut",
    granularity: str = "weight",
    **kwargs,
) -> Scores:
    """Score every prunable weight (or unit) of `model` with one criterion; see `score_many`."""
    return score_many(model, batches, [criterion], granularity=granularity, **kwargs)[get_criterion(criterion).name]


def score_many(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]] | None,
    criteria: Sequence[str],
    granularity: str = "weight",
    unit_method: str = "sum",
    noise_samples: int = 10,
    noise_std: float = 1e-3,
    shift: float = 10.0,
    backend: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    seed: int = 0,
    progress: bool = True,
    max_memory: int | None = None,
    train_mode: bool = False,
    sequential_noise: bool = False,
    include_padding: bool = False,
    reference: bool = False,
    batch_indices: Sequence[int] | None = None,
) -> dict[str, Scores]:
    """Score `model` with several criteria, sharing forward/backward passes between them.

    `reference=True` reproduces the original DeepCuts code: train mode (dropout on), the N noise
    samples as N sequential passes, and activation means over padding tokens too. `backend` picks
    the kernels (see deepcuts_fast.kernels.backends); every backend gives the same scores.
    `batch_indices` gives each batch's position in the whole calibration set (default 0, 1, ...),
    which keys its noise: a shard of the batches then draws the same noise as the full run.
    `dtype` "auto" autocasts to bf16 only where the device runs it natively, and keeps the noisy
    pass in fp32 when bf16 would round its noise away (`deepcuts_fast.precision.choose_for_scoring`);
    each result's `meta["dtype"]` and `meta["dtype_reason"]` say what ran.
    """
    crits = _unique_criteria(criteria)
    if granularity != "unit" and any(c.fisher for c in crits):
        raise DeepCutsError("fisher scores heads and FFN neurons only; pass granularity='unit'")
    _check_options(granularity, unit_method, noise_samples, noise_std, backend)
    if reference:
        train_mode = sequential_noise = include_padding = True
    requested = parse_dtype(dtype)
    opts = ScoreOptions(granularity, unit_method, int(noise_samples), float(noise_std), float(shift), int(seed),
                        "auto" if requested is None else NAMES[requested], train_mode, sequential_noise,
                        include_padding)
    layout = model_layout(model)
    device = next(model.parameters()).device
    kernels = resolve(backend, device)
    meta_base = {**_model_meta(model, opts), "backend": kernels}
    results: dict[str, Scores] = {}
    for crit in (c for c in crits if not c.uses_gradient):
        results[crit.name] = _data_free_scores(model, layout, crit, opts, meta_base)
    grad_crits = [c for c in crits if c.uses_gradient]
    if grad_crits:
        batch_list = _materialise(batches)
        indices = list(range(len(batch_list)) if batch_indices is None else map(int, batch_indices))
        if len(indices) != len(batch_list):
            raise DeepCutsError(f"batch_indices has {len(indices)} entries for {len(batch_list)} batches")
        for smooth in (False, True):
            group = [c for c in grad_crits if c.smooth == smooth]
            if group:
                precision = choose_for_scoring(device, dtype, opts.noise_std if smooth else None)
                meta = {**meta_base, "dtype": precision.name, "dtype_reason": precision.reason}
                runner = _Pass(model, layout, group, smooth, opts, precision.autocast_dtype, max_memory, progress,
                               kernels)
                results.update(runner.run(batch_list, meta, indices))
    return {c.name: results[c.name] for c in crits}


def _unique_criteria(names: Sequence[str]) -> list[Criterion]:
    if isinstance(names, str):
        names = [names]
    out: list[Criterion] = []
    for n in names:
        c = get_criterion(n)
        if c not in out:
            out.append(c)
    if not out:
        raise DeepCutsError("no criterion given")
    return out


def _check_options(granularity: str, unit_method: str, n: int, std: float, backend: str) -> None:
    if granularity not in GRANULARITIES:
        raise DeepCutsError(f"unknown granularity {granularity!r}; choose 'weight' or 'unit'")
    if unit_method not in UNIT_METHODS:
        raise DeepCutsError(f"unknown unit_method {unit_method!r}; choose 'sum' or 'first-order'")
    if int(n) < 1:
        raise DeepCutsError(f"noise_samples must be >= 1, got {n}")
    if not (math.isfinite(std) and std >= 0):
        raise DeepCutsError(f"noise_std must be a finite number >= 0, got {std}")
    if backend not in BACKENDS:
        raise DeepCutsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _model_meta(model: nn.Module, opts: ScoreOptions) -> dict:
    prunable = sum(p.numel() for lin in prunable_linears(model).values() for p in lin.parameters())
    prefixes = tuple(layer.prefix + "." for layer in encoder_layers(model))
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))
    return {
        **asdict(opts),
        "model_type": model.config.model_type,
        "total_params": sum(p.numel() for p in model.parameters()),
        "prunable_params": prunable,
        "encoder_params": encoder,
        "version": __version__,
    }


def _materialise(batches) -> list[Mapping[str, torch.Tensor]]:
    if batches is None:
        raise DeepCutsError("gradient-based criteria need calibration batches; pass batches=...")
    batch_list = list(batches)
    if not batch_list:
        raise DeepCutsError("no calibration batches: the data is empty")
    for i, b in enumerate(batch_list):
        if "labels" not in b:
            raise DeepCutsError(f"calibration batch {i} has no 'labels'; gradient-based criteria need labels")
    return batch_list


def _data_free_scores(model: nn.Module, layout: list[LayerLayout], crit: Criterion, opts: ScoreOptions,
                      meta_base: dict) -> Scores:
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(opts.seed)
    weights = {}
    for layer in layout:
        for r in ROLES:
            for kind in ("weight", "bias"):
                name = f"{layer.names[r]}.{kind}"
                if name in params:
                    p = params[name].detach()
                    weights[name] = (torch.rand(p.shape, generator=g).to(p.device) if crit.random
                                     else p.float().abs())
    scores = Scores(weights, layout, {**meta_base, "criterion": crit.name, "batches": 0})
    if opts.granularity == "unit":
        units = scores.unit_scores()
        return Scores({}, layout, scores.meta, heads=units["heads"], neurons=units["neurons"])
    return scores


class _Pass:
    """One scoring pass (clean or noisy) over all calibration batches for a group of criteria."""

    def __init__(self, model, layout, criteria, smooth, opts: ScoreOptions, dtype, max_memory, progress, backend):
        self.model, self.layout, self.criteria, self.opts = model, layout, criteria, opts
        self.samples = opts.noise_samples if smooth else 1
        self.noise_std = opts.noise_std if smooth else 0.0
        self.dtype, self.max_memory, self.progress = dtype, max_memory, progress
        self.first_order = opts.granularity == "unit" and opts.unit_method == "first-order"
        self.fisher = any(c.fisher for c in criteria)
        self.weight_grads = not self.first_order and not all(c.fisher for c in criteria)
        self.grams: list = [None] * len(layout)  # per layer (head Fisher matrix, neuron Fisher matrix)
        self.ctx = PassContext(seed=opts.seed, backend=backend)
        self.device = next(model.parameters()).device
        self.probes = self._make_probes()
        self.acc: dict[str, dict] = {c.name: {} for c in criteria}
        self.units: dict[str, list] = {c.name: [None] * len(layout) for c in criteria}

    def _make_probes(self) -> list[list[LinearProbe]]:
        want_rows = any(c.cam for c in self.criteria)
        probes = []
        index = 0
        for layer in encoder_layers(self.model):
            row = []
            for r in ROLES:
                row.append(LinearProbe(
                    name=layer.names[r], index=index, module=layer.linears[r], ctx=self.ctx, role=r,
                    want_grad=self.weight_grads, want_rows=want_rows and self.weight_grads,
                    want_activation=(self.first_order or self.fisher) and r in ("attn_out", "ffn_out"),
                    fisher_group={"attn_out": layer.head_dim, "ffn_out": 1}.get(r, 0) if self.fisher else 0,
                ))
                index += 1
            probes.append(row)
        return probes

    def run(self, batches: list, meta_base: dict, indices: list[int]) -> dict[str, Scores]:
        chunk = 1 if self.opts.sequential_noise else self._samples_per_chunk(batches[0])
        chunks = [range(s, min(s + chunk, self.samples)) for s in range(0, self.samples, chunk)]
        fused = (self.ctx.backend != "torch" and len(chunks) == 1 and len(self.criteria) == 1
                 and self.weight_grads)
        if fused:
            self._fuse(self.criteria[0])
        names = "+".join(c.name for c in self.criteria)
        with self._scoring_mode(), tqdm(total=len(batches) * len(chunks), desc=f"scoring {names}",
                                        disable=not self.progress, leave=False) as bar:
            for b, batch in zip(indices, batches):
                for samples in chunks:
                    self._forward_backward(b, batch, samples)
                    bar.update(1)
                self._epilogue(b)
        meta = {**meta_base, "batches": len(batches), "samples_per_chunk": chunk,
                "weight_score": "fused" if fused else ("epilogue" if self.ctx.backend != "torch" else "torch")}
        return {c.name: self._finish(c, meta) for c in self.criteria}

    @contextlib.contextmanager
    def _scoring_mode(self):
        """Probes attached, no parameter gradients, eval (or train) mode; all restored afterwards."""
        model = self.model
        flags = [(p, p.requires_grad) for p in model.parameters()]
        was_training = model.training
        attention = model.config._attn_implementation
        for p, _ in flags:
            p.requires_grad_(False)
        model.train(self.opts.train_mode)
        if self.device.type == "cpu" and self.dtype is not None and attention == "sdpa":
            model.set_attn_implementation("eager")  # torch's CPU sdpa backward is ~4x slower in bf16
        handle = embeddings_module(model).register_forward_hook(_start_graph)
        for row in self.probes:
            for p in row:
                p.attach()
        fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        try:
            with fork:
                torch.manual_seed(self.opts.seed)
                yield
        finally:
            handle.remove()
            for row in self.probes:
                for p in row:
                    p.detach()
                    p.reset()
                    p.fused = None
            for p, flag in flags:
                p.requires_grad_(flag)
            if model.config._attn_implementation != attention:
                model.set_attn_implementation(attention)
            model.train(was_training)

    def _samples_per_chunk(self, batch: Mapping[str, torch.Tensor]) -> int:
        """How many noisy copies of a batch fit under the memory cap (a rough activation estimate)."""
        batch_size, seq = batch["input_ids"].shape[:2]
        first = self.probes[0]
        hidden, ffn = first[0].module.in_features, first[4].module.out_features
        heads = first[0].module.out_features // self.layout[0].head_dim
        elt = 2 if self.dtype in (torch.bfloat16, torch.float16) else 4
        per_layer = batch_size * seq * (10 * hidden + 3 * ffn) * elt + 3 * batch_size * heads * seq * seq * elt
        per_sample = per_layer * len(self.layout)
        cap = self.max_memory or _default_memory(self.device)
        chunk = min(self.samples, cap // per_sample)
        if self.device.type == "cpu" and self.max_memory is None:
            chunk = min(chunk, CPU_CHUNK_TOKENS // (batch_size * seq))
        return max(1, chunk)

    def _forward_backward(self, b: int, batch: Mapping[str, torch.Tensor], samples: range) -> None:
        k = len(samples)
        inputs = {key: v.to(self.device) for key, v in batch.items() if torch.is_tensor(v)}
        labels = inputs.pop("labels")
        batch_size = labels.shape[0]
        if k > 1:
            inputs = {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in inputs.items()}
            labels = labels.repeat(k, *([1] * (labels.dim() - 1)))
        mask = inputs.get("attention_mask")
        if mask is None or self.opts.include_padding:
            mask = torch.ones(inputs["input_ids"].shape, device=self.device)
        self.ctx.token_mask = mask.reshape(-1).float()
        self.ctx.batch_index, self.ctx.samples, self.ctx.noise_std = b, samples, self.noise_std
        self.ctx.loss_scale = float(batch_size)
        with autocast(self.device, self.dtype):
            logits = self.model(**inputs).logits
        loss = _summed_sample_loss(logits.float(), labels, batch_size)
        if not torch.isfinite(loss):
            raise DeepCutsError(f"non-finite loss ({loss.item()}) on calibration batch {b}; "
                                "check the model weights and labels")
        loss.backward()

    def _fuse(self, crit: Criterion) -> None:
        """Point every probe's fused weight score at its accumulator (weight) or per-batch row/column sums (unit)."""
        acc = self.acc[crit.name]
        for row in self.probes:
            for p in row:
                w = p.module.weight
                f = FusedScore(scale=1.0 / self.samples, shift=crit.row_weight_shift(self.opts.shift))
                if self.opts.granularity == "weight":
                    f.s = acc.setdefault(p.name + ".weight", torch.zeros(w.shape, device=self.device))
                elif UNIT_AXIS[p.role] == "rows":
                    f.rows = torch.zeros(w.shape[0], device=self.device)
                else:
                    f.cols = torch.zeros(w.shape[1], device=self.device)
                p.fused = f

    @torch.no_grad()
    def _epilogue(self, b: int) -> None:
        """Turn one batch's accumulated statistics into scores and add them up."""
        self._check_finite(b)
        for li, row in enumerate(self.probes):
            if self.fisher:
                grams = self._fisher_grams(row)
                prev = self.grams[li]
                self.grams[li] = grams if prev is None else (prev[0] + grams[0], prev[1] + grams[1])
            for crit in self.criteria:
                if crit.fisher:
                    heads, neurons = grams[0].diagonal().clone(), grams[1].diagonal().clone()
                elif self.first_order:
                    heads, neurons = self._first_order_units(crit, row)
                elif self.ctx.backend != "torch":
                    sums = [self._kernel_scores(crit, p, b) for p in row]
                    if self.opts.granularity == "weight":
                        continue
                    heads, neurons = reduce_sums_to_units(self.layout[li], {p.role: s for p, s in zip(row, sums)})
                else:
                    batch_scores = {}
                    for p in row:
                        batch_scores.update(self._weight_scores(crit, p, b))
                    if self.opts.granularity == "weight":
                        _accumulate(self.acc[crit.name], batch_scores)
                        continue
                    heads, neurons = reduce_to_units(self.layout[li], batch_scores)
                prev = self.units[crit.name][li]
                self.units[crit.name][li] = (heads, neurons) if prev is None else (prev[0] + heads, prev[1] + neurons)
            for p in row:
                p.reset()

    def _check_finite(self, b: int) -> None:
        """Name the layer nearest the loss whose gradients are not finite (where they went bad)."""
        stats = [(p, (p.grad if p.grad is not None else p.grad_bias) if self.weight_grads else p.act_dot)
                 for row in self.probes for p in row]
        probes = [p for p, stat in stats if stat is not None]
        sums = torch.stack([stat.sum() for _, stat in stats if stat is not None])
        finite = torch.isfinite(sums).tolist()  # one device sync per batch
        for p, ok in zip(reversed(probes), reversed(finite)):
            if not ok:
                raise DeepCutsError(f"non-finite gradients in {p.name} on calibration batch {b}; "
                                    "check the model weights and inputs, or score in fp32")

    def _ensure_gradients(self, p: LinearProbe, b: int) -> None:
        """Zero statistics for a pruned-away block (no heads) that never runs; an error if a used one got none."""
        if p.grad_bias is None and p.module.weight.numel() == 0:
            p.grad = torch.zeros_like(p.module.weight, dtype=torch.float32)
            p.grad_bias = torch.zeros(p.module.out_features, device=self.device)
            p.out_sum = torch.zeros(p.module.out_features, device=self.device)
        if p.grad_bias is None or (p.fused is None and p.grad is None):
            raise DeepCutsError(f"no gradient reached {p.name} on calibration batch {b}; "
                                "is the layer used by the model's forward?")

    def _row_weight(self, crit: Criterion, p: LinearProbe) -> torch.Tensor | None:
        shift = crit.row_weight_shift(self.opts.shift)
        return None if shift is None else p.out_sum / at_least_one(p.tokens) + shift

    def _weight_scores(self, crit: Criterion, p: LinearProbe, b: int) -> dict[str, torch.Tensor]:
        self._ensure_gradients(p, b)
        scale = 1.0 / self.samples
        w = p.module.weight.detach().float()
        out = {p.name + ".weight": w * p.grad * scale}
        if p.module.bias is not None:
            out[p.name + ".bias"] = p.module.bias.detach().float() * p.grad_bias * scale
        roww = self._row_weight(crit, p)
        if roww is not None:
            out = {k: v * (roww[:, None] if v.dim() == 2 else roww) for k, v in out.items()}
        for v in out.values():
            v.abs_()
        return out

    def _kernel_scores(self, crit: Criterion, p: LinearProbe, b: int) -> torch.Tensor | None:
        """Add one Linear's batch scores with the fused kernels; for units, return its row or column sums."""
        self._ensure_gradients(p, b)
        scale, roww = 1.0 / self.samples, self._row_weight(crit, p)
        unit = self.opts.granularity == "unit"
        axis = UNIT_AXIS[p.role]
        if p.fused is not None:  # the weight score was added by the backward hook; take this batch's sums
            buffer = p.fused.rows if axis == "rows" else p.fused.cols
            sums = None if buffer is None else buffer.clone()
            if buffer is not None:
                buffer.zero_()
        else:
            w = p.module.weight.detach()
            s = None if unit else self.acc[crit.name].setdefault(p.name + ".weight",
                                                                  torch.zeros(w.shape, device=self.device))
            sums = torch.zeros(w.shape[0 if axis == "rows" else 1], device=self.device) if unit else None
            if w.numel():
                weight_score_epilogue(w, p.grad, roww, scale, s, sums if axis == "rows" else None,
                                      sums if axis == "cols" else None, backend=self.ctx.backend)
        if p.module.bias is not None:
            bias = (p.module.bias.detach().float() * p.grad_bias * scale)
            bias = (bias if roww is None else bias * roww).abs_()
            if not unit:
                _accumulate(self.acc[crit.name], {p.name + ".bias": bias})
            elif axis == "rows":
                sums = sums + bias
        return sums

    def _unit_probes(self, row: list[LinearProbe], field: str, empty: tuple[int, ...]) -> list[tuple[LinearProbe, int]]:
        """(probe, unit width) at the inputs of a layer's attention-output and FFN-output Linears, each with
        its gathered `field`; one that kept no heads / neurons gets an empty `field` of shape `empty`."""
        pairs = []
        for p, width in ((row[3], self.layout[0].head_dim), (row[5], 1)):
            if getattr(p, field) is None and p.module.in_features == 0:
                setattr(p, field, torch.zeros(empty, device=self.device))
            if getattr(p, field) is None:
                raise DeepCutsError(f"no gradient reached the input of {p.name}")
            pairs.append((p, width))
        return pairs

    def _fisher_grams(self, row: list[LinearProbe]) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's (head, neuron) Fisher matrices of one layer: sums over examples of g g^T."""
        (heads, _), (neurons, _) = self._unit_probes(row, "fisher", (0, 0))
        return heads.fisher, neurons.fisher

    def _first_order_units(self, crit: Criterion, row: list[LinearProbe]) -> tuple[torch.Tensor, torch.Tensor]:
        result = []
        for p, d in self._unit_probes(row, "act_stats", (4, 0)):
            channel = p.act_dot / self.samples
            shift = crit.row_weight_shift(self.opts.shift)
            if shift is not None:
                channel = channel * (p.act_sum / at_least_one(p.tokens) + shift)
            result.append(channel.view(-1, d).sum(1).abs())
        return result[0], result[1]

    def _finish(self, crit: Criterion, meta: dict) -> Scores:
        meta = {**meta, "criterion": crit.name}
        if self.opts.granularity == "weight":
            return Scores(self.acc[crit.name], self.layout, meta)
        units = self.units[crit.name]
        return Scores({}, self.layout, meta, heads=[u[0] for u in units], neurons=[u[1] for u in units],
                      interactions=list(self.grams) if crit.fisher else None)


def _start_graph(module: nn.Module, inputs, output):
    """Make the embedding output require grad so the encoder builds a graph with frozen weights."""
    if torch.is_tensor(output) and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return output


def _summed_sample_loss(logits: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Sum over stacked copies of each copy's mean loss (CE, or MSE for one output)."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.view(-1), labels.float().view(-1), reduction="sum") / batch_size
    return F.cross_entropy(logits, labels.long().view(-1), reduction="sum") / batch_size


def _accumulate(acc: dict, batch_scores: Mapping[str, torch.Tensor]) -> None:
    for k, v in batch_scores.items():
        if k in acc:
            acc[k].add_(v)
        else:
            acc[k] = v


def _default_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_CPU_MEMORY
