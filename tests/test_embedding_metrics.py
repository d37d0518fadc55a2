"""Embedding metrics of a slim model against its dense model (`deepcuts_fast.embedding_metrics`), against plain
reference computations on fresh random inputs."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast.embedding_metrics import embed, mean_cosine, neighbour_overlap
from conftest import sentence_transformers_files, tiny_batches, tiny_model


def _perturbed(model, scale: float = 0.3, seed: int = 7):
    """A copy of `model` with Gaussian noise of `scale` times each weight matrix's std added to it (embeddings
    included), a stand-in for a slim model that moved its embeddings."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.base_model.parameters():
            if p.dim() == 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return out


def _brute_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Nearest-neighbour overlap@k by a plain loop over texts: cosine to every other text, sort, intersect."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a, b = unit(a), unit(b)
    total = 0.0
    for i in range(len(a)):
        near = []
        for x in (a, b):
            sims = [(float(x[i] @ x[j]), j) for j in range(len(x)) if j != i]
            near.append({j for _, j in sorted(sims, reverse=True)[:k]})
        total += len(near[0] & near[1]) / k
    return total / len(a)


@pytest.fixture(scope="module")
def dense():
    return tiny_model("bert", seed=3)


@pytest.fixture(scope="module")
def texts():
    return tiny_batches(n_batches=4, batch_size=8, seed=11)


@pytest.fixture(scope="module")
def train():
    return tiny_batches(n_batches=6, batch_size=8, seed=12)


def test_embed_is_the_pooled_encoder_output(dense, texts):
    """Each row is the mean over the real tokens of the encoder's last hidden states (the head never runs)."""
    got = embed(dense, texts, pooling="mean")
    want = []
    with torch.no_grad():
        for b in texts:
            hidden = dense.base_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            for row, mask in zip(hidden, b["attention_mask"]):
                want.append(row[mask.bool()].mean(dim=0))
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)
    normed = embed(dense, texts, pooling="cls", normalize=True)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(len(normed)))


def test_identical_models_agree_exactly(dense, texts, train):
    result = dc.evaluate_embeddings(dense, dense, texts, probe_train=train)
    assert result.cosine == pytest.approx(1.0, abs=1e-9) and result.cosine_min == pytest.approx(1.0, abs=1e-9)
    assert result.overlap == 1.0
    assert result.probe.diff == 0.0 and result.probe.value_a == result.probe.value_b
    assert result.probe.verdict == "tie" and result.probe.p == 1.0
    assert result.n == 32 and result.k == 10 and result.dtype == "fp32"
    json.dumps(result.to_dict())


def test_perturbed_model_scores_lower(dense, texts, train):
    slim = _perturbed(dense)
    result = dc.evaluate_embeddings(slim, dense, texts, probe_train=train)
    a, b = embed(slim, texts), embed(dense, texts)
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    assert result.cosine == pytest.approx(float(cos.mean()), abs=1e-9) and result.cosine < 0.99
    assert result.cosine_min == pytest.approx(float(cos.min()), abs=1e-9)
    assert result.overlap == pytest.approx(_brute_overlap(a.numpy(), b.numpy(), 10)) and result.overlap < 1.0
    # the probe difference is slim's accuracy minus dense's, each from its own logistic regression
    from sklearn.linear_model import LogisticRegression

    labels = np.concatenate([t["labels"].numpy() for t in texts])
    train_labels = np.concatenate([t["labels"].numpy() for t in train])
    acc = [float(np.mean(LogisticRegression(max_iter=1000).fit(embed(m, train).double().numpy(), train_labels)
                         .predict(embed(m, texts).double().numpy()) == labels)) for m in (slim, dense)]
    assert result.probe.value_a == pytest.approx(acc[0]) and result.probe.value_b == pytest.approx(acc[1])
    assert result.probe.diff == pytest.approx(acc[0] - acc[1])
    assert result.probe.ci_low <= result.probe.diff <= result.probe.ci_high


@pytest.mark.parametrize("k", [1, 3, 10])
def test_overlap_matches_a_brute_force_loop(k):
    g = torch.Generator().manual_seed(100 + k)
    a = torch.randn(37, 6, generator=g)
    b = a + 0.5 * torch.randn(37, 6, generator=g)
    assert neighbour_overlap(a, b, k) == pytest.approx(_brute_overlap(a.numpy(), b.numpy(), k))
    assert neighbour_overlap(a, a, k) == 1.0


def test_overlap_in_chunks_equals_one_block(monkeypatch):
    from deepcuts_fast import embedding_metrics

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    whole = neighbour_overlap(a, b, 5)
    monkeypatch.setattr(embedding_metrics, "CHUNK", 7)
    assert neighbour_overlap(a, b, 5) == whole


def test_mean_cosine_against_numpy():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    x, y = a.numpy().astype(float), b.numpy().astype(float)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    mean, low = mean_cosine(a, b)
    assert mean == pytest.approx(cos.mean()) and low == pytest.approx(cos.min())


def test_pooling_follows_the_dense_folder(tmp_path, dense, texts):
    """pooling=None reads the dense model's sentence-transformers folder; an explicit value wins."""
    sentence_transformers_files(tmp_path, {"pooling_mode_cls_token": True})
    folder = tiny_model("bert", seed=3)
    folder.config._name_or_path = str(tmp_path)
    result = dc.evaluate_embeddings(_perturbed(dense), folder, texts)
    assert (result.pooling, result.normalize) == ("cls", True) and result.probe is None
    assert dc.evaluate_embeddings(dense, folder, texts, pooling="max", normalize=False).pooling == "max"


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_mismatched_inputs_are_one_line_errors(dense, texts, train):
    with pytest.raises(dc.DeepCutsError) as e:
        neighbour_overlap(torch.randn(5, 3), torch.randn(6, 3))
    assert "one shape" in _one_line(e)
    with pytest.raises(dc.DeepCutsError) as e:
        mean_cosine(torch.randn(5, 3), torch.randn(5, 4))
    assert "same texts" in _one_line(e)
    from transformers import BertConfig, BertModel

    other = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_attention_heads=2, intermediate_size=24,
                                 num_hidden_layers=1, max_position_embeddings=64)).eval()
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(other, dense, texts)
    assert "width 16" in _one_line(e) and "pruned from" in _one_line(e)
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, texts, k=32)
    assert "k=32 for 32 texts" in _one_line(e)
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, [], k=1)
    assert "k=1 for 0 texts" in _one_line(e)
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in texts]
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, unlabelled, probe_train=train)
    assert "has no 'labels'" in _one_line(e)
    real = [{**b, "labels": b["labels"].float()} for b in train]
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, texts, probe_train=real)
    assert "real-valued labels" in _one_line(e)
    one_class = [{**b, "labels": torch.zeros_like(b["labels"])} for b in train]
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, texts, probe_train=one_class)
    assert "single class" in _one_line(e)
    bad_ids = [{**texts[0], "input_ids": texts[0]["input_ids"] + 1000}]
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, bad_ids + texts[1:])
    assert "outside the model's vocabulary" in _one_line(e)
    with pytest.raises(dc.DeepCutsError) as e:
        dc.evaluate_embeddings(dense, dense, texts, pooling="sum")
    assert "unknown pooling 'sum'" in _one_line(e)


def test_missing_scikit_learn_says_what_to_install(monkeypatch, dense, texts, train):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(dc.DeepCutsError, match=r"pip install 'deepcuts-fast\[embeddings\]'"):
        dc.evaluate_embeddings(dense, dense, texts, probe_train=train)
