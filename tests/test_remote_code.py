"""Slim folders load in stock transformers (trust_remote_code=True) where deepcuts-fast is not installed, with
the logits of dc.from_pretrained; dc.from_pretrained reads hub names through the (offline) HF cache."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, TINY, arch_attention_pairs, tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.arch import encoder_layers
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.families import family
from deepcuts_fast.pruning.remote_code import LAYOUT_KEY, MODELING_FILE, TEMPLATE

KEPT = {"uneven": ([3, 1], [40, 17]), "empty": ([2, 0], [0, 29])}  # heads / FFN neurons kept per layer
CASES = [f"{arch}|{attn}|{kind}" for arch, attn in arch_attention_pairs() for kind in KEPT]
HUB_REPO, HUB_CASE = "deepcuts-test/slim-bert", "bert|sdpa|empty"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a good film with a moving script", "boring plot, awful actor"]
TOL = 1e-6

# Runs in a fresh interpreter where `import deepcuts_fast` fails: only torch and transformers are there.
CHILD = r"""
import json, sys
sys.modules["deepcuts_fast"] = None
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, pipeline

job = json.loads(open(sys.argv[1]).read())
ids, mask = torch.tensor(job["input_ids"]), torch.tensor(job["attention_mask"])
out = {}
for name, (path, attn) in job["cases"].items():
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, attn_implementation=attn)
    with torch.no_grad():
        out[name] = {"class": type(model).__name__, "attn": model.config._attn_implementation,
                     "training": model.training, "logits": model(input_ids=ids, attention_mask=mask).logits.tolist()}
encoder = AutoModel.from_pretrained(job["cases"][job["encoder_case"]][0], trust_remote_code=True).eval()
with torch.no_grad():
    out["encoder"] = {"class": type(encoder).__name__,
                      "hidden": encoder(input_ids=ids, attention_mask=mask).last_hidden_state.tolist()}
hub = AutoModelForSequenceClassification.from_pretrained(job["hub_repo"], trust_remote_code=True)
hub.save_pretrained(job["resaved"])  # transformers copies the modeling file along
again = AutoModelForSequenceClassification.from_pretrained(job["resaved"], trust_remote_code=True)
with torch.no_grad():
    out["hub"] = {"class": type(hub).__name__, "logits": hub(input_ids=ids, attention_mask=mask).logits.tolist(),
                  "resaved": again(input_ids=ids, attention_mask=mask).logits.tolist()}
classify = pipeline("text-classification", model=job["pipeline_path"], trust_remote_code=True, top_k=None)
out["pipeline"] = {"class": type(classify.model).__name__, "scores": classify(job["texts"])}
print(json.dumps(out))
"""


def make_plan(model, kind: str, seed: int = 0) -> dc.Plan:
    """A plan keeping KEPT[kind] heads / neurons per layer (random ones): uneven widths, or empty blocks."""
    g = torch.Generator().manual_seed(seed)
    layers = encoder_layers(model)
    heads, neurons = KEPT[kind]
    return dc.Plan([torch.randperm(layer.num_heads, generator=g)[:k].tolist() for layer, k in zip(layers, heads)],
                   [torch.randperm(layer.ffn_width, generator=g)[:k].tolist() for layer, k in zip(layers, neurons)],
                   [layer.num_heads for layer in layers], [layer.ffn_width for layer in layers])


def save_slim(model, kind: str, path: Path, tokenizer=None) -> Path:
    """`model` pruned by make_plan(kind), saved by dc.save_pretrained."""
    plan = make_plan(model, kind)
    return dc.save_pretrained(dc.prune(model, plan), path, tokenizer=tokenizer, plan=plan)


def vocab_bert(tokenizer):
    """A tiny BERT classifier whose vocabulary fits `tokenizer` (for the pipeline)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                     intermediate_size=TINY["ffn"], num_hidden_layers=TINY["layers"], max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def fake_hub_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """An HF hub cache holding `folder` as the main revision of `repo`, as a download would leave it."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(folder, storage / "snapshots" / commit)
    return cache


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every case's slim folder, the pipeline folder (MiniLM tokenizer) and a fake hub cache holding HUB_CASE."""
    root = tmp_path_factory.mktemp("remote")
    paths = {}
    for case in CASES:
        arch, attn, kind = case.split("|")
        paths[case] = save_slim(tiny_model(arch, attn=attn), kind, root / case.replace("|", "-"))
    tokenizer = dc.load_tokenizer("minilm")
    # named like the job's outputs: transformers turns the dot and hyphen into a module name
    paths["pipeline"] = save_slim(vocab_bert(tokenizer), "empty", root / "slim-keep0.75", tokenizer=tokenizer)
    paths["cache"] = fake_hub_cache(root / "hub", HUB_REPO, paths[HUB_CASE])
    return paths


@pytest.fixture(scope="module")
def child(saved, tmp_path_factory):
    """What the deepcuts-free interpreter computed for every case (one subprocess for all)."""
    root = tmp_path_factory.mktemp("child")
    batch = tiny_batches(n_batches=1)[0]
    job = {"cases": {case: [str(saved[case]), case.split("|")[1]] for case in CASES},
           "encoder_case": "distilbert|eager|empty", "hub_repo": HUB_REPO, "resaved": str(root / "resaved"),
           "pipeline_path": str(saved["pipeline"]),
           "texts": TEXTS, "input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist()}
    (root / "job.json").write_text(json.dumps(job))
    (root / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(root / "hf"), HF_HUB_CACHE=str(saved["cache"]), HF_MODULES_CACHE=str(root / "modules"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
    run = subprocess.run([sys.executable, str(root / "child.py"), str(root / "job.json")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), batch


def reference_logits(path, batch, attn: str | None = None, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        model = dc.from_pretrained(path, attn, **kwargs)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("case", CASES)
def test_stock_transformers_without_deepcuts_gives_the_same_logits(saved, child, case):
    results, batch = child
    arch, attn, _ = case.split("|")
    got = results[case]
    stem = family({"model_type": arch}).class_stem
    assert (got["class"], got["attn"], got["training"]) == (f"DeepCuts{stem}ForSequenceClassification", attn, False)
    want = reference_logits(saved[case], batch, attn)
    torch.testing.assert_close(torch.tensor(got["logits"]), want, rtol=0, atol=TOL)


def test_auto_model_hub_cache_and_pipeline_without_deepcuts(saved, child, monkeypatch):
    results, batch = child
    encoder = dc.from_pretrained(saved["distilbert|eager|empty"], "eager").base_model
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert results["encoder"]["class"] == "DeepCutsDistilBertModel"
    torch.testing.assert_close(torch.tensor(results["encoder"]["hidden"]), hidden, rtol=0, atol=TOL)
    assert results["hub"]["class"] == "DeepCutsBertForSequenceClassification"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(saved["cache"]))
    want = reference_logits(HUB_REPO, batch, "sdpa")
    torch.testing.assert_close(torch.tensor(results["hub"]["logits"]), want, rtol=0, atol=TOL)
    torch.testing.assert_close(torch.tensor(results["hub"]["resaved"]), want, rtol=0, atol=TOL)
    assert results["pipeline"]["class"] == "DeepCutsBertForSequenceClassification"
    model, tokenizer = dc.from_pretrained(saved["pipeline"]), dc.load_tokenizer(str(saved["pipeline"]))
    for text, scores in zip(TEXTS, results["pipeline"]["scores"]):
        with torch.no_grad():
            probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        for entry in scores:
            assert abs(entry["score"] - probs[model.config.label2id[entry["label"]]].item()) <= TOL


def test_saved_folder_has_its_modeling_code_and_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_slim(tiny_model("roberta"), "empty", tmp_path / "slim", tokenizer=dc.load_tokenizer("minilm"))
    finally:
        os.umask(old)
    assert (path / MODELING_FILE).read_bytes() == TEMPLATE.read_bytes()
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoModel": "modeling_deepcuts_slim.DeepCutsRobertaModel",
        "AutoModelForSequenceClassification": "modeling_deepcuts_slim.DeepCutsRobertaForSequenceClassification"}
    assert config["model_type"] == "roberta" and config["deepcuts_heads"] == [2, 0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*")}
    assert {"config.json", "model.safetensors", MODELING_FILE, "deepcuts_plan.json", "tokenizer.json"} <= set(modes)
    assert modes == {name: 0o644 for name in modes}


def test_dense_folders_stay_plain_and_stock_loading_refuses_slim_shapes(tmp_path):
    from transformers import AutoModelForSequenceClassification

    dense = dc.save_pretrained(tiny_model("bert"), tmp_path / "dense")
    assert not (dense / MODELING_FILE).exists() and "auto_map" not in json.loads((dense / "config.json").read_text())
    slim = save_slim(tiny_model("bert"), "uneven", tmp_path / "slim")
    with pytest.raises(RuntimeError, match="mismatch"):  # never random weights in silence
        AutoModelForSequenceClassification.from_pretrained(slim)


def test_the_template_names_no_family_and_reads_the_layout_from_the_config(saved):
    """The modeling file reads where the Linears are from config.json (written from the registry), so it holds no
    table of families that could drift from deepcuts_fast/families/."""
    import deepcuts_fast.families.modeling_deepcuts_slim as template

    assert not hasattr(template, "LAYOUTS")
    for case in CASES:
        arch = case.split("|")[0]
        config = json.loads((saved[case] / "config.json").read_text())
        assert config[LAYOUT_KEY] == family(config).layout() and config["model_type"] == arch
    with pytest.raises(AttributeError):
        template.DeepCutsNoSuchFamilyModel  # noqa: B018


def test_an_older_folder_without_the_layout_still_loads_in_deepcuts(saved, tmp_path):
    """Folders saved before `deepcuts_layout` carry their own (older) modeling file; dc.from_pretrained takes the
    layout from the registry."""
    old = tmp_path / "old"
    shutil.copytree(saved["roberta|eager|empty"], old)
    config = json.loads((old / "config.json").read_text())
    del config[LAYOUT_KEY]
    (old / "config.json").write_text(json.dumps(config))
    batch = tiny_batches(n_batches=1)[0]
    torch.testing.assert_close(reference_logits(old, batch), reference_logits(saved["roberta|eager|empty"], batch),
                               rtol=0, atol=0)


# --- dc.from_pretrained: hub names, revision, dtype, device_map -----------------------------------------


@pytest.fixture
def hub(saved, monkeypatch):
    """The fake cache as the HF cache, offline."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(saved["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return saved


def test_hub_name_reads_the_offline_cache_at_a_revision(hub):
    batch = tiny_batches(n_batches=1)[0]
    want = reference_logits(hub[HUB_CASE], batch, "sdpa")
    for revision in (None, "main", COMMIT):
        assert torch.equal(reference_logits(HUB_REPO, batch, "sdpa", revision=revision), want)
    with pytest.raises(DeepCutsError, match="at revision 'v2' is not a local folder and not in the local Hugging "
                                            "Face cache .*HF_HUB_OFFLINE"):
        dc.from_pretrained(HUB_REPO, revision="v2")
    with pytest.raises(DeepCutsError, match="'deepcuts-test/absent' is not a local folder"):
        dc.from_pretrained("deepcuts-test/absent")
    with pytest.raises(DeepCutsError, match="selects a version of a hub model"):
        dc.from_pretrained(hub[HUB_CASE], revision="main")


def test_unreachable_hub_falls_back_to_the_cache(hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # connection refused
    batch = tiny_batches(n_batches=1)[0]
    assert torch.equal(reference_logits(HUB_REPO, batch, "sdpa"), reference_logits(hub[HUB_CASE], batch, "sdpa"))
    with pytest.raises(DeepCutsError, match="cannot download model 'deepcuts-test/absent' from the Hugging Face hub"):
        dc.from_pretrained("deepcuts-test/absent")


def test_hub_repo_with_only_pickled_weights_is_refused(hub, tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    shutil.copytree(hub[HUB_CASE], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(fake_hub_cache(tmp_path / "c", "a/b", folder)))
    with pytest.raises(DeepCutsError, match="model.safetensors is missing"):
        dc.from_pretrained("a/b")


def test_dtype_and_device_map(saved):
    path = saved["electra|sdpa|uneven"]
    assert dc.from_pretrained(path).dtype == torch.float32
    assert dc.from_pretrained(path, dtype="bf16").dtype == torch.bfloat16
    assert dc.from_pretrained(path, dtype=torch.float16, device_map="cpu").dtype == torch.float16
    assert dc.from_pretrained(path, dtype="auto").dtype == torch.float32  # as saved
    assert dc.from_pretrained(path, device_map="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, message in ((dict(dtype="int8"), "not a model dtype"), (dict(device_map="gpu"), "not a device"),
                         (dict(device_map={"": 0}), "takes one device"),
                         (dict(device_map=f"cuda:{torch.cuda.device_count()}"), "names a CUDA device"),
                         (dict(device_map=torch.cuda.device_count()), "names a CUDA device")):
        with pytest.raises(DeepCutsError, match=message):
            dc.from_pretrained(path, **bad)


def test_missing_paths_are_not_taken_for_hub_names(tmp_path):
    with pytest.raises(DeepCutsError, match="does not exist"):
        dc.from_pretrained(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DeepCutsError, match="is a file"):
        dc.from_pretrained(tmp_path / "file")
