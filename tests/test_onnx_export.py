"""ONNX export for deployment: the tokenizer's exact inputs, sentence pairs, fused attention, the check against torch,
int8 quantization, the side folder, and `deepcuts export` / `deepcuts eval FILE.onnx` end to end."""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from conftest import FAMILIES, PAD_ONE, TINY, WORDS, tiny_model
from test_pruning import random_plan

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.export import REPORT_FILE, OnnxClassifier, check, inputs, onnx_session, runtime, to_onnx
from deepcuts_fast.families import FAMILIES as REGISTRY

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["good film", "boring plot great actor", "awful"]
PAIRS = ["funny script", "dull", "moving film good plot"]
INT8_ATOL = 5e-3  # int8 logits vs torch on the tiny models: measured up to 7e-4 (logits spread about 5e-3)


def family_tokenizer(arch: str, cls_name: str | None = None):
    """A tokenizer of the family's own class whose few ids fit the tiny models' 100-token vocabulary."""
    import transformers

    if arch in PAD_ONE:  # RoBERTa-like: a byte-level BPE tokenizer with <pad> = 1 and no segments
        letters = list("abcdefghijklmnopqrstuvwxyz")
        tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", *letters, *("Ġ" + c for c in letters)]
        tokenizer = transformers.RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    elif arch == "deberta-v2" and cls_name is None:  # a SentencePiece (Unigram) vocabulary: (piece, score) pairs
        specials = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
        tokenizer = transformers.DebertaV2Tokenizer(vocab=specials + [("\u2581" + w, -1.0) for w in WORDS])
    elif arch == "modernbert" and cls_name is None:  # [CLS] / [SEP] / [PAD] specials, no segments
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
        tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)},
                                               model_input_names=["input_ids", "attention_mask"])
    else:
        cls_name = cls_name or {"bert": "BertTokenizer", "distilbert": "DistilBertTokenizer",
                                "electra": "ElectraTokenizer"}[arch]
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
        tokenizer = getattr(transformers, cls_name)(vocab={t: i for i, t in enumerate(tokens)})
    assert len(tokenizer) <= TINY["vocab"]
    return tokenizer


def torch_logits(model, encoded) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: encoded[k] for k in inputs.accepted_inputs(model, encoded)}).logits.numpy()


def onnx_logits(path, feeds) -> np.ndarray:
    return onnx_session(path).run(None, {k: np.asarray(v) for k, v in feeds.items()})[0]


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_exports_its_tokenizers_exact_inputs(arch, tmp_path):
    tokenizer = family_tokenizer(arch)
    result = dc.export(tiny_model(arch), tmp_path / "m.onnx", tokenizer)
    session = ort.InferenceSession(str(result), providers=["CPUExecutionProvider"])
    expected = set(tokenizer(TEXTS[0], PAIRS[0]))
    assert {i.name for i in session.get_inputs()} == expected == set(result.inputs)
    assert ("token_type_ids" in expected) == (arch in ("bert", "electra", "deberta-v2"))
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())
    assert session.get_outputs()[0].shape[0] == "batch"


def test_a_tokenizer_output_the_model_ignores_is_still_accepted(tmp_path):
    """transformers 5 gives DistilBERT folders without a tokenizer class a BertTokenizer, which returns
    token_type_ids; the graph takes (and ignores) them, so the tokenizer's output feeds it as is."""
    model, tokenizer = tiny_model("distilbert"), family_tokenizer("distilbert", "BertTokenizer")
    path = dc.export(model, tmp_path / "m.onnx", tokenizer)
    encoded = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert "token_type_ids" in encoded
    np.testing.assert_allclose(onnx_logits(path, encoded), torch_logits(model, encoded), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("slim", [False, True], ids=["dense", "slim"])
@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
def test_tokenizer_pairs_give_the_torch_logits(arch, slim, optimize, tmp_path):
    model, tokenizer = tiny_model(arch), family_tokenizer(arch)
    if slim:
        model = dc.prune(model, random_plan(model, 3, empty_heads_layer=1, empty_ffn_layer=0))
    path = dc.export(model, tmp_path / "m.onnx", tokenizer, optimize=optimize)
    encoded = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    want = torch_logits(model, encoded)
    np.testing.assert_allclose(onnx_logits(path, encoded), want, atol=1e-4, rtol=1e-4)
    # where the tokenizer returns segments and the model embeds them, they matter: without them, other logits
    if "token_type_ids" in encoded and (model.config.type_vocab_size or 0) > 1:
        zeroed = {**encoded, "token_type_ids": torch.zeros_like(encoded["token_type_ids"])}
        assert not np.allclose(onnx_logits(path, zeroed), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_a_left_padding_tokenizer_gets_a_fused_graph_that_reads_the_mask(arch, tmp_path, monkeypatch):
    """The fused attention's fast path reads row lengths off the mask (right padding only); a tokenizer that pads
    on the left gets the raw-mask form, and the check (padded as the tokenizer pads) would catch the other."""
    model, tokenizer = tiny_model(arch), family_tokenizer(arch)
    tokenizer.padding_side = "left"
    path = dc.export(model, tmp_path / "m.onnx", tokenizer, optimize=True)
    encoded = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert (encoded["attention_mask"][:, 0] == 0).any()  # left padding indeed
    np.testing.assert_allclose(onnx_logits(path, encoded), torch_logits(model, encoded), atol=1e-4, rtol=1e-4)
    original = to_onnx.fuse
    monkeypatch.setattr(to_onnx, "fuse", lambda graph, out, names, left, kind: original(graph, out, names, False, kind))
    with pytest.raises(DeepCutsError, match="differ from torch's"):
        dc.export(model, tmp_path / "right-only.onnx", tokenizer, optimize=True)


def test_stock_optimizer_fuses_attention_of_the_plain_export(tmp_path):
    """The plain export keeps each layer's head count constant, so onnxruntime's optimizer, told nothing about the
    model (num_heads=0, hidden_size=0), fuses every layer's attention: dense, and slim with per-layer head counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    dense = tiny_model("bert")
    slim = dc.prune(dense, random_plan(dense, 3, empty_heads_layer=-1, empty_ffn_layer=-1))
    assert len({len(h) for h in random_plan(dense, 3, -1, -1).heads}) > 1  # the slim layers differ in head count
    for model in (dense, slim):
        path = dc.export(model, tmp_path / "m.onnx", overwrite=True)
        with runtime.quiet_onnxruntime():
            optimized = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0)
        assert optimized.get_fused_operator_statistics()["Attention"] == TINY["layers"]


ATTENTION_UNFUSED = {"mpnet"}  # optimized as BERT, whose attention fusion does not match their attention (MPNet's
#                                scores also add the relative position bias): the LayerNorms and GELUs fuse


@pytest.mark.parametrize("arch", FAMILIES)
def test_optimize_reports_what_fused(arch, tmp_path):
    model = tiny_model(arch)
    slim = dc.prune(model, random_plan(model, 3, empty_heads_layer=1, empty_ffn_layer=0))
    known = REGISTRY[arch].onnx_model_type is not None
    for m, layers in ((model, TINY["layers"]), (slim, TINY["layers"] - 1)):
        result = dc.export(m, tmp_path / "m.onnx", optimize=True, overwrite=True)
        assert result.optimized == known and result.attention_layers == layers and (result.no_fusion is None) == known
        fused = layers if known and arch not in ATTENTION_UNFUSED else 0
        assert result.fused_attention == fused
        assert (f"{fused} of {layers} attention layers fused" in result.summary()) == known
        assert result.max_abs_diff < 1e-4 and result.argmax_agreement == 1.0 and result.tolerance == 1e-4


def test_a_family_the_optimizer_does_not_know_is_exported_unfused(tmp_path, monkeypatch):
    """A family without an `onnx_model_type` gets no transformer-optimizer fusion: optimize=True writes the traced
    graph (int8 still applies), checked against torch, and the summary says in one line why nothing fused."""
    monkeypatch.setitem(REGISTRY, "bert", dataclasses.replace(REGISTRY["bert"], onnx_model_type=None))
    monkeypatch.setattr(to_onnx, "fuse", lambda *args: pytest.fail("fused a layout the optimizer does not know"))
    model, tokenizer = tiny_model("bert"), family_tokenizer("bert")
    encoded = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    for quantize, atol in ((None, 1e-4), ("int8", INT8_ATOL)):
        result = dc.export(model, tmp_path / "m.onnx", tokenizer, optimize=True, quantize=quantize, overwrite=True)
        assert not result.optimized and result.fused == {} and result.precision == (quantize or "fp32")
        assert result.no_fusion == json.loads((result.folder / REPORT_FILE).read_text())["no_fusion"]
        lines = result.summary().splitlines()
        assert "no fusion: onnxruntime's optimizer does not know this model's layout" in lines
        assert not any(line.startswith("optimized:") for line in lines)
        np.testing.assert_allclose(onnx_logits(result, encoded), torch_logits(model, encoded), atol=atol, rtol=atol)
    plain = dc.export(model, tmp_path / "plain.onnx", tokenizer)
    assert plain.no_fusion is None and "no fusion" not in plain.summary()


def test_export_refuses_a_graph_that_differs_from_torch(tmp_path, monkeypatch):
    """A corrupted graph (the classifier bias shifted after tracing) fails the check, and nothing is written."""
    import onnx
    from onnx import numpy_helper

    trace = to_onnx.trace

    def corrupted(model, names, seq_len, opset, out):
        trace(model, names, seq_len, opset, out)
        graph = onnx.load(str(out))
        bias = next(i for i in graph.graph.initializer if i.name.endswith("classifier.bias"))
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1e-3, bias.name))
        onnx.save(graph, str(out))

    monkeypatch.setattr(to_onnx, "trace", corrupted)
    for optimize, hint in ((False, "another opset"), (True, "without optimize=True")):
        with pytest.raises(DeepCutsError, match=rf"differ from torch's by up to 0.001 .*nothing was written.*{hint}"):
            dc.export(tiny_model("bert"), tmp_path / "m.onnx", optimize=optimize)
    assert not list(tmp_path.iterdir())


def test_int8_is_smaller_and_close(tmp_path):
    model, tokenizer = tiny_model("bert"), family_tokenizer("bert")
    names = inputs.model_inputs(model, tokenizer)
    rows = inputs.sample_inputs(model, names, batch=128, seq_len=20, device=torch.device("cpu"), seed=5)
    want = check.torch_outputs(model, rows)[0]
    for optimize in (False, True):
        fp32 = dc.export(model, tmp_path / "fp32.onnx", tokenizer, optimize=optimize, overwrite=True)
        int8 = dc.export(model, tmp_path / "int8.onnx", tokenizer, optimize=optimize, quantize="int8", overwrite=True)
        assert int8.precision == "int8" and int8.per_channel and int8.tolerance is None
        assert int8.size_bytes < fp32.size_bytes and int8.path.stat().st_size == int8.size_bytes
        assert int8.max_abs_diff is not None and int8.max_abs_diff < INT8_ATOL  # reported, not enforced
        got = onnx_logits(int8, {k: v.numpy() for k, v in rows.items()})
        assert np.abs(got - want).max() < INT8_ATOL
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
        assert "int8 per-channel" in int8.summary() and "not enforced" in int8.summary()
        from deepcuts_fast.benchmarking.runners import onnx_quantized

        assert onnx_quantized(int8) and not onnx_quantized(fp32)


def test_int8_skips_layers_pruned_to_nothing(tmp_path):
    """A layer left with no heads or no FFN neurons has empty weights, which the quantizer leaves alone."""
    model = tiny_model("bert")
    slim = dc.prune(model, random_plan(model, 3, empty_heads_layer=1, empty_ffn_layer=0))
    result = dc.export(slim, tmp_path / "m.onnx", quantize="int8", optimize=True)
    assert result.max_abs_diff < INT8_ATOL


def test_side_folder_holds_config_tokenizer_and_report(tmp_path):
    model = tiny_model("bert")
    slim = dc.prune(model, random_plan(model, 3))
    folder = dc.save_pretrained(slim, tmp_path / "slim", tokenizer=family_tokenizer("bert"))
    back, tokenizer = dc.from_pretrained(folder), dc.load_tokenizer(str(folder))
    result = dc.export(back, tmp_path / "slim.onnx", tokenizer)
    assert result.folder == tmp_path / "slim.onnx.d" and str(result) == str(tmp_path / "slim.onnx")
    config = json.loads((result.folder / "config.json").read_text())
    assert config["deepcuts_heads"] == back.config.deepcuts_heads and "auto_map" not in config
    report = json.loads((result.folder / REPORT_FILE).read_text())
    assert report["path"] == "slim.onnx" and report["folder"] == "slim.onnx.d" and report["versions"]["onnxruntime"]
    assert {k: v for k, v in report.items() if k not in ("path", "folder", "versions")} == \
        {k: v for k, v in json.loads(json.dumps(result.to_dict())).items() if k not in ("path", "folder")}
    classifier = OnnxClassifier(result.path)
    encoded = classifier.tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    torch.testing.assert_close(classifier.logits(encoded), torch.from_numpy(torch_logits(back, encoded)),
                               atol=1e-4, rtol=1e-4)
    again = dc.export(back, tmp_path / "slim.onnx", tokenizer, quantize="int8", overwrite=True)  # replaces both
    assert json.loads((again.folder / REPORT_FILE).read_text())["precision"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim", "slim.onnx", "slim.onnx.d"]


def test_export_leaves_an_unrelated_side_folder_alone(tmp_path):
    (tmp_path / "m.onnx.d").mkdir()
    (tmp_path / "m.onnx.d" / "notes.txt").write_text("mine")
    with pytest.raises(DeepCutsError, match="deepcuts did not write .* left alone"):
        dc.export(tiny_model("bert"), tmp_path / "m.onnx", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.d"]


def test_export_refuses_bad_quantize_values(tmp_path):
    with pytest.raises(DeepCutsError, match="quantize must be None or 'int8'"):
        dc.export(tiny_model("bert"), tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(DeepCutsError, match="int8 quantization starts from fp32"):
        dc.export(tiny_model("bert").half(), tmp_path / "m.onnx", quantize="int8")
    assert not list(tmp_path.iterdir())


def test_missing_onnxruntime_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(DeepCutsError, match=r"needs onnxruntime: pip install 'deepcuts-fast\[onnx\]'"):
        dc.export(tiny_model("bert"), tmp_path / "m.onnx", optimize=True)
    assert not list(tmp_path.iterdir())


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_and_eval_commands_end_to_end(model_dir, data_csv, tmp_path, capsys):
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    code, out, _ = run(["export", "--model", str(model_dir), "--out", str(fp32), "--optimize", "--json", "--quiet"],
                       capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert summary["fused_attention"] == summary["attention_layers"] == TINY["layers"]
    assert summary["max_abs_diff"] < 1e-4
    code, out, _ = run(["export", "--model", str(model_dir), "--out", str(int8), "--quantize", "int8", "--quiet"],
                       capsys)
    assert code == 0 and "int8 per-channel" in out and "max |logit diff|" in out
    assert int8.stat().st_size < fp32.stat().st_size
    assert {p.name for p in tmp_path.iterdir()} == {"m.onnx", "m.onnx.d", "m-int8.onnx", "m-int8.onnx.d"}

    evals = {}
    for name, model in (("torch", model_dir), ("fp32", fp32), ("int8", int8)):
        code, out, _ = run(["eval", "--model", str(model), "--data", str(data_csv), "--json", "--quiet"], capsys)
        assert code == 0
        evals[name] = json.loads(out)
    assert [e["dtype"] for e in evals.values()] == ["fp32", "fp32", "int8"]
    assert evals["fp32"]["n"] == evals["int8"]["n"] == 24
    assert evals["fp32"]["accuracy"] == evals["torch"]["accuracy"]
    assert evals["fp32"]["loss"] == pytest.approx(evals["torch"]["loss"], abs=1e-5)
    assert evals["int8"]["loss"] == pytest.approx(evals["torch"]["loss"], abs=1e-2)


def test_export_command_guards_its_outputs(model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    base = ["export", "--model", str(model_dir), "--quiet"]
    assert run([*base, "--out", str(out)], capsys)[0] == 0
    code, _, err = run([*base, "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert run([*base, "--out", str(out), "--overwrite"], capsys)[0] == 0
    code, _, err = run([*base, "--out", str(tmp_path / "m.bin")], capsys)
    assert code == 2 and "--out FILE.onnx" in err
    (tmp_path / "x.onnx.d").mkdir()
    (tmp_path / "x.onnx.d" / "notes.txt").write_text("mine")
    code, _, err = run([*base, "--out", str(tmp_path / "x.onnx"), "--overwrite"], capsys)
    assert code == 2 and "did not write" in err and not (tmp_path / "x.onnx").exists()
    assert not list(tmp_path.glob("*.lock"))
    code, _, err = run(["eval", "--model", str(out), "--data", str(data_csv), "--dtype", "bf16", "--quiet"], capsys)
    assert code == 2 and "--dtype bf16 does not apply to an ONNX file" in err
    (tmp_path / "lone.onnx").write_bytes(out.read_bytes())
    code, _, err = run(["eval", "--model", str(tmp_path / "lone.onnx"), "--data", str(data_csv), "--quiet"], capsys)
    assert code == 2 and "lone.onnx.d/config.json is missing" in err
