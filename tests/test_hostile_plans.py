"""Hostile inputs to scoring, planning, masks, pruning and export: NaN / inf / all-zero scores, budgets that the
min_* and multiple_of options override, hand-edited plan JSON, foreign masks, mistyped options and arguments.
Each is refused with a DeepCutsError saying what to pass, or (budgets) recorded in the plan and warned about."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import TINY, tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.flops import encoder_flops, encoder_unit_params
from deepcuts_fast.scoring.layout import model_layout


def unit_scores(model, heads, neurons, criterion="fuzz", **meta):
    """Unit scores with the given per-layer values (a number fills the layer)."""
    layers = dc.arch.encoder_layers(model)
    fill = lambda v, n: torch.full((n,), float(v)) if isinstance(v, (int, float)) else torch.as_tensor(v).float()
    return dc.Scores({}, model_layout(model), {"criterion": criterion, **meta},
                     heads=[fill(h, layer.num_heads) for h, layer in zip(heads, layers)],
                     neurons=[fill(n, layer.ffn_width) for n, layer in zip(neurons, layers)])


def random_scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = dc.arch.encoder_layers(model)
    return unit_scores(model, [torch.rand(layer.num_heads, generator=g) + 0.1 for layer in layers],
                       [torch.rand(layer.ffn_width, generator=g) + 0.1 for layer in layers])


def quiet_plan(*args, **kwargs):
    """`dc.plan` with its warnings recorded: (plan, messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dc.plan(*args, **kwargs)
    return result, [str(w.message) for w in caught]


def budget_warnings(messages):
    return [m for m in messages if "misses its budget" in m]


# -- 1. NaN / inf / all-zero scores and weights ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_unit_scores_are_refused_naming_the_layer(bad):
    model = tiny_model("bert")
    scores = random_scores(model)
    scores.neurons(1)[3] = bad
    with pytest.raises(DeepCutsError, match=r"layer 1 FFN neurons hold NaN or inf.*layer\.1\.intermediate"):
        dc.plan(model, scores, keep_flops=0.5, allocation="raw")


def test_all_nan_scores_are_refused_not_ranked_first():
    model = tiny_model("bert")
    with pytest.raises(DeepCutsError, match="layer 0 heads hold NaN"):
        dc.plan(model, unit_scores(model, [float("nan")] * 2, [float("nan")] * 2), keep_heads=0.5, allocation="raw")


def test_nan_weight_scores_name_the_parameter_in_plan_and_masks(bert, batches):
    scores = dc.score(bert, batches, "cam-cut", progress=False, with_fisher=False)
    name = "bert.encoder.layer.1.attention.self.key.weight"
    scores[name][0, 0] = float("nan")
    with pytest.raises(DeepCutsError, match=f"parameter {name}"):
        dc.plan(bert, dc.Scores(dict(scores), scores.layout, scores.meta), keep_flops=0.5, allocation="raw")
    with pytest.raises(DeepCutsError, match=f"parameter {name} hold NaN"):
        scores.masks(1.1)


def test_nan_fisher_reference_is_refused():
    model = tiny_model("bert")
    fisher = random_scores(model, 1)
    fisher.heads(0)[0] = float("nan")
    with pytest.raises(DeepCutsError, match=r"Fisher scores \(allocation reference\) of layer 0 heads hold NaN"):
        dc.plan(model, random_scores(model), keep_flops=0.5, reference=fisher)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "smooth-cut"])
def test_a_model_with_a_nan_weight_is_not_scored(criterion):
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[2, 5] = float("nan")
    with pytest.raises(DeepCutsError, match=r"parameter bert\.encoder\.layer\.1\.output\.dense\.weight .*NaN or inf"):
        dc.score(model, tiny_batches(1), criterion, noise_samples=2, progress=False)


def test_a_model_with_an_inf_embedding_is_not_scored():
    model = tiny_model("distilbert")
    with torch.no_grad():
        model.distilbert.embeddings.word_embeddings.weight[7, 0] = float("inf")
    with pytest.raises(DeepCutsError, match="word_embeddings.weight"):
        dc.score(model, None, "magnitude", "unit")


@pytest.mark.parametrize("layer_values", [(0.0, 1.0), (0.0, 0.0)])
def test_all_zero_layer_scores_are_refused_unless_minimums_keep_units(layer_values):
    model = tiny_model("bert")
    scores = unit_scores(model, layer_values, layer_values)
    for budget in (dict(keep_flops=0.5), dict(keep_heads=0.5, keep_neurons=0.5), dict(keep_params=0.5, scope="layer")):
        with pytest.raises(DeepCutsError, match="layer 0 are all zero.*min_heads= / min_neurons="):
            dc.plan(model, scores, allocation="raw", **budget)
    plan, _ = quiet_plan(model, scores, keep_flops=0.5, seq_len=16, allocation="raw", min_heads=1)
    assert all(len(h) >= 1 for h in plan.heads)  # no layer silently dropped


def test_all_zero_heads_of_one_layer_alone_are_information():
    model = tiny_model("bert")
    scores = random_scores(model)
    scores.heads(0).zero_()  # the FFN neurons of the layer still rank: its heads are the least important units
    plan, _ = quiet_plan(model, scores, keep_flops=0.5, seq_len=16, allocation="raw")
    assert plan.heads[0] == [] or len(plan.heads[0]) < 4


# -- 2. budgets the plan misses are recorded and warned about ----------------------------------------------------


def test_min_heads_beyond_the_budget_is_recorded_and_warned():
    model = tiny_model("bert")
    plan, messages = quiet_plan(model, random_scores(model), keep_flops=0.1, min_heads=100, allocation="raw")
    slim = dc.prune(model, plan)
    kept = encoder_flops(slim, 128) / encoder_flops(model, 128)
    assert kept > 0.7
    assert plan.achieved["keep_flops"] == pytest.approx(kept, abs=1e-6) == plan.target["achieved"]["keep_flops"]
    [warning] = budget_warnings(messages)
    assert "keep_flops target 0.1" in warning and f"achieved {kept:.4f}" in warning and "min_heads=100" in warning


def test_multiple_of_beyond_the_budget_is_recorded_and_warned():
    model = tiny_model("bert")
    plan, messages = quiet_plan(model, random_scores(model), keep_flops=0.2, seq_len=16, multiple_of=1000,
                                allocation="raw")
    kept = encoder_flops(dc.prune(model, plan), 16) / encoder_flops(model, 16)
    assert plan.achieved["keep_flops"] == pytest.approx(kept, abs=1e-6) and kept > 0.2
    [warning] = budget_warnings(messages)
    assert "target 0.2" in warning and "multiple_of=1000" in warning and "min_heads" not in warning


@pytest.mark.parametrize("budget", ["keep_flops", "keep_params", "keep_heads", "keep_neurons"])
def test_every_budget_kind_records_what_the_plan_keeps(budget):
    model = tiny_model("bert")
    plan, messages = quiet_plan(model, random_scores(model), **{budget: 0.5}, seq_len=16, allocation="raw")
    slim = dc.prune(model, plan)
    layers, dense = dc.arch.encoder_layers(slim), dc.arch.encoder_layers(model)
    measured = {"keep_flops": encoder_flops(slim, 16) / encoder_flops(model, 16),
                "keep_params": encoder_unit_params(slim) / encoder_unit_params(model),
                "keep_heads": sum(la.num_heads for la in layers) / sum(la.num_heads for la in dense),
                "keep_neurons": sum(la.ffn_width for la in layers) / sum(la.ffn_width for la in dense)}
    assert plan.achieved == pytest.approx(measured, abs=1e-6)
    assert abs(plan.achieved[budget] - 0.5) <= 0.02 or budget_warnings(messages)


def test_a_met_budget_does_not_warn():
    model = tiny_model("bert")
    _, messages = quiet_plan(model, random_scores(model), keep_heads=0.5, keep_neurons=0.25, scope="layer",
                             allocation="raw")
    assert not budget_warnings(messages)


def test_a_budget_missed_by_whole_units_is_warned_about():
    model = tiny_model("bert")  # 4 heads per layer: 0.4 of them rounds to 2 (0.5)
    plan, messages = quiet_plan(model, random_scores(model), keep_heads=0.4, scope="layer", allocation="raw")
    assert plan.achieved["keep_heads"] == 0.5
    [warning] = budget_warnings(messages)
    assert "keep_heads target 0.4, achieved 0.5000" in warning and "kept whole" in warning


def test_plans_without_an_achieved_record_still_load():
    old = {"format": "deepcuts-plan/1", "heads": [[0, 1], [2]], "neurons": [[0], list(range(48))],
           "num_heads": [4, 4], "ffn_widths": [48, 48], "target": {"keep_flops": 0.5, "seq_len": 128}}
    plan = dc.Plan.from_dict(old)
    assert plan.achieved == {} and plan.target == old["target"]
    assert dc.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


# -- 3. strict plan JSON -------------------------------------------------------------------------------------------


def plan_dict(**changes):
    d = {"format": "deepcuts-plan/1", "heads": [[0, 1], [2]], "neurons": [[0, 5], [1]], "num_heads": [4, 4],
         "ffn_widths": [48, 48], "target": {"keep_flops": 0.5}}
    d.update(changes)
    return d


@pytest.mark.parametrize("changes, message", [
    (dict(heads=["0123", [1]]), "heads of layer 0 must be a list of int indices, got '0123'"),
    (dict(heads=[[1.7], [1]]), "index 1.7 is not an int"),
    (dict(heads=[[1.0], [1]]), "index 1.0 is not an int"),
    (dict(heads=[[True], [1]]), "index True is not an int"),
    (dict(heads=[["1"], [1]]), "index '1' is not an int"),
    (dict(heads=[[[0]], [1]]), r"index \[0\] is not an int"),
    (dict(heads=[[0, 0], [1]]), "layer 0 heads: repeated indices"),
    (dict(heads=[[4], [1]]), r"indices must lie in \[0, 4\), got 4"),
    (dict(neurons=[[-1], [1]]), r"indices must lie in \[0, 48\)"),
    (dict(heads="0123"), "heads must be a list with one list of kept indices per layer"),
    (dict(heads={"0": [1]}), "heads must be a list"),
    (dict(heads=[[0]]), "different numbers of layers"),
    (dict(num_heads=[-4, 4]), "num_heads of layer 0 must be an int >= 0, got -4"),
    (dict(num_heads=[4.0, 4]), "num_heads of layer 0 must be an int"),
    (dict(num_heads=[True, 4]), "num_heads of layer 0 must be an int"),
    (dict(ffn_widths="48"), "ffn_widths must be a list"),
    (dict(target=[["keep_flops", 0.5]]), "target must be a mapping"),
    (dict(target={"a": {1: 2}}), "non-string key"),
    (dict(format="deepcuts-plan/2"), "not a deepcuts plan"),
])
def test_malformed_plan_json_is_refused(changes, message):
    with pytest.raises(DeepCutsError, match=message):
        dc.Plan.from_dict(plan_dict(**changes))


@pytest.mark.parametrize("value", [[plan_dict()], "plan", None, 3, b"{}"])
def test_a_plan_that_is_not_a_mapping_is_refused(value):
    with pytest.raises(DeepCutsError, match="a plan is a JSON object"):
        dc.Plan.from_dict(value)


def test_missing_plan_fields_are_named():
    d = plan_dict()
    del d["neurons"], d["ffn_widths"]
    with pytest.raises(DeepCutsError, match="neurons, ffn_widths missing"):
        dc.Plan.from_dict(d)


def test_deeply_nested_plan_json_is_a_clear_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(DeepCutsError, match="nested too deeply"):
        dc.Plan.from_json(json.dumps(plan_dict())[:-1] + f', "extra": {deep}}}')
    nested_heads = json.dumps(plan_dict()).replace('"heads": [[0, 1], [2]]', '"heads": ' + "[" * 400 + "]" * 400)
    with pytest.raises(DeepCutsError, match="heads of layer 0"):
        dc.Plan.from_json(nested_heads)
    nested_target = plan_dict(target={"a": json.loads("[" * 400 + "]" * 400)})
    with pytest.raises(DeepCutsError, match="target is nested too deeply"):
        dc.Plan.from_dict(nested_target)
    with pytest.raises(DeepCutsError, match="not valid JSON"):
        dc.Plan.from_json("{")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_dict()))
    assert dc.Plan.load(path) == dc.Plan.from_dict(plan_dict())
    with pytest.raises(DeepCutsError, match="cannot read plan file"):
        dc.Plan.load(tmp_path / "missing.json")


def test_numpy_and_tuple_indices_are_fine():
    np = pytest.importorskip("numpy")
    plan = dc.Plan([np.array([2, 0]).tolist(), (np.int64(1),)], [range(3), [np.int32(7)]], [4, 4], [48, 48])
    assert plan.heads == [[0, 2], [1]] and plan.neurons == [[0, 1, 2], [7]]
    assert all(type(i) is int for layer in plan.heads + plan.neurons for i in layer)


# -- 4. masks of another model -------------------------------------------------------------------------------------


def three_layer_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=TINY["vocab"], hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                     intermediate_size=TINY["ffn"], num_hidden_layers=3, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def test_masks_of_a_two_layer_model_are_refused_whole_on_a_three_layer_one(bert):
    masks = dc.score(bert, None, "magnitude").masks(1.2)
    big = three_layer_bert()
    before = {n: p.detach().clone() for n, p in big.named_parameters()}
    with pytest.raises(DeepCutsError, match=r"do not cover parameter bert\.encoder\.layer\.2\.attention\.self\.query"):
        dc.apply_masks(big, masks)
    assert all(torch.equal(p, before[n]) for n, p in big.named_parameters())  # nothing applied in part


def test_masks_that_are_not_masks_are_refused(bert):
    scores = dc.score(bert, None, "magnitude")
    with pytest.raises(DeepCutsError, match="values other than 0 and 1"):
        dc.apply_masks(bert, dict(scores))
    with pytest.raises(DeepCutsError, match="masks must map parameter names"):
        dc.apply_masks(bert, list(scores.masks(1.2).values()))
    masks = scores.masks(1.2)
    name = next(iter(masks))
    with pytest.raises(DeepCutsError, match="not a tensor"):
        dc.apply_masks(bert, {**masks, name: masks[name].tolist()})
    as_floats = {k: m.float() for k, m in masks.items()}  # 0 / 1 numbers are fine
    assert dc.apply_masks(bert, as_floats) == sum(int((~m).sum()) for m in masks.values())


# -- 5. scoring options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(noise_samples=2.7), "noise_samples must be a whole number >= 1, got 2.7"),
    (dict(noise_samples=True), "noise_samples must be a whole number"),
    (dict(noise_samples="3"), "noise_samples must be a whole number"),
    (dict(noise_samples=0), "noise_samples must be a whole number >= 1, got 0"),
    (dict(seed=-1), "seed must be a whole number >= 0"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(seed=2**64), "seed must be below 2\\*\\*64"),
    (dict(max_memory=0), "max_memory must be a whole number >= 1"),
    (dict(max_memory=-(2**30)), "max_memory must be a whole number >= 1"),
    (dict(max_memory=1.5e9 + 0.5), "max_memory must be a whole number"),
    (dict(max_memory="4G"), "max_memory must be a whole number"),
    (dict(shift=float("nan")), "shift must be a finite number"),
    (dict(shift=float("inf")), "shift must be a finite number"),
    (dict(noise_std="0.1"), "noise_std must be a finite number"),
    (dict(noise_std=-0.1), "noise_std must be a finite number >= 0"),
    (dict(reference="yes"), "reference must be True or False"),
    (dict(with_fisher=1), "with_fisher must be True or False"),
    (dict(granularity=["unit"]), "granularity must be a string"),
])
def test_mistyped_score_options_are_refused(options, message):
    with pytest.raises(DeepCutsError, match=message):
        dc.ScoreOptions(**options)


def test_whole_float_options_are_taken_as_ints(bert):
    options = dc.ScoreOptions(noise_samples=3.0, seed=2.0, max_memory=float(1 << 30))
    assert (options.noise_samples, options.seed, options.max_memory) == (3, 2, 1 << 30)
    assert all(type(v) is int for v in (options.noise_samples, options.seed, options.max_memory))
    with pytest.raises(DeepCutsError, match="noise_samples must be a whole number"):
        dc.score(bert, tiny_batches(1), "smooth-cut", noise_samples=2.7, progress=False)
    with pytest.raises(DeepCutsError, match="batch_indices entry must be a whole number"):
        dc.score(bert, tiny_batches(2), "gradient", batch_indices=[0, 1.5], progress=False)
    with pytest.raises(DeepCutsError, match="calibration batch 0 is a Tensor"):
        dc.score(bert, [torch.zeros(2, 3)], "gradient", progress=False)


# -- 6. public API arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_flops="0.5"), r"keep_flops is a fraction in \[0, 1\], got '0.5'"),
    (dict(keep_flops=True), "keep_flops is a fraction"),
    (dict(keep_flops=float("nan")), "keep_flops is a fraction"),
    (dict(keep_heads=[0.5]), "keep_heads is a fraction"),
    (dict(keep_flops=0.5, seq_len=0), "seq_len must be a whole number >= 1, got 0"),
    (dict(keep_flops=0.5, seq_len=1.5), "seq_len must be a whole number >= 1, got 1.5"),
    (dict(keep_flops=0.5, seq_len="128"), "seq_len must be a whole number"),
    (dict(keep_flops=0.5, min_heads=-1), "min_heads must be a whole number >= 0, got -1"),
    (dict(keep_flops=0.5, min_heads="2"), "min_heads must be a whole number"),
    (dict(keep_flops=0.5, min_neurons=2.5), "min_neurons must be a whole number"),
    (dict(keep_flops=0.5, multiple_of=0), "multiple_of must be a whole number >= 1, got 0"),
    (dict(keep_flops=0.5, multiple_of=True), "multiple_of must be a whole number"),
    (dict(keep_flops=0.5, scope=["global"]), "unknown scope"),
    (dict(keep_flops=0.5, allocation=None), "unknown allocation"),
    (dict(keep_flops=0.5, reference={"heads": []}), "reference must be a dc.Scores"),
])
def test_plan_refuses_mistyped_arguments(kwargs, message):
    model = tiny_model("bert")
    with pytest.raises(DeepCutsError, match=message):
        dc.plan(model, random_scores(model), **kwargs)


def test_plan_refuses_what_is_not_scores_or_a_model(bert):
    with pytest.raises(DeepCutsError, match="scores must be a dc.Scores"):
        dc.plan(bert, {"heads": [[1.0] * 4] * 2}, keep_flops=0.5)
    with pytest.raises(DeepCutsError, match="model must be the torch model"):
        dc.plan("bert-base-uncased", random_scores(bert), keep_flops=0.5)


def test_prune_refuses_what_is_not_a_plan(bert):
    plan = dc.plan(bert, random_scores(bert), keep_heads=0.5, scope="layer", allocation="raw")
    with pytest.raises(DeepCutsError, match=r"prune takes a dc\.Plan.*Plan\.from_dict\(it\).*got dict"):
        dc.prune(bert, plan.to_dict())
    with pytest.raises(DeepCutsError, match="prune takes the torch model"):
        dc.prune("bert", plan)


def test_export_refuses_bf16_models_and_bad_arguments(bert, tmp_path):
    with pytest.raises(DeepCutsError, match=r"ONNX export takes fp32 or fp16 models.*bfloat16.*model\.float\(\)"):
        dc.export(tiny_model("bert").to(torch.bfloat16), tmp_path / "m.onnx")
    with pytest.raises(DeepCutsError, match="seq_len must be a whole number"):
        dc.export(bert, tmp_path / "m.onnx", seq_len=1.5)
    with pytest.raises(DeepCutsError, match=r"seq_len must be a whole number in \[2, 64\]"):
        dc.export(bert, tmp_path / "m.onnx", seq_len=1000)
    with pytest.raises(DeepCutsError, match="opset must be a whole number"):
        dc.export(bert, tmp_path / "m.onnx", opset="17")
    with pytest.raises(DeepCutsError, match="needs a .onnx path"):
        dc.export(bert, 17)
    with pytest.raises(DeepCutsError, match="export takes a torch model"):
        dc.export(None, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # nothing written by a refused export
