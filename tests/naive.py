"""Deliberately plain re-implementations of the DeepCuts scores, used as test oracles.

Explicit autograd (torch.autograd.grad on the weights), one noise sample at a time, masked means
written out by hand. Slow and obvious; shares nothing with the package but the documented Philox noise (its plain PyTorch reference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deepcuts_fast.arch import ROLES, encoder_layers
from deepcuts_fast.kernels import philox_normal_reference


def prunable(model):
    """[(module name, Linear)] in forward order, a fused Linear (one QKV projection) once."""
    return [(name, lin) for name, (lin, _) in _numbered(model).items()]


def _numbered(model):
    """module name -> (Linear, its noise key): the position of its first role among the six roles of all layers
    (layer * 6 + role), the Linear index the documented noise is keyed by."""
    out = {}
    for layer in encoder_layers(model):
        for i, r in enumerate(ROLES):
            out.setdefault(layer.names[r], (layer.linears[r], layer.index * len(ROLES) + i))
    return out


def first_call(hook):
    """`hook` for a Linear's first call in the forward, the call on the tokens; a later call (DeBERTa runs its Q/K
    projections on the relative-position embeddings too) gets no noise and passes no gradient to the weights:
    the scores are defined on the token path."""
    calls = []

    def wrapped(mod, inp, out):
        calls.append(1)
        if len(calls) == 1:
            return hook(mod, inp, out)
        return F.linear(inp[0], mod.weight.detach(), None if mod.bias is None else mod.bias.detach())

    return wrapped


def batch_loss(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.view(-1), batch["labels"].float())
    return F.cross_entropy(logits, batch["labels"])


def noise_sigma(out, mask, noise_std, noise_scale):
    """The noise's standard deviation on one Linear output `out` (batch, seq, channels) of one noise sample:
    `noise_std` itself, or (relative) `noise_std` times the population std of `out` over the tokens whose mask is 1."""
    if noise_scale == "absolute":
        return noise_std
    real = out.detach().double()[mask.bool()]  # (real tokens, channels)
    return noise_std * float(real.std(unbiased=False))


def naive_scores(model, batches, criterion, noise_samples=1, noise_std=0.0, shift=10.0, seed=0,
                 include_padding=False, noise_scale="relative"):
    """Per-parameter scores summed over batches, as the README's criteria table defines them."""
    smooth = criterion.startswith("smooth")
    cam = "cam" in criterion
    c = shift if criterion.endswith("shift") else 0.0
    n_samples = noise_samples if smooth else 1
    numbered = _numbered(model)
    mods = prunable(model)
    params = [(f"{name}.{k}", getattr(lin, k)) for name, lin in mods for k in ("weight", "bias")
              if getattr(lin, k) is not None]
    for _, p in params:
        p.requires_grad_(True)
    total = {name: torch.zeros_like(p) for name, p in params}
    for b, batch in enumerate(batches):
        mask = batch["attention_mask"].float()
        if include_padding:
            mask = torch.ones_like(mask)
        grads = {name: torch.zeros_like(p) for name, p in params}
        out_means = {name: 0.0 for name, _ in mods}
        for n in range(n_samples):
            handles, outputs = [], {}
            for name, (lin, idx) in numbered.items():
                def hook(mod, inp, out, name=name, idx=idx):
                    outputs[name] = out.detach()
                    if smooth and noise_std:
                        sigma = noise_sigma(out, mask, noise_std, noise_scale)
                        return out + sigma * philox_normal_reference(out.numel(), seed, b, idx, range(n, n + 1)
                                                                     ).view(out.shape)
                    return out
                handles.append(lin.register_forward_hook(first_call(hook)))
            loss = batch_loss(model, batch)
            for h in handles:
                h.remove()
            gs = torch.autograd.grad(loss, [p for _, p in params])
            for (name, _), g in zip(params, gs):
                grads[name] += g / n_samples
            for name, _ in mods:
                y = outputs[name]
                out_means[name] = out_means[name] + (y * mask[..., None]).sum((0, 1)) / mask.sum() / n_samples
        for name, p in params:
            s = p.detach() * grads[name]
            if cam:
                a = out_means[name.rsplit(".", 1)[0]] + c
                s = s * (a[:, None] if s.dim() == 2 else a)
            total[name] += s.abs()
    for _, p in params:
        p.requires_grad_(False)
    return total


def naive_first_order(model, batches, smooth=False, noise_samples=1, noise_std=0.0, seed=0, noise_scale="relative"):
    """|d loss / d m| for a mask m=1 multiplying each head's context output and each FFN neuron."""
    layers = encoder_layers(model)
    heads = [torch.zeros(layer.num_heads) for layer in layers]
    neurons = [torch.zeros(layer.ffn_width) for layer in layers]
    numbered = _numbered(model)
    n_samples = noise_samples if smooth else 1
    for b, batch in enumerate(batches):
        gh = [torch.zeros(layer.num_heads) for layer in layers]
        gn = [torch.zeros(layer.ffn_width) for layer in layers]
        for n in range(n_samples):
            ms, handles = unit_masks(layers)
            if smooth and noise_std:
                for lin, idx in numbered.values():
                    def hook(mod, inp, out, idx=idx):
                        sigma = noise_sigma(out, batch["attention_mask"], noise_std, noise_scale)
                        return out + sigma * philox_normal_reference(out.numel(), seed, b, idx, range(n, n + 1)
                                                                     ).view(out.shape)
                    handles.append(lin.register_forward_hook(first_call(hook)))
            grads = torch.autograd.grad(batch_loss(model, batch), ms)
            for h in handles:
                h.remove()
            for i in range(len(layers)):
                gh[i] += grads[2 * i] / n_samples
                gn[i] += grads[2 * i + 1] / n_samples
        for i in range(len(layers)):
            heads[i] += gh[i].abs()
            neurons[i] += gn[i].abs()
    return heads, neurons


def unit_masks(layers) -> tuple[list[torch.Tensor], list]:
    """All-ones head and neuron masks (requiring grad) multiplied into every layer's attn_out / ffn_out
    inputs by pre-hooks: ([head mask, neuron mask] per layer, hook handles)."""
    ms, handles = [], []
    for layer in layers:
        mh = torch.ones(layer.num_heads, requires_grad=True)
        mn = torch.ones(layer.ffn_width, requires_grad=True)
        ms += [mh, mn]
        d = layer.head_dim
        handles.append(layer.linears["attn_out"].register_forward_pre_hook(
            lambda mod, inp, mh=mh, d=d: (inp[0] * mh.repeat_interleave(d),)))
        handles.append(layer.linears["ffn_out"].register_forward_pre_hook(
            lambda mod, inp, mn=mn: (inp[0] * mn,)))
    return ms, handles


def naive_fisher(model, batches):
    """Per layer (head, neuron) sums over examples of g g^T, g = d loss(example) / d mask, one example at a time."""
    layers = encoder_layers(model)
    grams = [(torch.zeros(layer.num_heads, layer.num_heads), torch.zeros(layer.ffn_width, layer.ffn_width))
             for layer in layers]
    for batch in batches:
        for e in range(batch["input_ids"].shape[0]):
            example = {k: v[e:e + 1] for k, v in batch.items()}
            ms, handles = unit_masks(layers)
            grads = torch.autograd.grad(batch_loss(model, example), ms)
            for h in handles:
                h.remove()
            for i in range(len(layers)):
                gh, gn = grads[2 * i], grads[2 * i + 1]
                grams[i][0].add_(torch.outer(gh, gh))
                grams[i][1].add_(torch.outer(gn, gn))
    return grams
