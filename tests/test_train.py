"""Fine-tuning, evaluation and the fine-tuned-model cache, on tiny random-weight models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, tiny_batches, tiny_model

from deepcuts_fast import finetune_cache, outputs, train
from deepcuts_fast.cache import cache_dir
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.finetune_cache import finetuned_model
from deepcuts_fast.hashing import cache_key
from deepcuts_fast.stats import macro_f1
from deepcuts_fast.train import TrainSettings, EvalResult, evaluate, evaluate_logits, finetune


def token_task(n_batches: int = 8, batch_size: int = 16, seq_len: int = 8, seed: int = 0) -> list[dict]:
    """Learnable task: label 1 iff token 7 occurs (it is planted in half the rows)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(10, TINY["vocab"], (batch_size, seq_len), generator=g)
        labels = torch.randint(0, 2, (batch_size,), generator=g)
        pos = torch.randint(0, seq_len, (batch_size,), generator=g)
        ids[labels == 1, pos[labels == 1]] = 7
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def record_batches(model) -> list[int]:
    """Record which batch (by the data pointer of its input_ids) each forward call of `model` saw."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["input_ids"].data_ptr()), with_kwargs=True)
    return seen


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- finetune ---------------------------------------------------------------------------------


def test_finetune_learns_a_learnable_task():
    model, data = tiny_model(), token_task(6, 8)
    before = evaluate(model, data)
    out = finetune(model, data, epochs=8, lr=5e-3, progress=False)
    after = evaluate(model, data)
    assert out is model and not model.training
    assert after.loss < 0.5 * before.loss
    assert after.accuracy > 0.9


def test_finetune_with_masks_keeps_pruned_weights_zero_and_trains_the_rest():
    model, data = tiny_model(), token_task(4, 8)
    g = torch.Generator().manual_seed(3)
    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith("dense.weight")][:3]
    masks = {n: torch.rand(params[n].shape, generator=g) > 0.5 for n in names}
    before = {n: params[n].detach().clone() for n in names}
    finetune(model, data, epochs=2, lr=1e-2, progress=False, masks=masks)
    for n in names:
        assert torch.all(params[n][~masks[n]] == 0)
        assert not torch.equal(params[n][masks[n]], before[n][masks[n]])  # the kept weights did train


def test_finetune_rejects_masks_of_another_model():
    with pytest.raises(DeepCutsError, match="does not match"):
        finetune(tiny_model(), token_task(1, 4), epochs=1, progress=False, masks={"nope.weight": torch.ones(2)})


def test_finetune_seeds_reproduce_exactly():
    data = tiny_batches(4, num_labels=2)
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    for model, seed in ((a, 1), (b, 1), (c, 2)):
        finetune(model, data, epochs=2, lr=1e-3, seed=seed, progress=False)
    assert same_weights(a, b)
    assert not same_weights(a, c)
    assert not same_weights(a, tiny_model())


def test_finetune_leaves_caller_rng_untouched():
    model, data = tiny_model(), tiny_batches(2)  # tiny_model seeds the global RNG itself
    torch.manual_seed(123)
    state = torch.get_rng_state()
    finetune(model, data, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("epochs", "steps"), [(0.5, 5), (1.0, 10), (1.5, 15), (0.01, 1)])
def test_fractional_epochs_run_expected_steps(epochs, steps):
    model, data = tiny_model(), tiny_batches(10, batch_size=2)
    seen = record_batches(model)
    finetune(model, data, epochs=epochs, progress=False)
    assert len(seen) == steps
    given = [b["input_ids"].data_ptr() for b in data]
    for start in range(0, steps, len(data)):  # every pass visits distinct batches
        one_pass = seen[start:start + len(data)]
        assert len(set(one_pass)) == len(one_pass) and set(one_pass) <= set(given)
    if steps >= len(data):
        assert seen[: len(data)] != given  # shuffled


def test_linear_schedule_warms_up_and_decays_to_zero():
    factor = train._linear_schedule(steps=10, warmup_steps=2)
    values = [factor(s) for s in range(11)]
    assert values[0] > 0 and values[0] < values[1] < values[2] == 1.0
    assert all(x > y for x, y in zip(values[2:], values[3:]))
    assert values[10] == 0.0


def test_finetune_bf16_autocast_runs():
    model, data = tiny_model(), token_task(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, data, epochs=2, lr=1e-3, dtype=torch.bfloat16, progress=False)
    after = model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    fp32, bf16 = evaluate(model, data), evaluate(model, data, dtype=torch.bfloat16)
    assert bf16.loss == pytest.approx(fp32.loss, rel=0.05, abs=0.02)


def test_finetune_regression_runs():
    model = tiny_model(num_labels=1)
    data = tiny_batches(4, num_labels=1)
    before = evaluate(model, data)
    finetune(model, data, epochs=5, lr=1e-3, progress=False)
    assert evaluate(model, data).mse < before.mse


def test_finetune_non_finite_loss_errors():
    model = tiny_model()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    model.train()
    with pytest.raises(DeepCutsError, match=r"step 1 of \d+.*lower learning rate"):
        finetune(model, tiny_batches(2), progress=False)
    assert not model.training


def test_finetune_huge_lr_errors():
    with pytest.raises(DeepCutsError, match=r"diverged.*step \d+.*lr=1e\+30"):
        finetune(tiny_model(), token_task(4), epochs=3, lr=1e30, progress=False)


def test_finetune_bad_inputs_error():
    with pytest.raises(DeepCutsError, match="empty"):
        finetune(tiny_model(), [], progress=False)
    with pytest.raises(DeepCutsError, match="epochs"):
        finetune(tiny_model(), tiny_batches(2), epochs=0, progress=False)
    with pytest.raises(DeepCutsError, match="warmup"):
        finetune(tiny_model(), tiny_batches(2), warmup=1.0, progress=False)
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in tiny_batches(2)]
    with pytest.raises(DeepCutsError, match="labels"):
        finetune(tiny_model(), unlabelled, progress=False)


# --- evaluate ---------------------------------------------------------------------------------


def uneven_batches(num_labels: int) -> list[dict]:
    return (tiny_batches(2, batch_size=3, num_labels=num_labels, seed=1)
            + tiny_batches(1, batch_size=5, seq_len=7, num_labels=num_labels, seed=2))


def all_logits(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                            for b in batches])
    return logits, torch.cat([b["labels"] for b in batches])


def test_evaluate_classification_matches_hand_computation():
    model, data = tiny_model(num_labels=3), uneven_batches(3)
    logits, labels = all_logits(model, data)
    result = evaluate(model, data)
    assert result.n == 11
    assert result.accuracy == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result.mse is None and result.pearson is None
    assert result.predictions == tuple(logits.argmax(-1).tolist()) and result.labels == tuple(labels.tolist())
    assert result.macro_f1 == pytest.approx(macro_f1(logits.argmax(-1).numpy(), labels.numpy()))
    assert result.to_dict() == {"loss": result.loss, "accuracy": result.accuracy, "mse": None,
                                "pearson": None, "n": 11, "macro_f1": result.macro_f1,
                                "predictions": "".join(map(str, result.predictions)),
                                "labels": "".join(map(str, result.labels))}  # one character per example
    json.dumps(result.to_dict())
    onnx_route = evaluate_logits(zip(*[torch.split(t, 4) for t in (logits, labels)]))  # other batches, same order
    assert {**onnx_route.to_dict(), "loss": None} == {**result.to_dict(), "loss": None}


def test_evaluate_regression_matches_numpy():
    model, data = tiny_model(num_labels=1), uneven_batches(1)
    logits, labels = all_logits(model, data)
    pred, target = logits.squeeze(-1).double().numpy(), labels.double().numpy()
    result = evaluate(model, data)
    assert result.n == 11 and result.accuracy is None
    assert result.mse == pytest.approx(np.mean((pred - target) ** 2), rel=1e-5)
    assert result.loss == result.mse
    assert result.macro_f1 is None and result.predictions is None and result.to_dict()["predictions"] is None
    assert result.pearson == pytest.approx(np.corrcoef(pred, target)[0, 1], rel=1e-4)


def test_evaluate_constant_regression_has_no_pearson():
    model, data = tiny_model(num_labels=1), tiny_batches(1, batch_size=1, num_labels=1)
    assert evaluate(model, data).pearson is None


def test_evaluate_restores_mode():
    model, data = tiny_model(), tiny_batches(1)
    model.train()
    assert isinstance(evaluate(model, data), EvalResult)
    assert model.training
    model.eval()
    evaluate(model, data)
    assert not model.training


def test_evaluate_is_deterministic_and_uses_eval_mode():
    model, data = tiny_model(), tiny_batches(2)
    model.train()  # dropout must be off inside evaluate
    assert evaluate(model, data) == evaluate(model, data)


def test_evaluate_errors():
    with pytest.raises(DeepCutsError, match="empty"):
        evaluate(tiny_model(), [])
    with pytest.raises(DeepCutsError, match="empty"):
        evaluate(tiny_model(num_labels=1), iter([]))
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in tiny_batches(1)]
    with pytest.raises(DeepCutsError, match="labels"):
        evaluate(tiny_model(), unlabelled)


# --- cache ------------------------------------------------------------------------------------


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DEEPCUTS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "deepcuts_fast"


def test_cache_key_stable_and_short():
    k = cache_key(a=1, b={"y": 2, "x": [1, 2]}, dtype=torch.bfloat16)
    assert k == cache_key(b={"x": [1, 2], "y": 2}, dtype=torch.bfloat16, a=1)
    assert len(k) == 16 and int(k, 16) >= 0
    assert k != cache_key(a=2, b={"y": 2, "x": [1, 2]}, dtype=torch.bfloat16)
    assert cache_key(d=torch.float32) != cache_key(d=torch.bfloat16)
    with pytest.raises(TypeError):
        cache_key(x=object())


@pytest.fixture
def base(tmp_path):
    """A saved tiny base model folder and a matching tokenizer."""
    from transformers import BertTokenizer

    path = tmp_path / "base"
    tiny_model().save_pretrained(path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                               + [f"t{i}" for i in range(TINY["vocab"] - 5)]))
    return str(path), BertTokenizer(vocab_file=str(vocab))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "finetuned"


def run_cached(base, **kw):
    path, tok = base
    kw.setdefault("key_fields", {"data": "token-task"})
    fields = {k: kw.pop(k) for k in ("key_fields",) if k in kw}
    return finetuned_model(path, tok, lambda t: token_task(2), settings=TrainSettings(epochs=1, lr=1e-3, **kw),
                           progress=False, **fields)


def test_cache_roundtrip(base, cache, monkeypatch):
    model, cached, _ = run_cached(base)
    assert not cached and not model.training
    (entry,) = cache.iterdir()  # no leftover temp folders
    assert {"model.safetensors", "config.json", "deepcuts_finetune.json", "tokenizer.json"} <= {
        p.name for p in entry.iterdir()}
    meta = json.loads((entry / "deepcuts_finetune.json").read_text())
    assert meta["key"] == entry.name and meta["steps"] == 2 and meta["fields"]["data"] == {"data": "token-task"}
    assert meta["versions"]["torch"] and meta["versions"]["transformers"]
    assert not same_weights(model, tiny_model())  # it was trained

    def boom(*a, **k):
        raise AssertionError("must not train on a cache hit")

    monkeypatch.setattr(finetune_cache, "finetune", boom)
    again, cached, _ = run_cached(base)
    assert cached and not again.training
    assert same_weights(model, again)
    data = token_task(2)
    assert evaluate(again, data) == evaluate(model, data)


def test_cache_key_covers_settings(base, cache):
    run_cached(base)
    _, cached, _ = run_cached(base, seed=1)
    assert not cached
    _, cached, _ = run_cached(base, key_fields={"data": "other"})
    assert not cached
    _, cached, _ = run_cached(base, dtype=torch.bfloat16)
    assert not cached
    assert len(list(cache.iterdir())) == 4
    _, cached, _ = run_cached(base, seed=1)
    assert cached


@pytest.mark.parametrize("damage", ["weights", "metadata", "garbled"])
def test_corrupt_entry_is_rebuilt(base, cache, damage):
    model, _, _ = run_cached(base)
    (entry,) = cache.iterdir()
    if damage == "weights":
        (entry / "model.safetensors").unlink()
    elif damage == "metadata":
        (entry / "deepcuts_finetune.json").unlink()
    else:
        (entry / "deepcuts_finetune.json").write_text("{not json")
    rebuilt, cached, _ = run_cached(base)
    assert not cached
    assert same_weights(model, rebuilt)  # seeded: the same model again
    assert [p.name for p in cache.iterdir()] == [entry.name]
    _, cached, _ = run_cached(base)
    assert cached


def test_crash_while_saving_leaves_nothing(base, cache, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "_publish", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        run_cached(base)
    assert list(cache.iterdir()) == []


def test_cache_entries_get_the_permissions_of_makedirs(base, cache):
    """Not mkdtemp's private 0700: a shared cache must be readable by the other users of the machine."""
    import os

    old = os.umask(0o022)
    try:
        run_cached(base)
    finally:
        os.umask(old)
    (entry,) = cache.iterdir()
    assert entry.stat().st_mode & 0o777 == 0o755


def test_lost_race_keeps_the_complete_entry(base, cache):
    model, _, _ = run_cached(base)
    (entry,) = cache.iterdir()
    meta = json.loads((entry / "deepcuts_finetune.json").read_text())
    # another process published the same key first: our rename fails, and its entry is kept
    finetune_cache._write_entry(entry, model, base[1], meta)
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert finetune_cache._is_complete(entry, entry.name)
