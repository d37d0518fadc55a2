"""Model folders that would load wrong without a word: weights that do not fill the model, missing tokenizer
files, a fine-tune cache fooled by files changed in place, symlink loops given as --model, and models nothing may
be computed through (a bare encoder's random head, truncated or integer weights, a tokenizer the embeddings do not
fit, ids or lengths beyond the model's)."""
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


# --- 5. nothing computed through a random head, unreadable or rounded weights, ids the model cannot embed ----


def cli(argv: list, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `deepcuts ARGV --quiet` (what the test printed before is dropped)."""
    capsys.readouterr()
    code = main([*argv, "--quiet"])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *words: str) -> None:
    """One `deepcuts: error:` line, exit status 2, every one of `words` in it."""
    assert code == 2 and err.startswith("deepcuts: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("command", ["score", "eval", "prune-data", "prune-scores", "export"])
def test_a_bare_encoder_is_refused_wherever_its_head_would_be_read(command, encoder_dir, data_csv, tmp_path, capsys):
    """Scores with data, pruning, evaluation and export of a bare encoder used to go through a random head."""
    scores = tmp_path / "magnitude.safetensors"  # data-free scores of the encoder itself, for prune --scores
    dc.score(dc.load_model(str(encoder_dir)), None, "magnitude", granularity="unit").save(scores)
    data = ["--data", str(data_csv)]
    labels = ["--objective", "labels"]  # auto and distill score a bare encoder through its embedding instead
    argv = {"score": ["score", *data, "--criterion", "gradient", "--batches", "1", "--batch-size", "4", *labels],
            "eval": ["eval", *data],
            "prune-data": ["prune", *data, "--keep-flops", "0.5", "--calibration-examples", "8", *labels],
            "prune-scores": ["prune", "--scores", str(scores), "--keep-flops", "0.5"],
            "export": ["export"]}[command]
    out = tmp_path / ("out.onnx" if command == "export" else "out")
    code, err = cli([*argv, "--model", str(encoder_dir), *(["--out", str(out)] if command != "eval" else [])], capsys)
    assert_refused(code, err, "has no trained task head", "randomly initialized", "fine-tune it first",
                   f"deepcuts run --model {encoder_dir} --data DATA", "magnitude, random")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["magnitude.safetensors"]


def test_the_packaged_encoder_is_refused_with_its_fine_tuned_alias_named():
    with pytest.raises(DeepCutsError, match="'minilm' has no trained task head.*--model minilm-rt"):
        task_model("minilm", on_bare="refuse")


@pytest.mark.parametrize("granularity", ["unit", "weight"])
def test_data_free_scores_of_a_bare_encoder_read_no_head(granularity, encoder_dir, data_csv, tmp_path, capsys):
    """Magnitude needs no head, and no Fisher is computed through a random one."""
    out = tmp_path / "s.safetensors"
    code, err = cli(["score", "--model", str(encoder_dir), "--data", str(data_csv), "--criterion", "magnitude",
                     "--granularity", granularity, "--batch-size", "4", "--out", str(out)], capsys)
    assert code == 0 and err == ""
    got = dc.Scores.load(out)
    want = dc.score(dc.load_model(str(encoder_dir)), None, "magnitude", granularity=granularity)
    assert got.fisher is None and got.granularity == granularity and got.meta["batches"] == 0
    for name, value in want.items():
        assert torch.equal(got[name], value)
    assert all(torch.equal(got.heads(i), want.heads(i)) for i in range(2))


def test_a_bare_encoder_is_fine_tuned_not_refused_by_default(encoder_dir, tmp_path):
    with pytest.raises(DeepCutsError, match="fine-tuning one needs data"):
        task_model(str(encoder_dir))


def test_integer_weights_are_refused_at_load(model_dir, data_csv, tmp_path, capsys):
    """Every float tensor cast to int32 used to be cast back to float by transformers and evaluated."""
    folder = copy_folder(model_dir, tmp_path / "int")
    rewrite_weights(folder, lambda s: {k: (v * 100).to(torch.int32) if v.is_floating_point() else v
                                       for k, v in s.items()})
    for load in (dc.load_model, dc.from_pretrained, lambda p: task_model(p).model):
        with pytest.raises(DeepCutsError, match=r"model\.safetensors holds weights that are not floating point "
                                                r"\(bert\..* is I32, and \d+ more\).*re-save the model"):
            load(str(folder))
    code, err = cli(["eval", "--model", str(folder), "--data", str(data_csv)], capsys)
    assert_refused(code, err, f"{folder / WEIGHTS} holds weights that are not floating point")


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_a_truncated_weights_file_is_named(keep, model_dir, data_csv, tmp_path, capsys):
    folder = copy_folder(model_dir, tmp_path / "truncated")
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[:max(4, int(len(data) * keep))])
    with pytest.raises(DeepCutsError, match=r"model\.safetensors is truncated or corrupt \(.*\); re-save the model"):
        dc.load_model(str(folder))
    out = tmp_path / "s.safetensors"
    code, err = cli(["score", "--model", str(folder), "--data", str(data_csv), "--criterion", "magnitude",
                     "--out", str(out)], capsys)
    assert_refused(code, err, f"{folder / WEIGHTS} is truncated or corrupt", "download or copy it again")
    assert "SafetensorError" not in err and not out.exists()


@pytest.fixture
def small_vocab_dir(model_dir, tmp_path):
    """A classifier whose embeddings have 100 rows, with the MiniLM tokenizer of 30522 tokens."""
    folder = tmp_path / "small_vocab"
    tiny_model("bert").save_pretrained(folder)
    dc.load_tokenizer(str(model_dir)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["eval", "score"])
def test_a_tokenizer_larger_than_the_embeddings_is_refused(command, small_vocab_dir, data_csv, tmp_path, capsys):
    """Used to end in `IndexError: index out of range in self` inside the embedding."""
    out = tmp_path / "s.safetensors"
    code, err = cli([command, "--model", str(small_vocab_dir), "--data", str(data_csv),
                     *(["--out", str(out)] if command == "score" else [])], capsys)
    assert_refused(code, err, "has 30522 tokens but the model embeds only 100",
                   "use the tokenizer the model was trained with")
    assert not out.exists()


def test_evaluation_checks_the_token_ids_and_lengths(model_dir):
    from deepcuts_fast.train import evaluate

    model = dc.load_model(str(model_dir))
    ok = {"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
          "labels": torch.tensor([1])}
    assert evaluate(model, [ok]).n == 1
    too_large = {**ok, "input_ids": torch.tensor([[101, 999_999, 102]])}
    with pytest.raises(DeepCutsError, match=r"evaluation batch 1 has token ids 101\.\.999999, outside the model's "
                                            r"vocabulary \(0\.\.30521\)"):
        evaluate(model, [ok, too_large])
    long = {"input_ids": torch.full((1, 65), 2000), "attention_mask": torch.ones(1, 65, dtype=torch.long),
            "labels": torch.tensor([1])}
    with pytest.raises(DeepCutsError, match="sequences of 65 tokens, longer than the model's 64 positions"):
        evaluate(model, [long])


@pytest.mark.parametrize("command", ["eval", "score"])
def test_max_length_beyond_the_positions_is_refused(command, model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    code, err = cli([command, "--model", str(model_dir), "--data", str(data_csv), "--max-length", "65",
                     *(["--out", str(out)] if command == "score" else [])], capsys)
    assert_refused(code, err, f"--max-length 65 is longer than model {str(model_dir)!r} can read (64 tokens)",
                   "pass --max-length 64 or less")
    assert not out.exists()


@pytest.mark.parametrize("head", ["BertForQuestionAnswering", "BertForTokenClassification", "BertForMultipleChoice"])
def test_a_folder_of_another_task_is_never_turned_into_a_classifier(head, data_csv, tmp_path, capsys):
    """Such a folder used to load as a sequence classifier: its trained head dropped, a random one added, and
    `prune` / `eval` exited 0 on meaningless scores and accuracy. Now QA and token-classification models keep their
    head (tests/test_tasks.py prunes them), but `eval` and a labels objective, which read one label per text, refuse
    them; multiple choice is refused everywhere."""
    import transformers
    from transformers import BertConfig

    tokenizer = dc.load_tokenizer("minilm")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                        num_hidden_layers=2, max_position_embeddings=64)
    folder = tmp_path / "task"
    getattr(transformers, head)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    kind = {"BertForQuestionAnswering": "is a question-answering model", "BertForTokenClassification":
            "is a token-classification model", "BertForMultipleChoice": "is a multiple-choice model"}[head]
    refused = [["eval", "--data", str(data_csv)],
               ["prune", "--data", str(data_csv), "--keep-flops", "0.5", "--calibration-examples", "8",
                "--objective", "labels", "--out", str(tmp_path / "slim")]]
    if "MultipleChoice" in head:
        refused.append(["prune", "--data", str(data_csv), "--keep-flops", "0.5", "--calibration-examples", "8",
                        "--out", str(tmp_path / "slim")])
        with pytest.raises(DeepCutsError, match=kind):
            dc.from_pretrained(folder)
    for argv in refused:
        code, err = cli([*argv, "--model", str(folder)], capsys)
        assert_refused(code, err, kind, head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]
