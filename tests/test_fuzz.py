"""Property-based fuzzing of the planner and the physical pruner (hypothesis, bounded and derandomized
so CI is reproducible): random architectures, random plans and targets, zero-width layers."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_batches
from test_pruning import logits, zero_dropped_units

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (in the test / dev extras)")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import deepcuts_fast as dc  # noqa: E402
from deepcuts_fast.arch import encoder_layers  # noqa: E402
from deepcuts_fast.errors import DeepCutsError  # noqa: E402
from deepcuts_fast.flops import encoder_flops  # noqa: E402
from deepcuts_fast.scoring.layout import model_layout  # noqa: E402

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
VOCAB = 100


@st.composite
def shapes(draw):
    """A random small encoder shape of a random supported family."""
    return dict(arch=draw(st.sampled_from(["bert", "roberta", "distilbert", "electra"])),
                attn=draw(st.sampled_from(["sdpa", "eager"])), heads=draw(st.integers(1, 4)),
                head_dim=draw(st.sampled_from([2, 4, 8])), ffn=draw(st.integers(1, 24)), layers=draw(st.integers(1, 3)),
                seed=draw(st.integers(0, 2**16)))


def build(shape: dict):
    """A random-weight classifier with the drawn shape (biases random too, so zeroed units matter)."""
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                              RobertaConfig, RobertaForSequenceClassification)

    torch.manual_seed(shape["seed"])
    hidden = shape["heads"] * shape["head_dim"]
    common = dict(vocab_size=VOCAB, max_position_embeddings=64, num_labels=2, attn_implementation=shape["attn"])
    if shape["arch"] == "distilbert":
        model = DistilBertForSequenceClassification(DistilBertConfig(
            dim=hidden, n_heads=shape["heads"], hidden_dim=shape["ffn"], n_layers=shape["layers"], **common))
    else:
        cfg_cls, model_cls = {"bert": (BertConfig, BertForSequenceClassification),
                              "roberta": (RobertaConfig, RobertaForSequenceClassification),
                              "electra": (ElectraConfig, ElectraForSequenceClassification)}[shape["arch"]]
        extra = {"pad_token_id": 1} if shape["arch"] == "roberta" else {}
        if shape["arch"] == "electra":
            extra["embedding_size"] = hidden
        model = model_cls(cfg_cls(hidden_size=hidden, num_attention_heads=shape["heads"],
                                  intermediate_size=shape["ffn"], num_hidden_layers=shape["layers"], **common, **extra))
    with torch.no_grad():
        for layer in encoder_layers(model):
            for lin in layer.linears.values():
                lin.bias.normal_(0, 0.1)
    return model.eval()


def subsets(draw, width: int) -> list[int]:
    """A random subset of range(width), empty and full included."""
    return sorted(draw(st.sets(st.integers(0, width - 1), max_size=width))) if width else []


@FUZZ
@given(shape=shapes(), data=st.data())
def test_pruned_equals_dense_with_units_zeroed_or_a_clear_error(shape, data):
    model = build(shape)
    heads = [subsets(data.draw, shape["heads"]) for _ in range(shape["layers"])]
    neurons = [subsets(data.draw, shape["ffn"]) for _ in range(shape["layers"])]
    widths = ([shape["heads"]] * shape["layers"], [shape["ffn"]] * shape["layers"])
    if not any(heads) and not any(neurons):
        event("plan keeps nothing")
        try:
            dc.Plan(heads, neurons, *widths)
        except DeepCutsError as e:
            assert "removes every head and every FFN neuron" in str(e)
            return
        raise AssertionError("a plan that keeps nothing was accepted")
    plan = dc.Plan(heads, neurons, *widths)
    slim = dc.prune(model, plan)
    reference = zero_dropped_units(model, plan)
    batch = tiny_batches(n_batches=1, batch_size=3, seq_len=7, seed=shape["seed"],
                         pad_id=1 if shape["arch"] == "roberta" else 0)[0]
    torch.testing.assert_close(logits(slim, batch), logits(reference, batch), rtol=1e-5, atol=1e-5)
    assert [layer.num_heads for layer in encoder_layers(slim)] == [len(h) for h in heads]
    assert [layer.ffn_width for layer in encoder_layers(slim)] == [len(n) for n in neurons]


@FUZZ
@given(shape=shapes(), data=st.data())
def test_random_targets_give_a_valid_plan_within_budget_or_a_clear_error(shape, data):
    model = build(shape)
    layers = shape["layers"]
    values = st.floats(0, 10, allow_nan=False, width=32) | st.just(0.0)  # zeros: ties and dead units
    head_scores = [torch.tensor(data.draw(st.lists(values, min_size=shape["heads"], max_size=shape["heads"])))
                   for _ in range(layers)]
    neuron_scores = [torch.tensor(data.draw(st.lists(values, min_size=shape["ffn"], max_size=shape["ffn"])))
                     for _ in range(layers)]
    scores = dc.Scores({}, model_layout(model), {"criterion": "fuzz"}, heads=head_scores, neurons=neuron_scores)
    kind = data.draw(st.sampled_from(["keep_flops", "keep_params", "keep_heads", "keep_neurons"]))
    fraction = data.draw(st.floats(-0.2, 1.2, allow_nan=False))
    options = dict(scope=data.draw(st.sampled_from(["global", "layer"])), min_heads=data.draw(st.integers(0, 2)),
                   min_neurons=data.draw(st.integers(0, 3)), multiple_of=data.draw(st.sampled_from([1, 1, 4])),
                   seq_len=16)
    # a layer whose scores are all zero says nothing about its units: refused unless min_heads / min_neurons keep some
    uninformed = any(h.numel() + n.numel() and not h.any() and not n.any()
                     and not min(options["min_heads"], h.numel()) + min(options["min_neurons"], n.numel())
                     for h, n in zip(head_scores, neuron_scores))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = dc.plan(model, scores, **{kind: fraction}, **options)
    except DeepCutsError as e:
        event("refused")
        assert str(e) and "\n" not in str(e)
        in_range = 0 <= fraction <= 1
        expected = "removes every head" in str(e) or (uninformed and "are all zero" in str(e))
        assert not in_range or expected, f"unexpected refusal: {e}"
        return
    event(f"planned {kind}")
    assert 0 <= fraction <= 1 and not uninformed
    assert dc.Plan.from_dict(plan.to_dict()) == plan
    slim = dc.prune(model, plan)
    assert plan.achieved["keep_flops"] == pytest.approx(encoder_flops(slim, 16) / encoder_flops(model, 16), abs=1e-6)
    if abs(plan.achieved[kind] - fraction) > 0.02 + 1e-6:  # a missed budget is never silent
        assert any("misses its budget" in str(w.message) for w in caught), (plan.achieved, fraction)
    for h, n in zip(plan.heads, plan.neurons):
        assert len(h) >= min(options["min_heads"], shape["heads"])
        assert len(n) >= min(options["min_neurons"], shape["ffn"])
    relaxed = options["min_heads"] == options["min_neurons"] == 0 and options["multiple_of"] == 1
    if kind == "keep_flops" and relaxed:
        assert encoder_flops(slim, 16) <= fraction * encoder_flops(model, 16) + 1e-6
    if kind == "keep_heads" and relaxed and options["scope"] == "global":
        assert sum(map(len, plan.heads)) == round(fraction * shape["heads"] * layers)
        kept = torch.cat([s[h] for s, h in zip(head_scores, plan.heads)])
        dropped = torch.cat([s[[i for i in range(s.numel()) if i not in h]] for s, h in zip(head_scores, plan.heads)])
        assert not kept.numel() or not dropped.numel() or kept.min() >= dropped.max()
