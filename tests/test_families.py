"""The family registry (deepcuts_fast/families/): the one place that knows a model type. Every supported family is
in the tests' family list, refused ones are refused with their reason, and no module outside families/ names a
model type or branches on one."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, PAD_ONE, TINY, pad_id, tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.arch import HEAD_ROLES, ROLES, UNIT_AXIS, encoder_layers
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.families import FAMILIES as REGISTRY
from deepcuts_fast.families import REFUSED, family
from deepcuts_fast.flops import UnitCosts, encoder_flops, encoder_unit_params, layer_costs
from deepcuts_fast.models import max_positions

PACKAGE = Path(dc.__file__).parent
MODEL_TYPES = sorted({*REGISTRY, *REFUSED, "bert", "roberta", "distilbert", "electra", "albert", "camembert",
                      "xlm-roberta", "mpnet", "deberta-v2", "modernbert"})


def test_every_registered_family_is_in_the_tests_family_list():
    assert sorted(REGISTRY) == sorted(FAMILIES)


@pytest.mark.parametrize("arch", FAMILIES)
def test_unit_parameters_are_the_parameters_the_units_own(arch):
    """The cost model's parameters per head and neuron add up to every parameter of the unit Linears (each fused
    one once, a head's extra projections included) but the output projections' biases, which no unit owns; with
    or without biases (ModernBERT has none)."""
    model = tiny_model(arch)
    owned = 0
    for layer in encoder_layers(model):
        linears = {id(lin): lin for lin in [*layer.linears.values(), *layer.extras.values()]}
        owned += sum(p.numel() for lin in linears.values() for p in lin.parameters())
        owned -= sum(lin.bias.numel() for lin in (layer.linears["attn_out"], layer.linears["ffn_out"])
                     if lin.bias is not None)
    assert encoder_unit_params(model) == owned


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_family_describes_its_tiny_model(arch):
    model = tiny_model(arch)
    fam = family(model)
    assert fam is family(model.config) is family({"model_type": arch}) and fam.model_type == arch
    layers = encoder_layers(model)
    assert len(layers) == TINY["layers"] and all(layer.num_heads == TINY["heads"] for layer in layers)
    assert all(layer.ffn_width == TINY["ffn"] for layer in layers)
    # the dependency groups are the six roles' Linears (a fused one once), each on its unit axis, stacking one block
    # per role it serves (a GLU input two: input and gate)
    slices = fam.unit_slices()
    assert sorted(p for group in slices.values() for p, _, _ in group) == sorted({fam.path(r) for r in ROLES})
    for role in ROLES:
        axis, blocks = next((a, b) for group in slices.values() for p, a, b in group if p == fam.path(role))
        assert axis == (0 if UNIT_AXIS[role] == "rows" else 1)
        assert blocks == sum(fam.path(r) == fam.path(role) for r in ROLES) or (role == "ffn_in" and blocks == 2)
        width = layers[0].linears[role].weight.shape[axis]
        assert width == blocks * (TINY["heads"] * layers[0].head_dim if role in HEAD_ROLES else TINY["ffn"])
    assert type(model).__name__ == f"{fam.class_stem}ForSequenceClassification"
    # RoBERTa-like families start their positions after the padding index
    offset = model.config.pad_token_id + 1 if arch in PAD_ONE else 0
    assert max_positions(model.config) == 64 - offset
    ids = torch.full((1, max_positions(model.config)), 5)
    with torch.no_grad():
        model(input_ids=ids)  # the longest sequence the model reads
    if offset:
        with pytest.raises((IndexError, RuntimeError)):  # one position too many
            model(input_ids=torch.full((1, 64), 5))


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_goes_the_whole_way(arch):
    """Every criterion at both granularities, every planner target, paper-style masks, pruning, reconstruction and
    the retraining-free pipeline, on the family's tiny model: what works for BERT works for each family."""
    model = tiny_model(arch)
    batches = tiny_batches(pad_id=pad_id(arch))
    dense_flops = encoder_flops(model, 128)
    weighted = [name for name, criterion in dc.CRITERIA.items() if criterion.per_weight]
    for granularity, names in (("weight", weighted), ("unit", list(dc.CRITERIA))):
        for name, scores in dc.score_many(model, batches, names, granularity, noise_samples=2, progress=False).items():
            assert all(torch.isfinite(t).all() for t in scores.to_tensors().values()), (name, granularity)
            if granularity == "weight":  # paper-style masks
                assert dc.apply_masks(copy.deepcopy(model), scores.masks(2.0, params="encoder")) > 0
    scores = dc.score(model, batches, "cam-cut", granularity="unit", progress=False)
    for target, value in (("keep_flops", 0.5), ("keep_params", 0.5), ("keep_heads", 0.5), ("keep_neurons", 0.5),
                          ("speedup", 1.2)):
        plan = dc.plan(model, scores, **{target: value}, seq_len=32)
        slim = dc.prune(model, plan)
        assert encoder_flops(slim, 128) < dense_flops
    plan = dc.plan(model, scores, keep_flops=0.5)
    refit = dc.reconstruct(dc.prune(model, plan), model, batches)
    assert encoder_flops(refit, 128) <= 0.5 * dense_flops * 1.01
    slim, plan, _ = dc.prune_without_retraining(model, batches, keep_flops=0.5, progress=False)
    assert encoder_flops(slim, 128) <= 0.5 * dense_flops * 1.01
    with torch.no_grad():
        assert torch.isfinite(slim(**{k: v for k, v in batches[0].items() if k != "labels"}).logits).all()


def test_deberta_without_shared_keys_prunes_its_position_projections_with_the_heads():
    """DeBERTa-v2 with its own relative-position projections: they lose the pruned heads' rows too, and the
    slim model equals the dense one with those heads zeroed (including their position projection rows)."""
    from test_pruning import logits, random_plan, zero_dropped_units

    torch.manual_seed(0)
    config = family({"model_type": "deberta-v2"}).config(TINY["hidden"], TINY["heads"], TINY["ffn"], TINY["layers"],
                                                         vocab_size=TINY["vocab"], max_position_embeddings=64,
                                                         share_att_key=False, position_buckets=8)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert all(len(layer.extras) == 2 for layer in encoder_layers(model))
    plan = random_plan(model, 1, empty_heads_layer=1, empty_ffn_layer=0)
    slim = dc.prune(model, plan)
    for layer, kept in zip(encoder_layers(slim), plan.heads):
        assert all(lin.out_features == len(kept) * layer.head_dim for lin in layer.extras.values())
    for batch in tiny_batches():
        torch.testing.assert_close(logits(slim, batch), logits(zero_dropped_units(model, plan), batch),
                                   rtol=1e-5, atol=1e-5)
    # its relative-position terms are counted: 2 products over 16 keys, 2 projections, per head
    cost = layer_costs(model)[0]
    plain = UnitCosts(cost.hidden, cost.head_dim)
    assert cost.relative == (16, 2, 2) and cost.extra_rows == 2
    assert cost.head_flops(10) - plain.head_flops(10) == 2 * 2 * 10 * 16 * 8 + 2 * 2 * 16 * 32 * 8
    assert cost.head_params() - plain.head_params() == 2 * (32 + 1) * 8


def test_modernbert_fused_projections_keep_each_units_slice_of_every_block():
    """ModernBERT's fused `Wqkv` ([Q, K, V] x heads x head_dim rows) and GLU `Wi` ([input, gate] x neurons rows),
    here with biases: a slim layer keeps each kept unit's rows of every block, in order, and computes what the dense
    model computes with the other units zeroed (a layer with no heads and one with no neurons too); a GLU neuron
    costs its two input rows."""
    from transformers import AutoModelForSequenceClassification
    from test_pruning import logits, random_plan, zero_dropped_units

    torch.manual_seed(0)
    config = family({"model_type": "modernbert"}).config(
        TINY["hidden"], TINY["heads"], TINY["ffn"], TINY["layers"], vocab_size=TINY["vocab"],
        max_position_embeddings=64, pad_token_id=0, cls_token_id=2, bos_token_id=2, sep_token_id=3, eos_token_id=3,
        local_attention=4, attention_bias=True, mlp_bias=True)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # biases that tell the rows apart (they start at zero)
        for layer in encoder_layers(model):
            for lin in layer.linears.values():
                lin.bias.normal_(0, 0.5)
    hidden, d, ffn = TINY["hidden"], TINY["hidden"] // TINY["heads"], TINY["ffn"]
    for seed in (0, 1):
        plan = random_plan(model, seed, empty_heads_layer=seed, empty_ffn_layer=1 - seed)
        slim = dc.prune(model, plan)
        for dense_layer, slim_layer, heads, neurons in zip(encoder_layers(model), encoder_layers(slim), plan.heads,
                                                           plan.neurons):
            qkv, glu = dense_layer.linears["query"], dense_layer.linears["ffn_in"]
            rows = torch.arange(3 * TINY["heads"] * d).view(3, TINY["heads"], d)[:, heads].reshape(-1)
            torch.testing.assert_close(slim_layer.linears["query"].weight, qkv.weight[rows], rtol=0, atol=0)
            torch.testing.assert_close(slim_layer.linears["query"].bias, qkv.bias[rows], rtol=0, atol=0)
            rows = torch.arange(2 * ffn).view(2, ffn)[:, neurons].reshape(-1)
            torch.testing.assert_close(slim_layer.linears["ffn_in"].weight, glu.weight[rows], rtol=0, atol=0)
            torch.testing.assert_close(slim_layer.linears["ffn_in"].bias, glu.bias[rows], rtol=0, atol=0)
        for batch in tiny_batches(seed=seed):
            torch.testing.assert_close(logits(slim, batch), logits(zero_dropped_units(model, plan), batch),
                                       rtol=1e-5, atol=1e-5)
    cost = layer_costs(model)[0]
    assert cost.neuron_rows == 2 and cost.neuron_params() == 3 * hidden + 2
    assert cost.neuron_flops(10) == 2 * 10 * 3 * hidden
    assert cost.head_params() == UnitCosts(hidden, d).head_params()  # Q, K and V rows and output columns, fused or not


def test_modernbert_unit_scores_add_up_each_units_slices_of_every_block():
    """A head's score is the sum of its rows in each third of `Wqkv` and its `Wo` columns; a GLU neuron's, of its
    input and gate rows of `Wi` and its `mlp.Wo` column; the same at unit granularity (one scoring pass)."""
    model, batches = tiny_model("modernbert"), tiny_batches()
    weights = dc.score(model, batches, "cam-cut", "weight", progress=False)
    units = dc.score(model, batches, "cam-cut", "unit", progress=False)
    heads, d, ffn = TINY["heads"], TINY["hidden"] // TINY["heads"], TINY["ffn"]
    for i, layer in enumerate(encoder_layers(model)):
        n = layer.names
        qkv = weights[f"{n['query']}.weight"].view(3, heads, d, -1).sum((0, 2, 3))
        out = weights[f"{n['attn_out']}.weight"].view(-1, heads, d).sum((0, 2))
        glu = weights[f"{n['ffn_in']}.weight"].view(2, ffn, -1).sum((0, 2))
        down = weights[f"{n['ffn_out']}.weight"].sum(0)
        for got in (weights, units):
            torch.testing.assert_close(got.heads(i), qkv + out, rtol=1e-5, atol=1e-12)
            torch.testing.assert_close(got.neurons(i), glu + down, rtol=1e-5, atol=1e-12)


def test_mpnet_layers_pick_their_heads_of_the_shared_position_bias():
    """MPNet's encoder computes one relative position bias for all heads; a pruned layer reads its kept heads'
    slices, by their original numbers, through repeated pruning."""
    from test_pruning import logits, zero_dropped_units

    model = tiny_model("mpnet")
    with torch.no_grad():  # a bias that tells the heads apart (its initial values are ~0.02)
        model.mpnet.encoder.relative_attention_bias.weight.normal_(0, 2.0)
    ffn = TINY["ffn"]
    first = dc.Plan([[3, 0, 2], [1]], [list(range(0, ffn, 2)), list(range(ffn))], [4, 4], [ffn, ffn])
    once = dc.prune(model, first)
    assert [layer.attention.deepcuts_head_ids.tolist() for layer in encoder_layers(once)] == [[0, 2, 3], [1]]
    second = dc.Plan([[2, 0], []], [list(range(ffn // 2)), list(range(1, ffn, 3))], [3, 1], [ffn // 2, ffn])
    twice = dc.prune(once, second)
    assert [layer.attention.deepcuts_head_ids.tolist() for layer in encoder_layers(twice)] == [[0, 3], []]
    composed = dc.Plan([[0, 3], []], [list(range(0, ffn, 2)), list(range(1, ffn, 3))], [4, 4], [ffn, ffn])
    for batch in tiny_batches(pad_id=pad_id("mpnet")):
        torch.testing.assert_close(logits(twice, batch), logits(zero_dropped_units(model, composed), batch),
                                   rtol=1e-5, atol=1e-5)


def test_albert_is_refused_with_its_reason():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    model = AlbertForSequenceClassification(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32,
                                                         num_attention_heads=4, intermediate_size=48,
                                                         num_hidden_layers=2, max_position_embeddings=64))
    for call in (lambda: family(model), lambda: encoder_layers(model), lambda: dc.score(model, None, "magnitude")):
        with pytest.raises(DeepCutsError, match="'albert' models cannot be pruned.*share one set of weights.*"
                                                "removes it from all"):
            call()


def test_an_unknown_family_lists_the_supported_ones():
    supported = ", ".join(sorted(REGISTRY))
    with pytest.raises(DeepCutsError, match=f"unsupported architecture 'gpt2'; supported: {supported}"):
        family({"model_type": "gpt2"})
    assert max_positions(type("C", (), {"model_type": "gpt2", "max_position_embeddings": 9})()) == 9


LITERAL = re.compile(r"""["'](%s)["']""" % "|".join(re.escape(t) for t in MODEL_TYPES), re.IGNORECASE)
BRANCH = re.compile(r"model_type\s*(==|!=|\bin\b|\bnot in\b)")


def test_no_module_outside_families_names_a_model_type():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "families") in path.parents:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if LITERAL.search(line) or BRANCH.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "family facts outside deepcuts_fast/families/:\n" + "\n".join(offenders)
