"""Shared fixtures: tiny random-weight encoders (no files needed) and padded token batches."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests compare against fp32 references, so "auto" precision means fp32 here on every CPU kind (with or
# without native bf16); tests/test_precision.py checks what "auto" picks on each kind of machine.
os.environ.setdefault("DEEPCUTS_PRECISION", "fp32")
# Under pytest-xdist (`make test` runs two workers) each worker takes an equal share of this machine's cores,
# unless OMP_NUM_THREADS is given, so the workers never ask for more threads than there are cores; set before
# torch starts its thread pool, and inherited by the commands the tests run.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, _CORES // _WORKERS))

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its CPU interpreter; set before any kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY = dict(hidden=32, heads=4, ffn=48, layers=2, vocab=100)


FAMILIES = ["bert", "roberta", "distilbert", "electra", "xlm-roberta", "camembert", "mpnet", "deberta-v2", "modernbert"]
"""Every supported family (one model type each), as the family-parametrized tests run them: adding a family to
deepcuts_fast/families/ means adding it here (its tiny config comes from the family's own `config`)."""

PAD_ONE = {"roberta", "xlm-roberta", "camembert", "mpnet"}  # families whose tokenizers pad with id 1 (RoBERTa-like)


def pad_id(arch: str) -> int:
    """The padding token id of the family's tiny model."""
    return 1 if arch in PAD_ONE else 0


def pytest_collection_modifyitems(items) -> None:
    """Mark the cases that run a Triton kernel in the interpreter (backend "triton" without a GPU): NumPy executes
    them, which the portable pass's ISA and thread caps do not change, so that pass skips them."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "triton" and not torch.cuda.is_available():
            item.add_marker(pytest.mark.triton_interpreter)


def attentions(arch: str) -> list[str]:
    """The attention implementations transformers has for the family: eager always, sdpa where it exists."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(AutoConfig.for_model(arch))]
    return ["sdpa", "eager"] if cls._supports_sdpa else ["eager"]


def arch_attention_pairs() -> list[tuple[str, str]]:
    """(family, attention) for every family and each attention implementation it has."""
    return [(arch, attn) for arch in FAMILIES for attn in attentions(arch)]


def tiny_model(arch: str = "bert", num_labels: int = 2, attn: str = "eager", seed: int = 0):
    """A tiny random-weight sequence classifier of the given family (a model_type), in eval mode."""
    from transformers import AutoModelForSequenceClassification

    from deepcuts_fast.families import family

    torch.manual_seed(seed)
    extra = {"pad_token_id": pad_id(arch)} if arch in PAD_ONE else {}
    if arch == "electra":
        extra["embedding_size"] = TINY["hidden"]
    if arch == "modernbert":  # special ids inside the tiny vocabulary; a local window shorter than the test batches
        extra.update(pad_token_id=0, cls_token_id=2, bos_token_id=2, sep_token_id=3, eos_token_id=3, local_attention=4)
    cfg = family({"model_type": arch}).config(TINY["hidden"], TINY["heads"], TINY["ffn"], TINY["layers"],
                                              vocab_size=TINY["vocab"], max_position_embeddings=64,
                                              num_labels=num_labels, attn_implementation=attn, **extra)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attn)
    if num_labels == 1:
        model.config.problem_type = "regression"
    return model.eval()


def tiny_batches(n_batches: int = 2, batch_size: int = 4, seq_len: int = 10, num_labels: int = 2,
                 seed: int = 0, pad_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token batches where every row after the first has trailing padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, TINY["vocab"], (batch_size, seq_len), generator=g)
        lengths = torch.randint(3, seq_len, (batch_size,), generator=g)
        lengths[0] = seq_len
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, pad_id)
        if num_labels == 1:
            labels = torch.randn(batch_size, generator=g)
        else:
            labels = torch.randint(0, num_labels, (batch_size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


@pytest.fixture
def bert():
    return tiny_model("bert")


@pytest.fixture
def batches():
    return tiny_batches()


def sentence_transformers_files(folder: Path, pooling: dict, normalize: bool = True) -> Path:
    """Write what a sentence-transformers folder adds to a transformers one: modules.json (Transformer, Pooling and,
    with `normalize`, Normalize) and 1_Pooling/config.json holding `pooling` (e.g. {"pooling_mode_cls_token": True})."""
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    modules = [("Transformer", ""), ("Pooling", "1_Pooling"), *([("Normalize", "2_Normalize")] if normalize else [])]
    (folder / "modules.json").write_text(json.dumps([{"idx": i, "name": str(i), "path": path,
                                                      "type": f"sentence_transformers.models.{kind}"}
                                                     for i, (kind, path) in enumerate(modules)]))
    return folder


WORDS = "good bad film plot actor boring great awful funny dull moving script".split()


def _save_tiny_bert(tmp_path_factory, name: str, head: bool, seed: int):
    """A tiny BERT folder (safetensors weights) with the MiniLM tokenizer; `head` adds a 2-class classifier."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    import deepcuts_fast as dc

    tokenizer = dc.load_tokenizer("minilm")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                     intermediate_size=TINY["ffn"], num_hidden_layers=TINY["layers"], max_position_embeddings=64,
                     **({"num_labels": 2} if head else {}))
    path = tmp_path_factory.mktemp(name)
    (BertForSequenceClassification if head else BertModel)(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny BERT classifier folder with the MiniLM tokenizer (safetensors weights)."""
    return _save_tiny_bert(tmp_path_factory, "tiny_model", head=True, seed=0)


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory):
    """A tiny BERT encoder folder without a task head (like the packaged MiniLM), with the MiniLM tokenizer."""
    return _save_tiny_bert(tmp_path_factory, "tiny_encoder", head=False, seed=1)


def split_csv(data_csv, folder, n_train: int) -> list[list[str]]:
    """Write `folder`/train.csv (the first `n_train` rows of `data_csv`) and test.csv (the rest); the test rows."""
    with open(data_csv, newline="") as f:
        header, *rows = list(csv.reader(f))
    for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        with (folder / f"{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([header, *part])
    return rows[n_train:]


@pytest.fixture(scope="session")
def data_csv(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(24):
            n = int(torch.randint(3, 12, (1,), generator=g))
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (n,), generator=g)]
            w.writerow([" ".join(words), i % 2])
    return path


def assert_same_weights(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every tensor of `a`'s state dict close to `b`'s, in order, named when not."""
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=name)


def replay_results(monkeypatch) -> list:
    """The return values of every replay of a layer's output after its refits (`pruning.reconstruct._replayed`; None
    where the layer had to run again), collected while the test runs."""
    import sys

    module = sys.modules["deepcuts_fast.pruning.reconstruct"]  # the package exports the function of that name
    seen: list = []
    real = module._replayed
    monkeypatch.setattr(module, "_replayed", lambda *a: seen.append(real(*a)) or seen[-1])
    return seen
