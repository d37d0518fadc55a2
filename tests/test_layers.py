"""Whole-layer removal: plans that drop encoder layers, the slim model against the dense one skipping them, its
folder in deepcuts and in stock transformers, its ONNX graph, the layer importance, the planner's budget, the
refit and the iterative method, and repeated pruning."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import FAMILIES, PAD_ONE, TINY, pad_id, tiny_batches
from test_pruning import logits, zero_dropped_units

import deepcuts_fast as dc
from deepcuts_fast.arch import base_model, encoder_layers
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.families import family
from deepcuts_fast.families.depth import layer_ids
from deepcuts_fast.flops import layer_costs
from deepcuts_fast.pruning.slicing import LINEAGE

LAYERS = 4  # deep enough to remove a middle layer and keep some on each side


def deep_model(arch: str, seed: int = 0, num_labels: int = 2):
    """A tiny random classifier of the family with LAYERS encoder layers."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    extra = {"pad_token_id": pad_id(arch)} if arch in PAD_ONE else {}
    if arch == "electra":
        extra["embedding_size"] = TINY["hidden"]
    if arch == "modernbert":
        extra.update(pad_token_id=0, cls_token_id=2, bos_token_id=2, sep_token_id=3, eos_token_id=3, local_attention=4)
    cfg = family({"model_type": arch}).config(TINY["hidden"], TINY["heads"], TINY["ffn"], LAYERS,
                                              vocab_size=TINY["vocab"], max_position_embeddings=64,
                                              num_labels=num_labels, **extra)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def dropping_plan(model, dropped, seed: int = 0) -> dc.Plan:
    """Random kept heads and neurons in every layer but `dropped` (a layer with no heads in the mix)."""
    g = torch.Generator().manual_seed(seed)
    heads, neurons = [], []
    for i, layer in enumerate(encoder_layers(model)):
        h = torch.randperm(layer.num_heads, generator=g)[:int(torch.randint(1, layer.num_heads + 1, (1,), generator=g))]
        n = torch.randperm(layer.ffn_width, generator=g)[:int(torch.randint(1, layer.ffn_width, (1,), generator=g))]
        gone = i in dropped
        heads.append([] if gone or i == 2 else h.tolist())
        neurons.append([] if gone else n.tolist())
    layers = encoder_layers(model)
    return dc.Plan(heads, neurons, [x.num_heads for x in layers], [x.ffn_width for x in layers], dropped=dropped)


def skipping(model, dropped):
    """`model` (a copy) with its units the plan drops zeroed already, whose layers `dropped` pass their input on."""
    ref = copy.deepcopy(model)
    layers = base_model(ref).get_submodule(family(ref).layers)

    def identity(module, args, kwargs, out):
        hidden = args[0] if args else next(iter(kwargs.values()))
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    for i in dropped:
        layers[i].register_forward_hook(identity, with_kwargs=True)
    return ref


def removable_middle(arch: str) -> list[int]:
    return [1] if arch != "distilbert" else [2]


@pytest.mark.parametrize("arch", FAMILIES)
def test_removed_layers_compute_what_the_dense_model_skipping_them_computes(arch, tmp_path):
    model = deep_model(arch)
    dropped = removable_middle(arch)
    plan = dropping_plan(model, dropped)
    slim = dc.prune(model, plan)
    reference = skipping(zero_dropped_units(model, plan), dropped)
    assert len(encoder_layers(slim)) == LAYERS - len(dropped)
    assert layer_ids(slim) == plan.kept_layers
    assert getattr(slim.config, family(slim).shape_names[3]) == LAYERS - len(dropped)
    assert [layer.num_heads for layer in encoder_layers(slim)] == [len(plan.heads[i]) for i in plan.kept_layers]
    batches = tiny_batches(pad_id=pad_id(arch))
    for batch in batches:
        torch.testing.assert_close(logits(slim, batch), logits(reference, batch), rtol=1e-5, atol=1e-5)
    dc.save_pretrained(slim, tmp_path / "slim", plan=plan)
    again = dc.from_pretrained(tmp_path / "slim")
    assert dc.Plan.load(tmp_path / "slim" / "deepcuts_plan.json") == plan
    for batch in batches:
        torch.testing.assert_close(logits(again, batch), logits(slim, batch), rtol=0, atol=0)


CHILD = r"""
import json, sys
sys.modules["deepcuts_fast"] = None
import torch
from transformers import AutoModelForSequenceClassification

job = json.loads(open(sys.argv[1]).read())
out = {}
for arch, (path, ids, mask) in job.items():
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        out[arch] = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.tolist()
print(json.dumps(out))
"""


def test_slim_folders_with_fewer_layers_load_in_stock_transformers(tmp_path):
    """Every family, one subprocess where `import deepcuts_fast` fails: the logits of the slim model."""
    job, want = {}, {}
    for arch in FAMILIES:
        model = deep_model(arch, seed=1)
        plan = dropping_plan(model, removable_middle(arch), seed=1)
        slim = dc.prune(model, plan)
        folder = dc.save_pretrained(slim, tmp_path / arch, plan=plan)
        batch = tiny_batches(n_batches=1, pad_id=pad_id(arch), seed=1)[0]
        job[arch] = [str(folder), batch["input_ids"].tolist(), batch["attention_mask"].tolist()]
        want[arch] = logits(slim, batch)
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONPATH="")
    run = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "job.json")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for arch in FAMILIES:
        torch.testing.assert_close(torch.tensor(got[arch]), want[arch], rtol=1e-5, atol=1e-5, msg=arch)


@pytest.mark.parametrize("arch", FAMILIES)
def test_slim_models_with_fewer_layers_export_to_onnx(arch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = deep_model(arch, seed=2)
    slim = dc.prune(model, dropping_plan(model, removable_middle(arch), seed=2))
    path = dc.export(slim, tmp_path / "slim.onnx")
    batch = tiny_batches(n_batches=1, pad_id=pad_id(arch), seed=2)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].numpy() if i.name in batch else np.zeros_like(batch["input_ids"].numpy())
             for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(None, feeds)[0], logits(slim, batch).numpy(), atol=1e-4, rtol=1e-4)


def test_plans_that_remove_layers_round_trip_and_older_plans_still_read():
    model = deep_model("bert")
    plan = dropping_plan(model, [1, 3])
    d = plan.to_dict()
    assert d["format"] == "deepcuts-plan/2" and d["dropped"] == [1, 3]
    assert dc.Plan.from_json(json.dumps(d)) == plan
    assert plan.kept_layers == [0, 2] and "removed whole" in plan.summary()
    plain = dropping_plan(model, [])
    assert plain.to_dict()["format"] == "deepcuts-plan/1" and "dropped" not in plain.to_dict()
    with pytest.raises(DeepCutsError, match="lists 'dropped'"):
        dc.Plan.from_dict({**d, "format": "deepcuts-plan/1"})


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: dict(dropped=[0]), "keeps"),  # layer 0 has units
    (lambda p: dict(dropped=[1, 1]), "repeated"),
    (lambda p: dict(dropped=[7]), r"\[0, 4\)"),
    (lambda p: dict(dropped=["1"]), "not an int"),
    (lambda p: dict(dropped=[0, 1, 2, 3], heads=[[]] * 4, neurons=[[]] * 4), "keep at least one"),
])
def test_bad_removed_layers_are_refused(change, message):
    plan = dropping_plan(deep_model("bert"), [1])
    fields = dict(heads=plan.heads, neurons=plan.neurons, num_heads=plan.num_heads, ffn_widths=plan.ffn_widths)
    with pytest.raises(DeepCutsError, match=message):
        dc.Plan(**{**fields, **change(plan)})


def test_a_first_layer_built_unlike_the_others_is_never_removed():
    model = deep_model("modernbert")
    with pytest.raises(DeepCutsError, match="first encoder layer"):
        dc.prune(model, dropping_plan(model, [0]))
    importance = dc.layer_importance(model, tiny_batches())
    assert importance[0] == float("inf") and all(np.isfinite(importance[1:]))
    scores = dc.score(model, tiny_batches(), "magnitude", "unit", progress=False)
    with pytest.raises(DeepCutsError, match="cannot be removed"):
        dc.plan(model, scores, keep_flops=0.5, drop_layers=[0])


def without_layer(model, i, bare: bool = False):
    """A copy of the BERT `model` with layer i deleted from its module list by hand."""
    without = copy.deepcopy(model)
    del (without if bare else without.bert).encoder.layer[i]
    without.config.num_hidden_layers -= 1
    return without


def naive_kl(model, batches, i):
    """Mean over examples of KL(softmax of the logits || the same with layer i deleted)."""
    without, total, count = without_layer(model, i), 0.0, 0
    with torch.no_grad():
        for b in batches:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
            p, q = model(**inputs).logits.double().softmax(-1), without(**inputs).logits.double().softmax(-1)
            total += float((p * (p.log() - q.log())).sum())
            count += p.shape[0]
    return total / count


def naive_cosine(model, batches, i):
    """Mean over sequences of 1 - cosine of the mean-pooled final hidden states, layer i deleted."""
    without, total, count = without_layer(model, i, bare=True), 0.0, 0
    with torch.no_grad():
        for b in batches:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
            m = b["attention_mask"].unsqueeze(-1).double()
            a = (model(**inputs).last_hidden_state.double() * m).sum(1) / m.sum(1)
            c = (without(**inputs).last_hidden_state.double() * m).sum(1) / m.sum(1)
            total += float((1 - torch.nn.functional.cosine_similarity(a, c, dim=-1)).sum())
            count += a.shape[0]
    return total / count


def test_layer_importance_is_the_output_change_of_removing_each_layer():
    """A classifier's head outputs (KL) and a bare encoder's pooled embedding (1 - cosine), against plain code."""
    from transformers import AutoModel

    model = deep_model("bert", seed=3)
    with torch.no_grad():  # layers that matter unequally (random init is nearly the identity)
        for k, layer in enumerate(encoder_layers(model)):
            layer.linears["ffn_out"].weight.mul_(1 + 10 * k)
        model.classifier.weight.mul_(50)
    batches = tiny_batches(seed=3)
    got = dc.layer_importance(model, batches)
    np.testing.assert_allclose(got, [naive_kl(model, batches, i) for i in range(LAYERS)], rtol=1e-4, atol=1e-9)
    assert len(set(np.round(got, 9))) == LAYERS and min(got) > 0  # tells the layers apart
    encoder = AutoModel.from_config(model.config).eval()
    encoder.load_state_dict(model.bert.state_dict())
    got = dc.layer_importance(encoder, batches)
    np.testing.assert_allclose(got, [naive_cosine(encoder, batches, i) for i in range(LAYERS)], rtol=1e-4, atol=1e-9)


def test_the_planner_removes_the_least_important_layers_within_the_budget():
    model = deep_model("bert", seed=4)
    batches = tiny_batches(seed=4)
    scores = dc.score(model, batches, "magnitude", "unit", progress=False)
    importance = [0.3, 0.05, 0.2, 0.01]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the allocation warning of magnitude scores
        plan = dc.plan(model, scores, keep_flops=0.5, drop_layers=2, layer_scores=importance)
        listed = dc.plan(model, scores, keep_flops=0.5, drop_layers=[3, 1])
        none = dc.plan(model, scores, keep_flops=0.5)
    assert plan.dropped == [1, 3] and listed.dropped == [1, 3] and none.dropped == []
    assert plan.heads[1] == plan.neurons[3] == []
    assert abs(plan.achieved["keep_flops"] - 0.5) <= 0.02
    costs = layer_costs(model)

    def flops(p, layers):
        return sum(len(p.heads[i]) * costs[i].head_flops(128) + len(p.neurons[i]) * costs[i].neuron_flops(128)
                   for i in layers)

    # what the removed layers held is spent on the others
    assert flops(plan, [0, 2]) > flops(none, [0, 2]) + 0.5 * flops(none, [1, 3])
    for bad, message in ((dict(drop_layers=2), "layer_scores"), (dict(drop_layers=4, layer_scores=importance), "between 1"),
                         (dict(drop_layers=[1], scope="layer"), "global"),
                         (dict(drop_layers=2, layer_scores=[0.1, float("nan"), 0, 0]), "NaN")):
        with pytest.raises(DeepCutsError, match=message):
            dc.plan(model, scores, keep_flops=0.5, **bad)


def test_a_speedup_plan_saves_the_removed_layers_overhead_too(monkeypatch):
    from test_latency_plan import synthetic_table

    from deepcuts_fast.planning import latency_table

    model = deep_model("bert", seed=5)
    table = synthetic_table(layer=2.0)
    monkeypatch.setattr(latency_table, "table_for", lambda *a, **k: table)
    scores = dc.score(model, tiny_batches(seed=5), "magnitude", "unit", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = dc.plan(model, scores, speedup=1.5, drop_layers=[2], multiple_of=1)
    kept = plan.kept_layers
    predicted = table.model_ms([len(plan.heads[i]) for i in kept], [len(plan.neurons[i]) for i in kept])
    assert plan.target["predicted_ms"] == pytest.approx(predicted, abs=1e-3)
    assert plan.target["predicted_ms"] <= plan.target["dense_ms"] / 1.5 * 1.001
    full = table.model_ms([len(plan.heads[i]) for i in range(LAYERS)], [len(plan.neurons[i]) for i in range(LAYERS)])
    assert full - predicted == pytest.approx(table.layer_ms)  # the removed layer's fixed time is saved


def refit_layers_follow(refit, model, counterparts, batches):
    """Each refit slim layer outputs what its dense counterpart's run outputs (the dense model after that layer and
    the removed ones right after it, which the layer stands in for), far closer than any other dense layer's output:
    the refit matched it to the right layer. Needs layers that matter (`mattering`)."""
    dense = [hidden_after(model, batches, j) for j in range(len(encoder_layers(model)))]
    for i, c in enumerate(counterparts):
        end = (counterparts[i + 1] if i + 1 < len(counterparts) else len(dense)) - 1
        state = hidden_after(refit, batches, i)
        errors = [float((state - d).pow(2).mean()) for d in dense]
        assert all(errors[end] * 10 < e for j, e in enumerate(errors) if j != end), (i, c, errors)


def mattering(model):
    """`model` with every layer's FFN output scaled up, so that layers differ (random init is nearly the
    identity)."""
    with torch.no_grad():
        for layer in encoder_layers(model):
            layer.linears["ffn_out"].weight.mul_(20)
    return model


def hidden_after(model, batches, layer: int) -> torch.Tensor:
    """The hidden states after encoder layer `layer` at the real tokens of every batch."""
    out = []
    with torch.no_grad():
        for b in batches:
            states = model(**{k: b[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
            out.append(states.hidden_states[layer + 1][b["attention_mask"].bool()])
    return torch.cat(out)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "modernbert"])  # post-norm (two layouts), pre-norm
def test_the_layer_before_removed_ones_is_refit_to_stand_in_for_them(arch):
    """Its output moves towards what the dense model outputs after the removed layer (ReplaceMe's linear map,
    folded into its FFN output projection through the inverse of its output LayerNorm)."""
    model = deep_model(arch, seed=9)
    with torch.no_grad():  # a removed layer that matters (random init is nearly the identity)
        encoder_layers(model)[2].linears["ffn_out"].weight.mul_(20)
    batches = tiny_batches(n_batches=8, batch_size=8, seq_len=12, seed=9, pad_id=pad_id(arch))
    slim = dc.prune(model, full_widths_dropping(model, [2]))
    refit = dc.reconstruct(slim, model, batches, ridge=1e-6)
    want = hidden_after(model, batches, 2)  # the dense model after the removed layer
    before = float((hidden_after(slim, batches, 1) - want).pow(2).mean())
    after = float((hidden_after(refit, batches, 1) - want).pow(2).mean())
    assert after < 0.75 * before, (before, after)
    held_out = tiny_batches(n_batches=2, batch_size=8, seq_len=12, seed=10, pad_id=pad_id(arch))
    assert float((hidden_after(refit, held_out, 1) - hidden_after(model, held_out, 2)).pow(2).mean()) < float(
        (hidden_after(slim, held_out, 1) - hidden_after(model, held_out, 2)).pow(2).mean())


def test_reconstruction_and_the_iterative_method_match_kept_layers_to_their_dense_counterparts():
    model = mattering(deep_model("bert", seed=6))
    batches = tiny_batches(n_batches=6, batch_size=8, seq_len=12, seed=6)
    slim = dc.prune(model, full_widths_dropping(model, [1]))
    refit_layers_follow(dc.reconstruct(slim, model, batches, ridge=1e-8), model, [0, 2, 3], batches)
    for method in ("one-shot", "iterative"):
        out, chosen, info = dc.prune_without_retraining(model, batches, 0.5, method=method, drop_layers=1)
        assert info["dropped_layers"] == chosen.dropped and len(chosen.dropped) == 1
        assert len(encoder_layers(out)) == LAYERS - 1 and layer_ids(out) == chosen.kept_layers
        assert abs(info["flops_kept"] - 0.5) <= 0.03
        batch = batches[0]
        assert torch.isfinite(logits(out, batch)).all()


def full_widths_dropping(model, dropped) -> dc.Plan:
    """Keep every unit of every layer but `dropped`."""
    layers = encoder_layers(model)
    return dc.Plan([[] if i in dropped else list(range(x.num_heads)) for i, x in enumerate(layers)],
                   [[] if i in dropped else list(range(x.ffn_width)) for i, x in enumerate(layers)],
                   [x.num_heads for x in layers], [x.ffn_width for x in layers], dropped=dropped)


def test_repeated_pruning_composes_the_layer_record_and_refits_against_the_first_model():
    model = mattering(deep_model("bert", seed=7))
    first = dc.prune(model, full_widths_dropping(model, [1]))
    second = dc.prune(first, full_widths_dropping(first, [1]))  # the first model's layer 2
    assert layer_ids(second) == [0, 3]
    batch = tiny_batches(n_batches=1, seed=7)[0]
    torch.testing.assert_close(logits(second, batch), logits(skipping(model, [1, 2]), batch), rtol=1e-5, atol=1e-5)
    batches = tiny_batches(n_batches=6, batch_size=8, seq_len=12, seed=7)
    refit = dc.reconstruct(second, model, batches, ridge=1e-8)
    refit_layers_follow(refit, model, [0, 3], batches)  # against the first model, by the composed record
    unrecorded = copy.deepcopy(first)
    delattr(unrecorded.config, LINEAGE)  # as a folder from before the lineage record: no weights check
    with pytest.raises(DeepCutsError, match="no counterpart"):
        dc.reconstruct(unrecorded, second, tiny_batches(seed=7))  # the first model's layer 2 is not in `second`


def test_the_prune_command_removes_the_least_important_layers(model_dir, data_csv, tmp_path, capsys):
    from deepcuts_fast.cli import main

    out = tmp_path / "slim"
    assert main(["prune", "--model", str(model_dir), "--data", str(data_csv), "--keep-flops", "0.4",
                 "--drop-layers", "1", "--calibration-examples", "16", "--max-length", "16", "--out", str(out),
                 "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["dropped_layers"]) == 1
    slim = dc.from_pretrained(out)
    assert len(encoder_layers(slim)) == TINY["layers"] - 1
    assert layer_ids(slim) == [i for i in range(TINY["layers"]) if i not in summary["dropped_layers"]]
    for argv, message in ((["--scores", "s.pt", "--keep-flops", "0.5", "--drop-layers", "1"], "give --data"),
                          (["--data", str(data_csv), "--keep-flops", "0.5", "--drop-layers", "-1"], "0 or more")):
        assert main(["prune", "--model", str(model_dir), *argv, "--out", str(tmp_path / "x")]) != 0
        assert message in capsys.readouterr().err


def test_reconstruction_feeds_the_model_no_task_labels():
    """A QA batch's start / end positions (any task's label keys) never reach the forwards the refit runs."""
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(11)
    cfg = family({"model_type": "bert"}).config(TINY["hidden"], TINY["heads"], TINY["ffn"], LAYERS,
                                                vocab_size=TINY["vocab"], max_position_embeddings=64)
    model = AutoModelForQuestionAnswering.from_config(cfg).eval()
    batches = tiny_batches(n_batches=4, batch_size=8, seed=11)
    for b in batches:
        del b["labels"]
        b["start_positions"], b["end_positions"] = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    dc.reconstruct(dc.prune(model, full_widths_dropping(model, [2])), model, batches)
    assert seen and all(not keys & {"start_positions", "end_positions", "labels"} for keys in seen)
