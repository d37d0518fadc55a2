"""`dc.deploy`, `dc.load_deployed` and `deepcuts deploy` on a tiny slim BERT: every installed runtime's artifact
agrees with torch and loads back, the manifest, forced and refused runtimes, output safety, and the command."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast.deploy import MANIFEST_FILE, REFERENCE, _choose
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.outputs import MANIFEST
from deepcuts_fast.runtimes import RUNTIMES, Runtime

FAST = dict(batch_size=4, max_length=16, repeats=2, min_time=0, log=lambda line: None)
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "int8": 0.1}  # max |logit - torch fp32 logit| of a tiny random model
INSTALLED = [name for name, runtime in RUNTIMES.items() if runtime.installed()]


@pytest.fixture(scope="module")
def slim_dir(model_dir, tmp_path_factory):
    """A slim folder (keep_flops 0.5 by magnitude) of the tiny BERT classifier, with its tokenizer."""
    model = dc.from_pretrained(model_dir)
    with warnings.catch_warnings():  # data-free scores spread the budget evenly, which is all this needs
        warnings.simplefilter("ignore")
        plan = dc.plan(model, dc.score(model, None, "magnitude", progress=False), keep_flops=0.5, seq_len=8)
    slim = dc.prune(model, plan)
    path = tmp_path_factory.mktemp("deploy") / "slim"
    dc.save_pretrained(slim, path, tokenizer=dc.load_tokenizer(str(model_dir)))
    return path


def _torch_logits(folder, batch) -> np.ndarray:
    model = dc.from_pretrained(folder)
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()


def _uninstalled(monkeypatch, *names: str) -> None:
    """Make the runtimes `names` look not installed (their import check fails)."""
    original = Runtime.installed
    monkeypatch.setattr(Runtime, "installed", lambda self: self.name not in names and original(self))


@pytest.mark.parametrize("name", INSTALLED)
def test_each_runtime_agrees_with_torch_and_loads_back(name, slim_dir, data_csv, tmp_path):
    out = tmp_path / "out"
    result = dc.deploy(slim_dir, out, str(data_csv), runtime=name, tolerance=1.0, **FAST)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["runtime"] == name
    rows = {r["variant"]: r for r in manifest["variants"]}
    assert set(rows) == {REFERENCE} | {f"{name} {p}" for p in RUNTIMES[name].precisions()}
    assert rows[REFERENCE]["candidate"] == (name == "torch")
    for variant, row in rows.items():
        assert row["max_logit_diff"] <= TOLERANCE[variant.split()[1]], variant
        assert row["accuracy"] is not None and row["median_ms"] > 0 and row["iqr_ms"] >= 0
    # only the chosen artifact is written, with deploy.json and the folder's manifest
    assert sorted(os.listdir(out)) == sorted([*manifest["files"], MANIFEST_FILE, MANIFEST])

    deployed = dc.load_deployed(out)
    tokenizer = dc.load_tokenizer(str(slim_dir))
    batch = dict(tokenizer(["a moving film", "dull plot and an awful script"], ["great", "boring"], padding=True,
                           return_tensors="np"))
    want = _torch_logits(slim_dir, batch)
    for got in (deployed(batch), deployed(["a moving film", "dull plot and an awful script"], ["great", "boring"])):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOLERANCE[manifest["precision"]]
    assert deployed.predict("a moving film")[0] in deployed.config.id2label.values()


def test_manifest_fields(slim_dir, data_csv, tmp_path):
    manifest = dc.deploy(slim_dir, tmp_path / "out", str(data_csv), runtime="torch", **FAST).manifest
    assert (manifest["runtime"], manifest["precision"], manifest["files"][0]) == ("torch", "fp32", "config.json")
    assert "model.safetensors" in manifest["files"] and "tokenizer.json" in manifest["files"]
    assert set(manifest["latency_ms"]) == {"median", "q1", "q3", "iqr"}
    assert (manifest["batch_size"], manifest["max_length"], manifest["threads"]) == (4, 16, torch.get_num_threads())
    assert manifest["agreement"]["agreement"] == 1.0 and manifest["agreement"]["rows"] > 0
    assert 0 <= manifest["agreement"]["accuracy"] <= 1 and manifest["tolerance"] == 0.01
    machine = manifest["machine"]
    assert machine["cpu"] and machine["isa"] and isinstance(machine["flags"], list) and machine["logical_cpus"]
    assert machine["allocator"] and all(r["warmup"]["rounds"] >= 3 for r in manifest["variants"])
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"]


def test_auto_skips_runtimes_that_are_not_installed(slim_dir, data_csv, tmp_path, monkeypatch):
    _uninstalled(monkeypatch, "ort", "openvino")
    lines = []
    result = dc.deploy(slim_dir, tmp_path / "out", str(data_csv), **{**FAST, "log": lines.append})
    assert "skipping runtime ort: not installed (pip install 'deepcuts-fast[onnx]')" in lines
    assert "skipping runtime openvino: not installed (pip install 'deepcuts-fast[openvino]')" in lines
    assert result.manifest["runtime"] == "torch"


def test_a_variant_that_cannot_be_built_is_left_out_and_said(slim_dir, data_csv, tmp_path, monkeypatch):
    """A runtime whose converter fails on this model (OpenVINO on a layer with no heads) costs only its variants:
    one line each, listed in deploy.json and under the table; the reference failing is an error."""
    def build(model, tokenizer, precision, out, calibration):
        raise RuntimeError("converter: empty MatMul\nlong trace")

    broken = Runtime("broken", (), None, lambda: ("fp32", "int8"), build, lambda *a: None, position=99)
    monkeypatch.setitem(RUNTIMES, "broken", broken)
    _uninstalled(monkeypatch, "ort", "openvino")
    lines = []
    result = dc.deploy(slim_dir, tmp_path / "out", str(data_csv), **{**FAST, "log": lines.append})
    why = "RuntimeError: converter: empty MatMul"
    assert result.manifest["failed_variants"] == {"broken fp32": why, "broken int8": why}
    assert f"skipped broken int8: it could not be built ({why})" in lines
    assert f"not built: broken fp32 ({why})" in result.table() and result.manifest["runtime"] == "torch"
    monkeypatch.setitem(RUNTIMES, "torch", broken.__class__(**{**broken.__dict__, "name": "torch"}))
    with pytest.raises(RuntimeError, match="empty MatMul"):
        dc.deploy(slim_dir, tmp_path / "again", str(data_csv), runtime="torch", **FAST)
    assert not (tmp_path / "again").exists()


def test_unknown_and_uninstalled_runtimes_are_refused(slim_dir, data_csv, tmp_path, monkeypatch):
    with pytest.raises(DeepCutsError, match="unknown runtime 'tensorrt'"):
        dc.deploy(slim_dir, tmp_path / "a", str(data_csv), runtime="tensorrt", **FAST)
    _uninstalled(monkeypatch, "openvino")
    with pytest.raises(DeepCutsError, match=r"runtime 'openvino' is not installed .*deepcuts-fast\[openvino\]"):
        dc.deploy(slim_dir, tmp_path / "b", str(data_csv), runtime="openvino", **FAST)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_fastest_variant_within_tolerance_is_chosen_and_the_others_said():
    rows = [{"variant": "torch fp32", "accepted": True, "median_ms": 9.0, "agreement": 1.0, "rows": 100},
            {"variant": "ort int8", "accepted": False, "median_ms": 2.0, "agreement": 0.97, "rows": 100},
            {"variant": "ort fp32", "accepted": True, "median_ms": 5.0, "agreement": 1.0, "rows": 100}]
    lines = []
    chosen = _choose(rows, {r["variant"]: None for r in rows}, 0.01, lines.append)
    assert chosen["variant"] == "ort fp32"
    assert lines == ["rejected ort int8: predictions agree with torch fp32 on 97.0% of 100 held-out rows, below "
                     "99.0% (tolerance 0.01)"]
    with pytest.raises(DeepCutsError, match="no variant agrees"):
        _choose(rows[1:2], {"ort int8": None}, 0.01, lines.append)


def test_output_safety(slim_dir, data_csv, tmp_path):
    out = tmp_path / "out"
    dc.deploy(slim_dir, out, str(data_csv), runtime="torch", **FAST)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DeepCutsError, match="already exists"):
        dc.deploy(slim_dir, out, str(data_csv), runtime="torch", **FAST)
    # an earlier deployment's file that the new one does not write (another runtime's layout) is removed, and
    # only such files: the user's own file beside them stays
    (out / "model.onnx").write_text("earlier")
    written = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**written, "files": [*written["files"], "model.onnx"]}))
    dc.deploy(slim_dir, out, str(data_csv), runtime="torch", overwrite=True, **FAST)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "model.onnx").exists() and (out / "model.safetensors").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_text("x")
    with pytest.raises(DeepCutsError, match="did not write"):
        dc.deploy(slim_dir, foreign, str(data_csv), runtime="torch", overwrite=True, **FAST)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DeepCutsError, match="symbolic link"):
        dc.deploy(slim_dir, link, str(data_csv), runtime="torch", **FAST)
    assert not (tmp_path / "elsewhere").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no scratch folder left behind


def test_non_classifiers_are_refused(encoder_dir, data_csv, tmp_path):
    with pytest.raises(DeepCutsError, match="no trained task head"):
        dc.deploy(encoder_dir, tmp_path / "out", str(data_csv), **FAST)


def test_cli_deploys_end_to_end(slim_dir, data_csv, tmp_path, capsys):
    from deepcuts_fast.cli import main

    out = tmp_path / "out"
    argv = ["deploy", "--model", str(slim_dir), "--data", str(data_csv), "--out", str(out), "--runtime", "torch",
            "--batch-size", "4", "--max-length", "16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| torch fp32 |" in printed and f"deployed torch fp32 to {out}" in printed
    assert dc.load_deployed(out).manifest["runtime"] == "torch"
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
