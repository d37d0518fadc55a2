"""dc.distill: label-free recovery of a slim model by distillation to the dense model it was pruned from."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_batches, tiny_model
from test_pruning import random_plan

import deepcuts_fast as dc
from deepcuts_fast.arch import encoder_layers
from deepcuts_fast.distill import _layer_pairs
from deepcuts_fast.errors import DeepCutsError

FAST = dict(epochs=25, lr=3e-4, warmup=0.0, progress=False)


def model_of(kind: str):
    """A tiny dense model whose outputs carry signal: a bare encoder (judged by its mean-pooled embedding) or a
    classifier with a head scaled up (random init gives nearly uniform softmaxes)."""
    model = tiny_model("bert", seed=3)
    if kind == "encoder":
        return model.bert
    with torch.no_grad():
        model.classifier.weight.mul_(200)
    return model


def gap(model, dense, batches) -> float:
    """Plain PyTorch: the mean squared distance of the mean-pooled embeddings (an encoder), or the mean KL from the
    dense softmax (a classifier), over the examples of `batches`."""
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
            if hasattr(dense, "classifier"):
                p, q = F.log_softmax(dense(**inputs).logits, -1), F.log_softmax(model(**inputs).logits, -1)
                total += float((p.exp() * (p - q)).sum())
            else:
                w = b["attention_mask"].unsqueeze(-1).float()
                pooled = [(m(**inputs).last_hidden_state * w).sum(1) / w.sum(1) for m in (model, dense)]
                total += float((pooled[0] - pooled[1]).pow(2).sum())
            n += len(b["input_ids"])
    return total / n


@pytest.mark.parametrize("kind", ["encoder", "classifier"])
@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_distillation_brings_the_slim_model_back_towards_the_dense_one(kind, hidden_weight):
    dense = model_of(kind)
    slim = dc.prune(dense, random_plan(dense, 0))
    calibration, held_out = tiny_batches(n_batches=4, seed=1), tiny_batches(n_batches=2, seed=7)
    before = {k: v.clone() for k, v in slim.state_dict().items()}
    out = dc.distill(slim, dense, calibration, hidden_weight=hidden_weight, **FAST)
    assert out is not slim and not out.training
    assert all(torch.equal(before[k], v) for k, v in slim.state_dict().items())  # the input is left as it was
    assert gap(out, dense, calibration) < 0.5 * gap(slim, dense, calibration)
    if kind == "encoder":  # (16 examples leave a 2-class head's held-out KL at noise level)
        assert gap(out, dense, held_out) < gap(slim, dense, held_out)


def test_labels_are_ignored_and_a_run_reproduces():
    dense = model_of("classifier")
    slim = dc.prune(dense, random_plan(dense, 1))
    labelled = tiny_batches(n_batches=2, seed=2)
    plain = [{k: v for k, v in b.items() if k != "labels"} for b in labelled]
    a, b = (dc.distill(slim, dense, data, epochs=2, progress=False) for data in (labelled, plain))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_layers_are_matched_to_the_dense_layers_they_were_cut_from():
    from test_layers import deep_model, full_widths_dropping

    dense = deep_model("bert", seed=4)
    slim = dc.prune(dense, full_widths_dropping(dense, [1]))
    pairs = _layer_pairs(slim, dense)
    layers = encoder_layers(dense)
    assert [d for _, d in pairs] == [dense.get_submodule(layers[i].prefix) for i in (0, 2, 3)]
    out = dc.distill(slim, dense, tiny_batches(n_batches=2, seed=4), epochs=1, progress=False)
    assert len(encoder_layers(out)) == 3


def test_bad_input_is_refused():
    dense = model_of("classifier")
    slim = dc.prune(dense, random_plan(dense, 0))
    with pytest.raises(DeepCutsError, match="hidden_weight"):
        dc.distill(slim, dense, tiny_batches(), hidden_weight=-1.0, progress=False)
    other = tiny_model("bert", seed=11)
    with pytest.raises(DeepCutsError, match="not pruned from this dense model"):
        dc.distill(slim, other, tiny_batches(), progress=False)
