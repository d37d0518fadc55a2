"""Slim-model save / load round trip, corrupt folders, and ONNX / torch.export."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_batches, tiny_model
from test_pruning import logits, random_plan

import deepcuts_fast as dc
from deepcuts_fast.errors import DeepCutsError


@pytest.fixture(params=["bert", "distilbert"])
def slim_and_plan(request):
    model = tiny_model(request.param, attn="sdpa")
    plan = random_plan(model, 3, empty_heads_layer=1, empty_ffn_layer=0)
    return dc.prune(model, plan), plan


def test_round_trip_is_exact(slim_and_plan, tmp_path):
    slim, plan = slim_and_plan
    path = dc.save_pretrained(slim, tmp_path / "slim", tokenizer=dc.load_tokenizer("minilm"), plan=plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim"]  # no temp folder left
    assert {"config.json", "model.safetensors", "deepcuts_plan.json", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    config = json.loads((path / "config.json").read_text())
    assert config["deepcuts_heads"] == [len(h) for h in plan.heads]
    assert config["deepcuts_ffn"] == [len(n) for n in plan.neurons]
    assert dc.Plan.from_dict(json.loads((path / "deepcuts_plan.json").read_text())) == plan
    back = dc.from_pretrained(path, attn_implementation="sdpa")
    assert set(back.state_dict()) == set(slim.state_dict())
    assert all(torch.equal(back.state_dict()[k], v) for k, v in slim.state_dict().items())
    for batch in tiny_batches():
        assert torch.equal(logits(back, batch), logits(slim, batch))


def test_refuses_to_overwrite_and_leaves_nothing_on_failure(slim_and_plan, tmp_path):
    slim, plan = slim_and_plan
    dc.save_pretrained(slim, tmp_path / "taken")
    with pytest.raises(DeepCutsError, match="already exists"):
        dc.save_pretrained(slim, tmp_path / "taken")
    with pytest.raises(DeepCutsError, match="cannot write"):
        dc.save_pretrained(slim, "/proc/deepcuts/slim")

    class Broken:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        dc.save_pretrained(slim, tmp_path / "new", tokenizer=Broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_corrupt_or_partial_folders_are_clear_errors(slim_and_plan, tmp_path):
    slim, plan = slim_and_plan
    path = dc.save_pretrained(slim, tmp_path / "slim", plan=plan)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(DeepCutsError, match="is truncated or corrupt"):
        dc.from_pretrained(path)
    weights.unlink()
    with pytest.raises(DeepCutsError, match="model.safetensors is missing"):
        dc.from_pretrained(path)
    weights.write_bytes(data)
    config = json.loads((path / "config.json").read_text())
    config["deepcuts_ffn"] = [w + 1 for w in config["deepcuts_ffn"]]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DeepCutsError, match="does not match its config"):
        dc.from_pretrained(path)


def test_onnx_export_matches_onnxruntime(slim_and_plan, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    slim, _ = slim_and_plan
    path = dc.export(slim, tmp_path / "slim.onnx")
    assert not slim.training
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch_size, seq in ((1, 5), (4, 10), (3, 23)):
        batch = tiny_batches(n_batches=1, batch_size=batch_size, seq_len=seq, seed=seq)[0]
        feeds = {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])}  # what a BERT tokenizer returns
        got = session.run(None, {i.name: feeds[i.name].numpy() for i in session.get_inputs()})[0]
        torch.testing.assert_close(torch.from_numpy(got), logits(slim, batch), rtol=1e-4, atol=1e-4)


def test_export_refuses_other_suffixes(slim_and_plan, tmp_path):
    with pytest.raises(DeepCutsError, match=".onnx"):
        dc.export(slim_and_plan[0], tmp_path / "slim.bin")


def test_torch_export_program_runs_dynamic_shapes(slim_and_plan, tmp_path):
    slim, _ = slim_and_plan
    path = dc.export_program(slim, tmp_path / "slim.pt2")
    program = torch.export.load(str(path)).module()
    for batch_size, seq in ((1, 5), (3, 23)):
        batch = tiny_batches(n_batches=1, batch_size=batch_size, seq_len=seq, seed=seq)[0]
        torch.testing.assert_close(program(batch["input_ids"], batch["attention_mask"]), logits(slim, batch))


def test_from_pretrained_reads_ordinary_model_folders(tmp_path):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "dense")
    back = dc.from_pretrained(tmp_path / "dense", attn_implementation="eager")
    batch = tiny_batches()[0]
    assert torch.equal(logits(back, batch), logits(model, batch))


def test_saving_onto_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DeepCutsError, match="is a file"):
        dc.save_pretrained(tiny_model("bert"), tmp_path / "afile", overwrite=True)


def test_load_model_keeps_a_saved_classifier_head(tmp_path):
    model = tiny_model("bert", num_labels=3)
    model.save_pretrained(tmp_path / "three")
    back = dc.load_model(str(tmp_path / "three"), attn_implementation="eager")
    assert back.config.num_labels == 3
    assert torch.equal(back.classifier.weight, model.classifier.weight)
