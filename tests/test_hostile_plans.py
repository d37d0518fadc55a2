"""Hostile inputs to scoring, planning, masks, pruning and export: NaN / inf / all-zero scores, budgets that the
min_* and multiple_of options override, hand-edited plan JSON and scores files, foreign masks, mistyped options and
arguments. Each is refused with a DeepCutsError saying what to pass, or (budgets, degenerate scores) recorded in the
plan and warned about."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import TINY, tiny_batches, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import deepcuts_fast as dc
from deepcuts_fast.cli import main
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
    (dict(format="deepcuts-plan/3"), "not a deepcuts plan"),
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


# -- 7. hostile scores files: converted, hand-edited, degenerate -------------------------------------------------


def read_scores_file(path):
    """(metadata, tensors) of a safetensors scores file."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def edited(source, target, edit):
    """Write `source`'s tensors, changed by `edit(tensors)`, to `target` with the same metadata; `target`."""
    meta, tensors = read_scores_file(source)
    edit(tensors)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(target), metadata=meta)
    return target


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(tiny BERT, the path of its gradient scores with Fisher's, as `deepcuts score` writes them)."""
    model = tiny_model("bert")
    path = tmp_path_factory.mktemp("scores") / "gradient.safetensors"
    dc.score(model, tiny_batches(), "gradient", progress=False).save(path)
    return model, path


def degenerate_warnings(messages):
    return [m for m in messages if "check how they were made" in m]


def test_fp16_scores_file_is_refused_by_the_cli(model_dir, data_csv, tmp_path, capsys):
    """Fisher's scores (~1e-8 here) underflow in float16, and the plan kept far fewer neurons; bfloat16 is fine."""
    f32 = tmp_path / "scores.safetensors"
    assert main(["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", "gradient",
                 "--batches", "2", "--batch-size", "8", "--out", str(f32), "--quiet"]) == 0
    cast = lambda dtype: lambda t: t.update({k: v.to(dtype) for k, v in t.items()})  # noqa: E731
    f16 = edited(f32, tmp_path / "f16.safetensors", cast(torch.float16))
    assert not read_scores_file(f16)[1]["fisher/units/heads/0"].any()  # the harm: every Fisher head score is 0
    capsys.readouterr()
    prune = ["prune", "--model", str(model_dir), "--keep-flops", "0.5", "--quiet", "--scores"]
    assert main([*prune, str(f16), "--out", str(tmp_path / "p16")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deepcuts: error:" in err
    assert "is float16, whose range (6.1e-05 to 65504) is narrower than float32's" in err and "score again" in err
    assert not (tmp_path / "p16").exists()
    bf16 = edited(f32, tmp_path / "bf16.safetensors", cast(torch.bfloat16))
    assert main([*prune, str(bf16), "--out", str(tmp_path / "pbf16")]) == 0
    assert {t.dtype for t in dc.Scores.load(bf16).to_tensors().values()} == {torch.float32}


def _set(key, value):
    """An edit setting tensor `key` to `value(its current tensor, or None)`."""
    return lambda t: t.__setitem__(key, value(t.get(key)))


def _add_layer_7(t):
    t.update({k.replace(".layer.1.", ".layer.7."): v for k, v in list(t.items()) if ".layer.1." in k})


QUERY = "weights/bert.encoder.layer.0.attention.self.query.weight"


@pytest.mark.parametrize("edit, message", [
    (_set("units/heads/0", lambda v: v > v.median()), "tensor 'units/heads/0' is bool, not a floating-point type"),
    (_set("units/neurons/1", lambda v: torch.full_like(v, 2**62, dtype=torch.int64)),
     "tensor 'units/neurons/1' is int64, not a floating-point type"),
    (_set(QUERY, lambda v: v.to(torch.int32)), f"tensor '{QUERY}' is int32"),
    (_add_layer_7, r"holds a tensor 'weights/bert\.encoder\.layer\.7\..*' that fits none of the 2 encoder layers"),
    (_set("units/heads/7", lambda v: torch.ones(4)), "holds a tensor 'units/heads/7' that fits none"),
    (_set("units/color/0", lambda v: torch.ones(4)), "holds a tensor 'units/color/0'"),
    (_set("units/heads/1", lambda v: v.view(2, 2)), r"unit scores of layer 1 are shaped \(2, 2\) \(heads\)"),
    (_set(QUERY, lambda v: v[:10]), r"scores of bert\.encoder\.layer\.0\.attention\.self\.query\.weight are "
                                   r"shaped \(10, 32\).*4 heads of 8"),
    (lambda t: t.pop(QUERY), r"query\.weight are missing"),
    (_set("fisher/units/neurons/0", lambda v: v[:40]), "the Fisher scores of layer 0 cover 4 heads / 40 FFN neurons, "
                                                      "the gradient scores 4 / 48"),
])
def test_hand_edited_scores_files_are_refused_by_name(scored, tmp_path, edit, message):
    _, path = scored
    with pytest.raises(DeepCutsError, match=message) as refused:
        dc.Scores.load(edited(path, tmp_path / "edited.safetensors", edit))
    assert "\n" not in str(refused.value) and "score again with `deepcuts score`" in str(refused.value)


@pytest.mark.parametrize("dtype, message", [(torch.int64, "layer 0 heads are int64, not a floating-point type"),
                                            (torch.float16, "layer 0 heads are float16, whose range"),
                                            (torch.bool, "layer 0 heads are bool")])
def test_unit_scores_that_are_not_float32_are_refused_by_plan(dtype, message):
    model = tiny_model("bert")
    units = random_scores(model).unit_scores()
    heads = [(units["heads"][0] * 10).to(dtype), units["heads"][1]]
    scores = dc.Scores({}, model_layout(model), {"criterion": "hand-made"}, heads=heads, neurons=units["neurons"])
    with pytest.raises(DeepCutsError, match=f"the hand-made scores of {message}"):
        dc.plan(model, scores, keep_flops=0.5, allocation="raw")
    dc.plan(model, random_scores(model), keep_flops=0.5, allocation="raw")  # float32 and float64 are fine
    dc.plan(model, dc.Scores({}, model_layout(model), {}, heads=[h.double() for h in units["heads"]],
                             neurons=units["neurons"]), keep_flops=0.5, allocation="raw")


def test_scores_of_another_model_are_refused_after_loading(scored):
    _, path = scored
    with pytest.raises(DeepCutsError, match=r"gradient scores were computed on .*, not on this model.*score the model"):
        dc.plan(tiny_model("bert", seed=1), dc.Scores.load(path), keep_flops=0.5)


@pytest.mark.parametrize("key", ["units/neurons/1", "fisher/units/neurons/1"])
def test_scores_beyond_any_criterion_are_warned_about_in_one_line(scored, tmp_path, key):
    model, path = scored
    _, messages = quiet_plan(model, dc.Scores.load(path), keep_flops=0.5)
    assert not degenerate_warnings(messages)  # real scores: no warning
    huge = edited(path, tmp_path / "huge.safetensors", _set(key, lambda v: v.index_fill(0, torch.tensor([3]), 2.0**62)))
    plan, messages = quiet_plan(model, dc.Scores.load(huge), keep_flops=0.5)
    [warning] = degenerate_warnings(messages)
    assert "\n" not in warning and "as large as 4.61e+18 in layer 1 FFN neurons, beyond the 1e+15" in warning
    assert ("Fisher scores" in warning) == key.startswith("fisher/")
    assert key.startswith("fisher/") or 3 in plan.neurons[1]  # the warning's point: the edited neuron ranks first


def test_constant_scores_are_warned_about_and_ties_go_by_position(scored, tmp_path):
    model, path = scored
    all_ones = lambda t: t.update({k: torch.ones_like(v) for k, v in t.items()})  # noqa: E731
    ones = edited(path, tmp_path / "ones.safetensors", all_ones)
    plan, messages = quiet_plan(model, dc.Scores.load(ones), keep_flops=0.5)
    warnings_ = degenerate_warnings(messages)
    assert len(warnings_) == 2 and all("\n" not in w for w in warnings_)  # the criterion's and Fisher's
    assert warnings_[0].startswith("the gradient scores are constant over layer 0 heads, layer 0 FFN neurons, "
                                   "layer 1 heads, layer 1 FFN neurons")
    assert "ties by unit position, not importance" in warnings_[0]
    assert [] in plan.heads  # nothing to rank by: a layer loses every head
    plan, messages = quiet_plan(model, unit_scores(model, [1.0, 2.0], [3.0, 4.0]), keep_heads=0.5, keep_neurons=0.25,
                                scope="layer", allocation="raw")
    assert plan.heads == [[0, 1], [0, 1]] and plan.neurons == [list(range(12))] * 2  # the lower indices first
    [warning] = degenerate_warnings(messages)
    assert "the fuzz scores are constant over layer 0 heads" in warning
