"""Model folders that would load wrong without a word: weights that do not fill the model, missing tokenizer
files, a fine-tune cache fooled by files changed in place, and symlink loops given as --model."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file
from test_pruning import random_plan

import deepcuts_fast as dc
from deepcuts_fast import finetune_cache, hashing
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.task import finetuned_task_model, task_model

WEIGHTS = "model.safetensors"


def copy_folder(src: Path, dst: Path) -> Path:
    """A copy of model folder `src` at `dst`."""
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(folder: Path, edit) -> None:
    """Replace the folder's weights, in place, by `edit(state)`."""
    state = load_file(str(folder / WEIGHTS))
    save_file(edit(state), str(folder / WEIGHTS), metadata={"format": "pt"})


def drop_layer(state: dict) -> dict:
    return {k: v for k, v in state.items() if ".layer.1." not in k}


def rename_prefix(state: dict) -> dict:
    return {k.replace("bert.", "encoder_model.", 1): v for k, v in state.items()}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- 1. weights that do not fill the model ---------------------------------------------------------------


@pytest.mark.parametrize("edit, names", [(drop_layer, "bert.encoder.layer.1."), (rename_prefix, "encoder_model.")])
def test_classifier_with_missing_weights_is_an_error(model_dir, tmp_path, edit, names):
    folder = copy_folder(model_dir, tmp_path / "broken")
    rewrite_weights(folder, edit)
    for load in (dc.load_model, dc.from_pretrained, lambda p: task_model(p).model):
        with pytest.raises(DeepCutsError, match=r"\d+ missing \(bert\.") as err:
            load(str(folder))
        assert names in str(err.value) and "..." in str(err.value)
    if edit is rename_prefix:
        with pytest.raises(DeepCutsError, match=r"\d+ unexpected \(encoder_model\."):
            dc.load_model(str(folder))


def test_bare_encoder_with_missing_layer_is_an_error(encoder_dir, tmp_path):
    folder = copy_folder(encoder_dir, tmp_path / "broken")
    rewrite_weights(folder, drop_layer)
    for num_labels in (None, 3):
        with pytest.raises(DeepCutsError, match=r"16 missing \(bert\.encoder\.layer\.1\."):
            dc.load_model(str(folder), num_labels=num_labels)
    with pytest.raises(DeepCutsError, match="missing"):
        task_model(str(folder), on_bare="random-head")


def test_bare_encoder_with_extra_encoder_weights_is_an_error(encoder_dir, tmp_path):
    folder = copy_folder(encoder_dir, tmp_path / "extra")
    rewrite_weights(folder, lambda s: {**s, "encoder.layer.7.output.dense.weight": torch.zeros(2, 2)})
    with pytest.raises(DeepCutsError, match=r"1 unexpected \(encoder\.layer\.7\."):
        dc.load_model(str(folder))


def test_bare_encoder_gets_a_fresh_head(encoder_dir):
    for num_labels in (None, 3):
        model = dc.load_model(str(encoder_dir), num_labels=num_labels)
        assert model.config.num_labels == (num_labels or 2)
    assert task_model(str(encoder_dir), on_bare="random-head").model.config.num_labels == 2


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_pretraining_checkpoints_load_with_a_fresh_head(tmp_path, arch):
    """Masked-LM / pretraining checkpoints: their LM head is unused, and BERT's pooler (absent there) is new."""
    from transformers import (BertForMaskedLM, DistilBertForMaskedLM, ElectraForPreTraining,
                              RobertaForMaskedLM)

    cls = {"bert": BertForMaskedLM, "roberta": RobertaForMaskedLM, "distilbert": DistilBertForMaskedLM,
           "electra": ElectraForPreTraining}[arch]
    cls(tiny_model(arch).config).save_pretrained(tmp_path / arch)
    model = dc.load_model(str(tmp_path / arch), num_labels=3)
    assert model.config.num_labels == 3


def test_classifier_with_another_head_size_is_an_error(model_dir):
    with pytest.raises(DeepCutsError, match=r"2 mismatched \(classifier\.bias \(checkpoint \(2,\), model \(3,\)\)"):
        dc.load_model(str(model_dir), num_labels=3)


def test_slim_folder_with_missing_weights_is_an_error(tmp_path):
    model = tiny_model("bert")
    path = dc.save_pretrained(dc.prune(model, random_plan(model, 3)), tmp_path / "slim")
    rewrite_weights(path, drop_layer)
    problem = (r"slim folder .* does not match its config: its weights have \d+ missing "
               r"\(bert\.encoder\.layer\.1\..*\.\.\.\)")
    with pytest.raises(DeepCutsError, match=problem):
        dc.from_pretrained(path)
    rewrite_weights(path, lambda s: {**s, "bert.extra": torch.zeros(1)})
    with pytest.raises(DeepCutsError, match=r"1 unexpected \(bert\.extra\)"):
        dc.from_pretrained(path)


def test_cli_reports_missing_weights(model_dir, data_csv, tmp_path, capsys):
    folder = copy_folder(model_dir, tmp_path / "broken")
    rewrite_weights(folder, drop_layer)
    code = main(["eval", "--model", str(folder), "--data", str(data_csv), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "missing" in err and "bert.encoder.layer.1." in err


# --- 2. tokenizer files ----------------------------------------------------------------------------------


def test_folder_without_tokenizer_files_is_an_error(model_dir, tmp_path):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", WEIGHTS):
        shutil.copy(model_dir / name, folder / name)
    with pytest.raises(DeepCutsError, match="no tokenizer files.*copy the base model's tokenizer"):
        dc.load_tokenizer(str(folder))
    with pytest.raises(DeepCutsError, match="no tokenizer files"):
        task_model(str(folder))


def test_tokenizer_without_vocabulary_is_an_error(model_dir, tmp_path):
    folder = tmp_path / "empty_vocab"
    folder.mkdir()
    shutil.copy(model_dir / "config.json", folder / "config.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(DeepCutsError, match="knows only \\d+ tokens"):
        dc.load_tokenizer(str(folder))


def test_prune_refuses_a_model_without_tokenizer(model_dir, data_csv, tmp_path, capsys):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", WEIGHTS):
        shutil.copy(model_dir / name, folder / name)
    out = tmp_path / "slim"
    code = main(["prune", "--model", str(folder), "--data", str(data_csv), "--keep-flops", "0.5", "--out", str(out),
                 "--quiet"])
    assert code != 0 and "no tokenizer files" in capsys.readouterr().err
    assert not out.exists()


# --- 3. the fine-tune cache is keyed by content --------------------------------------------------------


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "finetuned"


def write_csv(path: Path, labels: list[int]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i, label in enumerate(labels):
            w.writerow([f"good film number {i}" if i % 3 else f"dull plot {i}", label])
    return path


def tune(base: Path, data: Path):
    return finetuned_task_model(str(base), str(data), progress=False)


def test_changed_weights_are_fine_tuned_afresh(encoder_dir, cache, tmp_path):
    base = copy_folder(encoder_dir, tmp_path / "base")
    data = write_csv(tmp_path / "data.csv", [i % 2 for i in range(12)])
    first = tune(base, data)
    assert not first.cached and tune(base, data).cached
    rewrite_weights(base, lambda s: {k: v + 0.01 for k, v in s.items()})  # same path, new weights
    changed = tune(base, data)
    assert not changed.cached and not same_weights(changed.model, first.model)
    assert tune(base, data).cached
    assert len(list(cache.iterdir())) == 2


def test_changed_labels_are_fine_tuned_afresh(encoder_dir, cache, tmp_path):
    data = write_csv(tmp_path / "data.csv", [i % 2 for i in range(12)])
    first = tune(encoder_dir, data)
    write_csv(data, [(i + 1) % 2 for i in range(12)])  # same path, other labels
    changed = tune(encoder_dir, data)
    assert not changed.cached and not same_weights(changed.model, first.model)
    assert tune(encoder_dir, data).cached


def test_moved_model_and_data_hit_the_cache(encoder_dir, cache, tmp_path):
    data = write_csv(tmp_path / "data.csv", [i % 2 for i in range(12)])
    first = tune(encoder_dir, data)
    moved = copy_folder(encoder_dir, tmp_path / "moved")
    os.utime(moved / WEIGHTS, (1, 1))  # another mtime too
    again = tune(moved, shutil.copy(data, tmp_path / "copy.csv"))
    assert again.cached and same_weights(again.model, first.model)
    assert again.finetune_info["provenance"] == {"model": str(encoder_dir), "data": str(data)}


def test_file_digests_are_memoised_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100)
    first = hashing.file_digest(path)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    assert hashing.file_digest(path) == first and not reads
    monkeypatch.undo()
    path.write_bytes(b"b" * 100)
    assert hashing.file_digest(path) != first


def test_embedded_default_key_is_stable_across_processes():
    """The packaged MiniLM and the embedded data are named by content, not by where they are installed."""
    from deepcuts_fast.data import EMBEDDED, encode_labels, load_dataset
    from deepcuts_fast.task import _data_id

    code = ("from deepcuts_fast.finetune_cache import _model_id; from deepcuts_fast.task import _data_id; "
            "from deepcuts_fast.data import EMBEDDED, encode_labels, load_dataset; "
            "print(_model_id('minilm'), _data_id(encode_labels(load_dataset(EMBEDDED, 'train'), 2)))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).parent.parent).stdout.split()
    here = [finetune_cache._model_id("minilm"), _data_id(encode_labels(load_dataset(EMBEDDED, "train"), 2))]
    assert out == here and all(k.startswith("content:") for k in here)


# --- 4. symlinks -----------------------------------------------------------------------------------------


def test_symlink_loop_is_named(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    for load in (dc.load_model, dc.load_tokenizer, dc.from_pretrained, task_model):
        with pytest.raises(DeepCutsError, match="symlink loop"):
            load(str(a))
    with pytest.raises(DeepCutsError, match="symlink loop"):
        dc.load_model(str(a / "sub"))


def test_broken_symlink_is_named(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    for path in (link, link / "sub"):
        with pytest.raises(DeepCutsError, match="broken symlink .*gone"):
            dc.load_model(str(path))


def test_cli_names_a_symlink_loop(data_csv, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    code = main(["eval", "--model", str(a), "--data", str(data_csv), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "symlink loop" in err and "Repo id" not in err and "huggingface.co" not in err


def test_a_model_with_a_nan_weight_is_refused_when_loaded(model_dir, tmp_path):
    """eval used to print accuracy 0.5 for a model whose outputs are all NaN."""
    import deepcuts_fast as dc
    from deepcuts_fast.errors import DeepCutsError

    model = dc.load_model(str(model_dir))
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[3, 2] = float("nan")
    broken = tmp_path / "nan-model"
    model.save_pretrained(broken)
    dc.load_tokenizer(str(model_dir)).save_pretrained(broken)
    with pytest.raises(DeepCutsError, match=r"layer\.0\.output\.dense\.weight .*NaN or inf"):
        dc.load_model(str(broken))
    with pytest.raises(DeepCutsError, match="NaN or inf"):
        dc.from_pretrained(broken)


def test_reconstruction_on_padding_only_is_a_clear_error():
    import deepcuts_fast as dc
    from conftest import tiny_batches, tiny_model
    from deepcuts_fast.errors import DeepCutsError

    model = tiny_model("bert")
    batches = tiny_batches(2)
    for b in batches:
        b["attention_mask"] = torch.zeros_like(b["attention_mask"])
    plan = dc.Plan(heads=[[0, 1], [0]], neurons=[list(range(20)), list(range(30))],
                   num_heads=[layer.num_heads for layer in dc.arch.encoder_layers(model)],
                   ffn_widths=[layer.ffn_width for layer in dc.arch.encoder_layers(model)])
    with pytest.raises(DeepCutsError, match="no real token"):
        dc.reconstruct(dc.prune(model, plan), model, batches)
