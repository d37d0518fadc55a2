"""Physical pruning: pruned == dense with the same units zeroed, for every family and attention."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAMILIES, arch_attention_pairs, pad_id, tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.arch import encoder_layers
from deepcuts_fast.errors import DeepCutsError

ARCHS = FAMILIES


def random_plan(model, seed, empty_heads_layer=0, empty_ffn_layer=1):
    g = torch.Generator().manual_seed(seed)
    layers = encoder_layers(model)
    heads, neurons = [], []
    for i, layer in enumerate(layers):
        h = torch.randperm(layer.num_heads, generator=g)[: int(torch.randint(1, layer.num_heads + 1, (1,), generator=g))]
        n = torch.randperm(layer.ffn_width, generator=g)[: int(torch.randint(1, layer.ffn_width, (1,), generator=g))]
        heads.append([] if i == empty_heads_layer else h.tolist())
        neurons.append([] if i == empty_ffn_layer else n.tolist())
    return dc.Plan(heads, neurons, [layer.num_heads for layer in layers], [layer.ffn_width for layer in layers])


def zero_dropped_units(model, plan):
    """The dense model with every unit the plan drops zeroed (the reference for the pruned model)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, kept_h, kept_n in zip(encoder_layers(ref), plan.heads, plan.neurons):
            d, lin = layer.head_dim, layer.linears
            for h in set(range(layer.num_heads)) - set(kept_h):
                for r in ("query", "key", "value"):
                    zero_rows(lin[r], h * d, d, layer.blocks[r])
                lin["attn_out"].weight[:, h * d:(h + 1) * d] = 0
            for j in set(range(layer.ffn_width)) - set(kept_n):
                zero_rows(lin["ffn_in"], j, 1, layer.blocks["ffn_in"])
                lin["ffn_out"].weight[:, j] = 0
    return ref


def zero_rows(linear, start, size, blocks):
    """Zero rows start:start+size of each of the `blocks` blocks the Linear stacks (a fused QKV projection's three,
    a GLU input's two), with their biases where it has them."""
    block = linear.out_features // blocks
    for b in range(blocks):
        rows = slice(b * block + start, b * block + start + size)
        linear.weight[rows] = 0
        if linear.bias is not None:
            linear.bias[rows] = 0


def logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def unit_params(model):
    linears = {id(lin): lin for layer in encoder_layers(model) for lin in layer.linears.values()}  # fused ones once
    return sum(p.numel() for lin in linears.values() for p in lin.parameters())


@pytest.mark.parametrize(("arch", "attn"), arch_attention_pairs())
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_equals_dense_with_units_zeroed(arch, attn, seed):
    model = tiny_model(arch, attn=attn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = random_plan(model, seed, empty_heads_layer=seed, empty_ffn_layer=1 - seed)
    slim = dc.prune(model, plan)
    for batch in tiny_batches(pad_id=pad_id(arch), seed=seed):
        torch.testing.assert_close(logits(slim, batch), logits(zero_dropped_units(model, plan), batch),
                                   rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    layers = encoder_layers(slim)
    assert [layer.num_heads for layer in layers] == [len(h) for h in plan.heads]
    assert [layer.ffn_width for layer in layers] == [len(n) for n in plan.neurons]
    hidden, d, lin = layers[0].linears["query"].in_features, layers[0].head_dim, layers[0].linears
    head_biases = 3 * d if lin["query"].bias is not None else 0
    rows = layers[0].blocks["ffn_in"]  # FFN input rows per neuron: 2 in a GLU
    neuron_biases = rows if lin["ffn_in"].bias is not None else 0
    removed = sum((plan.num_heads[i] - len(plan.heads[i])) * (4 * hidden * d + head_biases)
                  + (plan.ffn_widths[i] - len(plan.neurons[i])) * ((rows + 1) * hidden + neuron_biases)
                  for i in range(len(layers)))
    assert unit_params(slim) == unit_params(model) - removed


@pytest.mark.parametrize("kw,heads,neurons", [
    (dict(keep_heads=0.5, scope="layer"), [2, 2], [48, 48]),
    (dict(keep_neurons=0.25, scope="layer"), [4, 4], [12, 12]),
    (dict(keep_heads=0.5, keep_neurons=0.5, scope="global"), None, None),
])
def test_fraction_targets(bert, batches, kw, heads, neurons):
    scores = dc.score(bert, batches, "gradient", "unit", progress=False)
    plan = dc.plan(bert, scores, allocation="raw", **kw)
    if heads is not None:
        assert [len(h) for h in plan.heads] == heads and [len(n) for n in plan.neurons] == neurons
    else:
        assert sum(map(len, plan.heads)) == 4 and sum(map(len, plan.neurons)) == 48
        flat = torch.cat([scores.heads(i) for i in range(2)])
        kept = torch.cat([scores.heads(i)[plan.heads[i]] for i in range(2)])
        assert kept.min() >= torch.topk(flat, 4).values.min()


@pytest.mark.parametrize("target", ["keep_flops", "keep_params"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("fraction", [0.33, 0.5, 0.75])
def test_budget_targets_are_met_closely(bert, batches, target, scope, fraction):
    from deepcuts_fast.flops import encoder_flops, encoder_unit_params

    scores = dc.score(bert, batches, "cam-cut", "unit", progress=False)
    plan = dc.plan(bert, scores, **{target: fraction}, seq_len=16, scope=scope)
    slim = dc.prune(bert, plan)
    cost = (lambda m: encoder_flops(m, 16)) if target == "keep_flops" else encoder_unit_params
    achieved = cost(slim) / cost(bert)
    assert achieved <= fraction + 1e-9
    assert achieved >= fraction - 0.08  # within about one head of the budget on this tiny model


def test_minimum_per_layer_and_width_rounding(bert, batches):
    scores = dc.score(bert, batches, "gradient", "unit", progress=False)
    plan = dc.plan(bert, scores, keep_flops=0.05, seq_len=16, min_heads=1, min_neurons=3)
    assert all(len(h) >= 1 for h in plan.heads) and all(len(n) >= 3 for n in plan.neurons)
    plan = dc.plan(bert, scores, keep_neurons=0.3, scope="layer", multiple_of=8)
    assert all(len(n) % 8 == 0 for n in plan.neurons)


def test_plan_round_trips_through_json(bert, batches):
    import json

    plan = dc.plan(bert, dc.score(bert, batches, "gradient", "unit", progress=False), keep_flops=0.5, seq_len=16)
    back = dc.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan
    text = plan.summary()
    assert "layer" in text and f"{sum(map(len, plan.heads))}/8" in text


def test_plan_errors(bert, batches):
    scores = dc.score(bert, batches, "gradient", "unit", progress=False)
    with pytest.raises(DeepCutsError, match="give a target"):
        dc.plan(bert, scores)
    with pytest.raises(DeepCutsError, match="one budget"):
        dc.plan(bert, scores, keep_flops=0.5, keep_params=0.5)
    with pytest.raises(DeepCutsError, match=r"fraction in \[0, 1\]"):
        dc.plan(bert, scores, keep_heads=1.5)
    with pytest.raises(DeepCutsError, match="removes every head"):
        dc.plan(bert, scores, keep_flops=0.0, seq_len=16)
    distil = tiny_model("distilbert")
    with pytest.raises(DeepCutsError, match=r"parameter distilbert\.transformer\.layer\.0\.attention\.q_lin"):
        dc.plan(distil, scores, keep_flops=0.5)
    other = dc.score(tiny_model("bert", seed=1), None, "magnitude")
    wrong = dict(other.items())
    name = next(iter(wrong))
    wrong[name] = wrong[name][:-1]
    with pytest.raises(DeepCutsError, match=f"parameter {name}"):
        units = other.unit_scores()
        dc.plan(bert, dc.Scores(wrong, other.layout, other.meta, units["heads"], units["neurons"]), keep_flops=0.5)


def test_prune_refuses_a_plan_for_another_model(bert, batches):
    plan = random_plan(bert, 0)
    slim = dc.prune(bert, plan)
    with pytest.raises(DeepCutsError, match="plan and prune the same model"):
        dc.prune(slim, plan)


@pytest.mark.parametrize("unit_method", ["sum", "first-order"])
@pytest.mark.parametrize("arch", ["bert", "distilbert", "modernbert"])
def test_a_slim_model_can_be_scored_planned_and_pruned_again(arch, unit_method):
    model = tiny_model(arch)
    batches = tiny_batches()
    slim = dc.prune(model, random_plan(model, 2, empty_heads_layer=0, empty_ffn_layer=1))
    scores = dc.score(slim, batches, "cam-cut", "unit", unit_method=unit_method, progress=False)
    assert scores.heads(0).numel() == 0 and scores.neurons(1).numel() == 0
    weights = dc.score(slim, batches, "smooth-cut", noise_samples=2, progress=False)
    assert all(torch.isfinite(v).all() for v in weights.values())
    plan = dc.plan(slim, scores, keep_heads=0.5, keep_neurons=0.5, scope="layer")
    slimmer = dc.prune(slim, plan)
    for batch in batches:
        torch.testing.assert_close(logits(slimmer, batch), logits(zero_dropped_units(slim, plan), batch),
                                   rtol=1e-5, atol=1e-5)


def test_pruned_models_stay_trainable(bert, tmp_path):
    slim = dc.prune(bert, random_plan(bert, 0))
    assert [p.requires_grad for p in slim.parameters()] == [True] * len(list(slim.parameters()))
    back = dc.from_pretrained(dc.save_pretrained(slim, tmp_path / "slim"))
    assert all(p.requires_grad for p in back.parameters())


def test_width_rounding_respects_the_minimum(bert):
    scores = dc.score(bert, None, "magnitude", "unit")
    plan = dc.plan(bert, scores, keep_neurons=0.0, min_neurons=10, multiple_of=8)
    assert [len(n) for n in plan.neurons] == [16, 16]


def test_output_bias_of_a_layer_without_heads_is_scored(batches):
    model = tiny_model("bert")
    slim = dc.prune(model, random_plan(model, 1, empty_heads_layer=0, empty_ffn_layer=1))
    bias = slim.bert.encoder.layer[0].attention.output.dense.bias
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape))  # BERT initialises biases to zero
    scores = dc.score(slim, batches, "gradient", progress=False)
    assert (scores["bert.encoder.layer.0.attention.output.dense.bias"] > 0).all()
