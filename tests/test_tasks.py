"""Tasks carried through the whole path (deepcuts_fast/tasks/): every family x every task prunes to a slim model
that computes the dense model's task outputs with the same units zeroed, saves and loads exactly with its own head,
loads in stock transformers through the task's auto class where deepcuts-fast cannot be imported, and scores with
labels and by distillation through the task's outputs; a folder of another task is never turned into a sequence
classifier (API and CLI), and multiple choice is refused."""
from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import FAMILIES, TINY, pad_id, tiny_batches, tiny_model
from test_pruning import random_plan, zero_dropped_units

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.families import family
from deepcuts_fast.scoring.objective import Objective, resolve_objective
from deepcuts_fast.tasks import IGNORED, REFUSED, TASKS, model_task, saved_task

TOKEN_LABELS = 3
CASES = [f"{arch}|{task}" for arch in FAMILIES for task in TASKS]
# Stock loading in a subprocess: every task for a few families, and every family for one task.
STOCK = sorted({f"{arch}|{task}" for arch in ("bert", "deberta-v2", "modernbert", "mpnet") for task in TASKS}
               | {f"{arch}|token-classification" for arch in FAMILIES})
PACKAGE = Path(dc.__file__).parent
TOL = 1e-5

# Runs where `import deepcuts_fast` fails: only torch and transformers are there.
CHILD = r"""
import json, sys
sys.modules["deepcuts_fast"] = None
import torch, transformers

job = json.loads(open(sys.argv[1]).read())
batch = {k: torch.tensor(v) for k, v in job["batch"].items()}
out = {}
for name, (path, auto_class, outputs) in job["cases"].items():
    model = getattr(transformers, auto_class).from_pretrained(path, trust_remote_code=True, attn_implementation="eager")
    with torch.no_grad():
        result = model(**batch)
    out[name] = {"class": type(model).__name__, "outputs": [result[o].tolist() for o in outputs]}
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(job["sentence"], trust_remote_code=True, device="cpu")
out["sentence"] = {"class": type(model[0].auto_model).__name__, "max_seq_length": model.max_seq_length,
                   "modules": [type(m).__name__ for m in model], "embeddings": model.encode(job["texts"]).tolist()}
print(json.dumps(out))
"""
TEXTS = ["a good film with a moving script", "boring plot, awful actor"]


def task_model(arch: str, task: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of `task` in family `arch` (eager attention), in eval mode."""
    config = copy.deepcopy(tiny_model(arch).config)
    if task == "token-classification":
        config.num_labels = TOKEN_LABELS
    torch.manual_seed(seed)
    return getattr(transformers, TASKS[task].auto_class).from_config(config, attn_implementation="eager").eval()


def inputs(arch: str, seq_len: int = 10) -> dict[str, torch.Tensor]:
    """A batch of token ids and a mask with padding, without labels."""
    batch = tiny_batches(1, seq_len=seq_len, pad_id=pad_id(arch))[0]
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def task_batches(task: str, n: int = 2) -> list[dict[str, torch.Tensor]]:
    """Calibration batches carrying `task`'s labels: one class per text, per real token (-100 on padding), or the
    answer's start and end positions (inside the real tokens)."""
    batches = tiny_batches(n)
    g = torch.Generator().manual_seed(1)
    for b in batches:
        labels, mask = b.pop("labels"), b["attention_mask"]
        if task == "sequence-classification":
            b["labels"] = labels
        elif task == "token-classification":
            b["labels"] = torch.randint(0, TOKEN_LABELS, mask.shape, generator=g).masked_fill(mask == 0, IGNORED)
        elif task == "question-answering":
            lengths = mask.sum(1)
            b["start_positions"] = (torch.rand(len(lengths), generator=g) * (lengths - 1)).long()
            b["end_positions"] = b["start_positions"] + 1
    return batches


def outputs(model, batch: dict, task: str) -> list[torch.Tensor]:
    """The task's output tensors, the per-token ones at real tokens only (padding positions carry no output)."""
    with torch.no_grad():
        result = model(**batch)
    real = batch["attention_mask"].bool()
    return [result[name][real] if TASKS[task].per_token or not TASKS[task].head else result[name]
            for name in TASKS[task].outputs]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every case pruned by a random plan (an empty attention layer, an empty FFN layer): (dense, plan, slim,
    folder)."""
    root = tmp_path_factory.mktemp("tasks")
    made = {}
    for case in CASES:
        arch, task = case.split("|")
        dense = task_model(arch, task)
        plan = random_plan(dense, seed=1)
        slim = dc.prune(dense, plan)
        made[case] = (dense, plan, slim, dc.save_pretrained(slim, root / case.replace("|", "-"), plan=plan))
    return made


def test_every_task_module_has_its_test_entry_and_no_other_module_names_a_task_class():
    """A new task is one module and its case here; the package's code names no task's class suffix outside
    `tasks/` (docstrings and comments aside), so nothing assumes a sequence classifier by name."""
    assert set(TASKS) == {"sequence-classification", "token-classification", "question-answering", "embedding"}
    suffixes = [t.suffix for t in TASKS.values() if t.head] + list(REFUSED)
    for path in PACKAGE.rglob("*.py"):
        if "tasks" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named = [s for s in suffixes if s in node.value]
                assert not named, f"{path.relative_to(PACKAGE)}:{node.lineno} names {named[0]}"


@pytest.mark.parametrize("case", CASES)
def test_slim_computes_the_dense_task_outputs_and_saves_exactly(saved, case):
    arch, task = case.split("|")
    dense, plan, slim, folder = saved[case]
    batch = inputs(arch)
    want = outputs(zero_dropped_units(dense, plan), batch, task)
    got = outputs(slim, batch, task)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=TOL)
    back = dc.from_pretrained(folder, "eager")
    assert type(back).__name__ == type(dense).__name__ and model_task(back) is TASKS[task]
    for b, g in zip(outputs(back, batch, task), got):
        assert torch.equal(b, g)
    config = json.loads((folder / "config.json").read_text())
    stem = family(config).class_stem
    assert saved_task(config) is TASKS[task]
    assert config["auto_map"] == {auto: f"modeling_deepcuts_slim.DeepCuts{stem}{suffix}" for auto, suffix in
                                  {"AutoModel": "Model", TASKS[task].auto_class: TASKS[task].suffix}.items()}


@pytest.fixture(scope="module")
def sentence(tmp_path_factory):
    """The packaged MiniLM (a sentence-transformers folder: mean pooling, Normalize, max_seq_length 256) loaded as
    an embedding model, pruned and saved: (dense, slim, folder)."""
    dense = dc.load_model("minilm", task="embedding")
    slim = dc.prune(dense, random_plan(dense, seed=2))
    # no tokenizer given: it comes from the sentence-transformers folder
    return dense, slim, dc.save_pretrained(slim, tmp_path_factory.mktemp("sentence") / "slim")


@pytest.fixture(scope="module")
def child(saved, sentence, tmp_path_factory):
    """What the deepcuts-free interpreter computed for every STOCK case and the sentence-transformers folder (one
    subprocess for all)."""
    root = tmp_path_factory.mktemp("child")
    batch = inputs("bert")  # pad id 0; the PAD_ONE families only differ in what padding ids hold, masked anyway
    job = {"batch": {k: v.tolist() for k, v in batch.items()}, "sentence": str(sentence[2]), "texts": TEXTS,
           "cases": {case: [str(saved[case][3]), TASKS[case.split("|")[1]].auto_class,
                            list(TASKS[case.split("|")[1]].outputs)] for case in STOCK}}
    (root / "job.json").write_text(json.dumps(job))
    (root / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(root / "hf"), HF_MODULES_CACHE=str(root / "modules"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
    run = subprocess.run([sys.executable, str(root / "child.py"), str(root / "job.json")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), batch


@pytest.mark.parametrize("case", STOCK)
def test_stock_transformers_loads_the_task_through_its_auto_class(saved, child, case):
    results, batch = child
    arch, task = case.split("|")
    got = results[case]
    assert got["class"] == f"DeepCuts{family({'model_type': arch}).class_stem}{TASKS[task].suffix}"
    real = batch["attention_mask"].bool()
    for value, want in zip(got["outputs"], outputs(dc.from_pretrained(saved[case][3], "eager"), batch, task)):
        value = torch.tensor(value)
        value = value[real] if TASKS[task].per_token or not TASKS[task].head else value
        torch.testing.assert_close(value, want, rtol=0, atol=1e-6)


def save_dense(task: str, folder: Path, head: str | None = None) -> Path:
    """A dense BERT folder of `task` (or of the transformers class `head`) with the MiniLM tokenizer."""
    tokenizer = dc.load_tokenizer("minilm")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"],
                                     num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"],
                                     num_hidden_layers=TINY["layers"], max_position_embeddings=64,
                                     num_labels=TOKEN_LABELS if task == "token-classification" else 2)
    torch.manual_seed(0)
    cls = getattr(transformers, head or f"Bert{TASKS[task].suffix}")
    cls(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task", [t for t in TASKS if t != "sequence-classification"])
def test_loading_keeps_the_task_and_never_makes_a_sequence_classifier(task, tmp_path):
    folder = save_dense(task, tmp_path / "dense")
    loaded = [dc.load_model(str(folder), task=task)]
    if TASKS[task].head:  # its own head by default, in every loader
        loaded += [dc.load_model(str(folder)), dc.from_pretrained(folder)]
    for model in loaded:
        assert model_task(model) is TASKS[task] and not model.training
    reference = getattr(transformers, f"Bert{TASKS[task].suffix}").from_pretrained(folder).eval()
    batch = inputs("bert")
    for g, w in zip(outputs(dc.load_model(str(folder), task=task), batch, task), outputs(reference, batch, task)):
        assert torch.equal(g, w)  # the saved head itself, not a fresh one
    if TASKS[task].head:
        with pytest.raises(DeepCutsError, match=f"is a {task} model .*, not a sequence-classification one"):
            dc.load_model(str(folder), task="sequence-classification")
    encoder = dc.load_model(str(folder), task="embedding")  # any folder's encoder, its head left out
    assert model_task(encoder) is TASKS["embedding"]


def test_multiple_choice_is_refused_with_its_reason(tmp_path):
    folder = save_dense("sequence-classification", tmp_path / "mc", head="BertForMultipleChoice")
    for load in (lambda: dc.load_model(str(folder)), lambda: dc.from_pretrained(folder),
                 lambda: dc.load_model(str(folder), task="embedding")):
        with pytest.raises(DeepCutsError, match=r"\(BertForMultipleChoice\) is a multiple-choice model"):
            load()


def cli(argv: list, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*argv, "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_the_command_line_prunes_a_task_folder_with_its_head_and_refuses_text_labels(task, data_csv, tmp_path,
                                                                                      capsys):
    """`eval` reads one label per text, so it refuses another task's folder in one line; `prune` (auto: the texts'
    labels are not this task's, so distillation) writes a slim folder of the same task, never a classifier."""
    folder = save_dense(task, tmp_path / "dense")
    code, err = cli(["eval", "--model", str(folder), "--data", str(data_csv)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"is a {task} model" in err, err
    slim = tmp_path / "slim"
    code, err = cli(["prune", "--model", str(folder), "--data", str(data_csv), "--keep-flops", "0.5",
                     "--calibration-examples", "8", "--out", str(slim)], capsys)
    assert code == 0, err
    assert f"no {task} labels" in err and "distillation" in err
    config = json.loads((slim / "config.json").read_text())
    assert config["architectures"] == [f"Bert{TASKS[task].suffix}"]
    assert set(config["auto_map"]) == {"AutoModel", TASKS[task].auto_class}
    assert model_task(dc.from_pretrained(slim)) is TASKS[task]
    code, err = cli(["prune", "--model", str(folder), "--data", str(data_csv), "--keep-flops", "0.5",
                     "--calibration-examples", "8", "--objective", "labels", "--out", str(tmp_path / "no")], capsys)
    assert code == 2 and f"is a {task} model" in err and not (tmp_path / "no").exists(), err


@pytest.mark.parametrize("task", [t for t in TASKS if TASKS[t].head])
def test_the_labels_loss_is_the_task_heads_own_loss(task):
    """Objective "labels" differentiates exactly what transformers' head computes as its loss: cross-entropy per
    example, per labelled token (-100 skipped), or the mean of the start and end cross-entropies."""
    model = task_model("bert", task)
    batch = task_batches(task, 1)[0]
    objective = resolve_objective(model, [batch], "labels")
    model_inputs, labels = objective.split(batch)
    assert set(model_inputs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        loss = objective.loss(objective.outputs(model, model_inputs), labels, batch["input_ids"].shape[0])
        torch.testing.assert_close(loss, model(**batch).loss, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_distillation_draws_from_the_dense_softmax_of_each_real_token_or_position(task):
    """The sampled targets' loss gradient has the second moment of the exact Gauss-Newton matrix of the KL to the
    dense model, diag(p) - p p^T per drawn row over the copy's target count squared, and padding tokens take no
    target (token classification) so their outputs get no gradient."""
    model = task_model("bert", task)
    batch = task_batches(task, 1)[0]
    objective = Objective("distill", task=task)
    model_inputs, _ = objective.split(batch)
    with torch.no_grad():
        dense = objective.outputs(model, model_inputs).double()
    draws, n = 3000, dense.shape[0]
    mask = model_inputs["attention_mask"]
    repeated = dense.repeat(draws, *[1] * (dense.dim() - 1)).requires_grad_(True)
    targets = objective.targets(repeated, None, seed=3, batch=0, mask=mask.repeat(draws, 1))
    if task == "token-classification":
        assert torch.equal(targets == IGNORED, (mask == 0).repeat(draws, 1))
    grad, = torch.autograd.grad(objective.loss(repeated, targets, n), repeated)
    rows = grad.view(draws, -1, dense.shape[-1])  # (draws, rows of one copy, classes or positions)
    p = torch.softmax(dense, -1).reshape(-1, dense.shape[-1])
    real = (mask.reshape(-1) == 1) if task == "token-classification" else torch.ones(p.shape[0], dtype=torch.bool)
    count = int(real.sum())
    exact = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / count ** 2
    second = torch.einsum("dri,drj->rij", rows, rows) / draws
    assert torch.count_nonzero(second[~real]) == 0
    assert (second[real] - exact[real]).norm() / exact[real].norm() < 0.1


@pytest.mark.parametrize("case", [f"bert|{task}" for task in TASKS] + ["modernbert|token-classification",
                                                                        "modernbert|question-answering"])
def test_scores_go_through_the_tasks_outputs_with_labels_and_by_distillation(case, capsys):
    arch, task = case.split("|")
    model, batches = task_model(arch, task), task_batches(task)
    kw = dict(granularity="unit", progress=False, backend="torch", seed=2)
    for objective in (("auto", "distill") if TASKS[task].head else ("distill",)):
        scores = dc.score(model, batches, "cam-cut", objective=objective, **kw)
        units = scores.unit_scores()
        flat = torch.cat([*units["heads"], *units["neurons"]])
        assert torch.isfinite(flat).all() and (flat != 0).float().mean() > 0.9, objective
        described = scores.meta["objective"]
        if objective == "auto":
            assert described == "labels"
        elif TASKS[task].head:
            assert described == f"distill (dense model's {' and '.join(TASKS[task].outputs)})"
        else:
            assert described.startswith("distill (") and "embeddings" in described



def test_a_sentence_transformers_model_stays_one(sentence, child):
    """Pruned and saved, the MiniLM sentence-transformers model loads in sentence-transformers where deepcuts-fast
    cannot be imported, with its pooling, normalization and max_seq_length, and the slim model's embeddings."""
    from deepcuts_fast.scoring.objective import pool

    dense, slim, folder = sentence
    assert model_task(dense) is TASKS["embedding"]
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json"):
        assert (folder / name).is_file(), name
    got = child[0]["sentence"]
    assert got["class"] == "DeepCutsBertModel" and got["max_seq_length"] == 256
    assert got["modules"] == ["Transformer", "Pooling", "Normalize"]
    batch = dc.load_tokenizer(str(folder))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden, dense_hidden = slim(**batch).last_hidden_state, dense(**batch).last_hidden_state
    want = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)
    torch.testing.assert_close(torch.tensor(got["embeddings"]), want, rtol=0, atol=1e-5)
    assert not torch.allclose(want, torch.nn.functional.normalize(pool(dense_hidden, batch["attention_mask"], "mean"),
                                                                  dim=-1), atol=1e-3)  # the slim model, not the dense


@pytest.mark.parametrize("case", [f"bert|{task}" for task in TASKS] + ["modernbert|question-answering"])
def test_onnx_export_has_the_tasks_outputs(saved, case, tmp_path):
    """dc.export writes the task's outputs (logits, token logits, start and end logits, the mean-pooled embedding),
    with a dynamic sequence axis where they have one, and ONNX Runtime computes the slim model's values."""
    import onnxruntime

    from deepcuts_fast.scoring.objective import pool

    arch, task = case.split("|")
    slim = saved[case][2]
    result = dc.export(slim, tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(TASKS[task].graph_outputs)
    for seq_len in (10, 13):  # another length than the traced one: the sequence axis is dynamic
        batch = inputs(arch, seq_len)
        feeds = {name: batch.get(name, torch.zeros_like(batch["input_ids"])).numpy() for name in result.inputs}
        got = session.run(None, feeds)
        with torch.no_grad():
            out = slim(**batch)
        want = ([out[name] for name in TASKS[task].outputs] if TASKS[task].head
                else [pool(out.last_hidden_state, batch["attention_mask"], "mean")])
        if TASKS[task].token_axis:  # what the graph computes at padding is no output
            real = batch["attention_mask"].bool()
            got, want = [g[real.numpy()] for g in got], [w[real] for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def test_torch_export_program_returns_the_tasks_outputs(saved, tmp_path):
    """A QA model's program returns (start_logits, end_logits) (one-output tasks: test_slim_io's logits case)."""
    task = "question-answering"
    slim = saved[f"bert|{task}"][2]
    program = torch.export.load(str(dc.export_program(slim, tmp_path / "m.pt2"))).module()
    batch = inputs("bert", seq_len=7)
    got = program(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        want = [slim(**batch)[name] for name in TASKS[task].outputs]
    assert isinstance(got, tuple) and len(got) == len(want) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
