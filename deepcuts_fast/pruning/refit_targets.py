"""What the least-squares refit fits to: the dense model's residual sums, recorded during a forward of it.

`reconstruct` fits each slim output projection so that, at the real calibration tokens, the residual sum its output
is added into (its output plus the residual stream) is the dense model's. Those targets cost one dense forward over
the calibration batches. A pass that runs the dense model over the same batches anyway, as the scoring pass does,
can record them on the way (`RefitTargets.recording`), and the refit then runs only the slim model (about half the
refit's time on MiniLM: benchmarks/RESULTS.md). `reconstruct`'s own layer-by-layer walk of the dense model records
them with the same hooks (`recording_layer`), so both give the same targets.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..arch import OUTPUT_ROLES, encoder_layers
from ..errors import DeepCutsError
from ..families import family

REFIT_ROLES = OUTPUT_ROLES  # the block outputs: their inputs are what pruning removed


def tokens(t: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Rows of the real tokens, in float32, off any autograd graph."""
    t = t.detach()
    return (t.flatten(0, -2) if real is None else t[real]).float()


@contextlib.contextmanager
def residuals(layer, pre_norm: bool) -> Iterator[Callable[[torch.Tensor, torch.Tensor | None, str], torch.Tensor]]:
    """A reader (the layer's input hidden states, the real-token mask, role) -> the residual stream that `role`'s
    output is added to, at the real tokens, for a forward of the layer made inside this block: the layer's input for
    the attention output; for the FFN output, in a post-norm layer the FFN's input (the attention block's normalised
    output), in a pre-norm layer the layer's input plus the attention output."""
    seen: dict = {}
    if pre_norm:
        handle = layer.linears["attn_out"].register_forward_hook(lambda m, args, out: seen.__setitem__("ffn", out))
    else:
        handle = layer.linears["ffn_in"].register_forward_pre_hook(lambda m, args: seen.__setitem__("ffn", args[0]))

    def read(hidden: torch.Tensor, real: torch.Tensor | None, role: str) -> torch.Tensor:
        if role == "attn_out":
            return tokens(hidden, real)
        ffn = tokens(seen["ffn"], real)
        return tokens(hidden, real) + ffn if pre_norm else ffn

    try:
        yield read
    finally:
        handle.remove()


@contextlib.contextmanager
def recording_layer(module: nn.Module, layer, pre_norm: bool, real: Callable[[], torch.Tensor | None],
                    sink: Mapping[str, list], outputs: list | None = None) -> Iterator[None]:
    """While open, each forward of the dense encoder layer `module` (described by `layer`) appends to `sink[role]`
    the residual sum of each refit role at the real tokens (`real()`: the current batch's mask, None for all
    tokens), and to `outputs`, when given, the layer's output rows there."""
    state: dict = {}

    def take_input(m, args, kwargs):
        state["hidden"] = args[0]

    def finish(m, args, kwargs, out):
        mask = real()
        for role in REFIT_ROLES:
            sink[role].append(tokens(state[role], mask) + read(state["hidden"], mask, role))
        if outputs is not None:
            outputs.append(tokens(out[0] if isinstance(out, tuple) else out, mask))

    handles = [layer.linears[role].register_forward_hook(lambda m, i, out, role=role: state.__setitem__(role, out))
               for role in REFIT_ROLES]
    handles.append(module.register_forward_pre_hook(take_input, with_kwargs=True))
    handles.append(module.register_forward_hook(finish, with_kwargs=True))
    try:
        with residuals(layer, pre_norm) as read:
            yield
    finally:
        for h in handles:
            h.remove()


def _state(model: nn.Module) -> int:
    """A number every in-place change of the model's parameters changes (their version counters' sum)."""
    return sum(p._version for p in model.parameters())


class RefitTargets:
    """A dense model's refit targets on a sequence of batches, recorded one forward at a time: per encoder layer,
    per refit role, the residual sums at each batch's real tokens, and with `outputs` the layer's output rows (what
    bridging removed layers reads). Valid for that model, unchanged, those batches in that order, and the autocast
    dtype the forwards ran in (`check`)."""

    def __init__(self, dense: nn.Module, outputs: bool = False) -> None:
        layers = encoder_layers(dense)
        self.roles: list[dict[str, list[torch.Tensor]]] = [{r: [] for r in REFIT_ROLES} for _ in layers]
        self.outputs: list[list[torch.Tensor]] | None = [[] for _ in layers] if outputs else None
        self.token_counts: list[int] = []  # real tokens per recorded batch
        self.autocast_dtype: torch.dtype | None = None
        self._dense, self._state, self._layers = dense, _state(dense), layers
        self._pre_norm = family(dense).pre_norm

    @staticmethod
    def bytes_needed(dense: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], outputs: bool = False) -> int:
        """Memory the targets of `dense` on `batches` take (float32 rows of the hidden size per real token)."""
        layers = encoder_layers(dense)
        hidden = layers[0].linears["attn_out"].out_features
        return (len(REFIT_ROLES) + outputs) * len(layers) * real_token_count(batches) * hidden * 4

    @contextlib.contextmanager
    def recording(self, inputs: Mapping[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> Iterator[None]:
        """Record the one forward of the dense model on `inputs` (one batch, as the model gets it) run inside this
        block under autocast to `autocast_dtype` (None: fp32)."""
        if self.token_counts and autocast_dtype != self.autocast_dtype:
            raise DeepCutsError(f"refit targets recorded in {self.autocast_dtype} cannot go on in {autocast_dtype}")
        mask = inputs.get("attention_mask")
        real = None if mask is None else mask.bool()
        with contextlib.ExitStack() as stack:
            for i, layer in enumerate(self._layers):
                stack.enter_context(recording_layer(self._dense.get_submodule(layer.prefix), layer, self._pre_norm,
                                                    lambda: real, self.roles[i],
                                                    None if self.outputs is None else self.outputs[i]))
            yield
        self.autocast_dtype = autocast_dtype
        self.token_counts.append(real_token_count([inputs]))

    def check(self, dense: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
              autocast_dtype: torch.dtype | None) -> None:
        """Refuse targets that are not those of `dense` (the same object, its weights unchanged since) on `batches`
        with forwards in `autocast_dtype`: a refit to them would silently fit something else."""
        if dense is not self._dense or _state(dense) != self._state:
            raise DeepCutsError("these refit targets were recorded on another dense model, or on this one before its "
                                "weights changed; reconstruct without them (targets=None)")
        counts = [real_token_count([b]) for b in batches]
        if counts != self.token_counts:
            raise DeepCutsError(f"these refit targets were recorded on {len(self.token_counts)} batches of "
                                f"{sum(self.token_counts)} real tokens, not on these {len(counts)} batches of "
                                f"{sum(counts)}; reconstruct on the batches they were recorded on, or without them")
        if autocast_dtype != self.autocast_dtype:
            raise DeepCutsError(f"these refit targets were recorded in {self.autocast_dtype or torch.float32}, and the "
                                f"refit runs in {autocast_dtype or torch.float32}; pass the same dtype to both")

    def walk(self, kept: set[int]) -> Iterator[tuple[int, dict]]:
        """What `reconstruct`'s dense walk yields, from the recorded targets: for each layer in `kept`, in order, its
        index and per role the targets of every batch, the FFN output's bridged over the removed layers after it."""
        fam = family(self._dense)
        for i in sorted(kept):
            targets = {role: list(rows) for role, rows in self.roles[i].items()}
            end = next_kept(i, kept, len(self._layers))
            if end > i + 1:
                if self.outputs is None:
                    raise DeepCutsError("the slim model has layers removed, and these refit targets were recorded "
                                        "without the layer outputs bridging them needs (outputs=True)")
                norm = fam.output_norm_of(self._dense.get_submodule(self._layers[i].prefix))
                after = self.outputs[end - 1]  # the dense hidden states after the removed layers
                targets["ffn_out"] = [bridge(z, a, norm) for z, a in zip(targets["ffn_out"], after)]
            yield i, targets


def next_kept(i: int, kept: set[int], count: int) -> int:
    """The first layer in `kept` after layer `i` of `count` layers (`count` when none): the layers between are
    removed, and layer `i`'s FFN output stands in for them (`bridge`)."""
    return next((j for j in range(i + 1, count) if j in kept), count)


def bridge(residual_sum: torch.Tensor, after: torch.Tensor, norm: nn.Module | None):
    """The residual sum that makes a layer output `after` (the dense hidden states after the removed layers that
    follow it) instead of what its own `residual_sum` gives: `after` itself in a pre-norm layer, whose output is the
    sum; in a post-norm layer the output LayerNorm's inverse of `after` at each token's own mean and scale (the sum
    itself for a removed layer that changed nothing)."""
    if norm is None:
        return after
    gamma = norm.weight.detach().float()
    floor = 1e-3 * float(gamma.abs().mean())  # a near-zero scale would blow the inverse up
    gamma = torch.where(gamma >= 0, gamma.clamp_min(floor), gamma.clamp_max(-floor))
    beta = norm.bias.detach().float() if getattr(norm, "bias", None) is not None else 0.0
    mean = residual_sum.mean(-1, keepdim=True)
    scale = (residual_sum.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return mean + scale * (after - beta) / gamma


def real_token_count(batches: Sequence[Mapping[str, torch.Tensor]]) -> int:
    """The real tokens of `batches` (those their attention masks keep; every token where there is no mask)."""
    total = 0
    for b in batches:
        mask = b.get("attention_mask")
        total += int(b["input_ids"].numel() if mask is None else mask.bool().sum())
    return total
