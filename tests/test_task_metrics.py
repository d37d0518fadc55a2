"""The metric of each task (`Task.metric`, `dc.evaluate`): entity-level F1 over BIO chunks for token
classification (checked by hand and against an independent chunker on random tags), token-span exact match and F1
for extractive QA (against a brute-force span search), both on tiny random models from their own outputs; the
refusals (embedding models; token / QA models on text files); and `deepcuts prune`'s held-out dense -> slim line."""
from __future__ import annotations

import copy
import json
import random
import re

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import TINY, split_csv, tiny_batches, tiny_model

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.tasks import IGNORED, TASKS, task_named
from deepcuts_fast.tasks.question_answering import MAX_ANSWER_LENGTH, best_span, span_f1
from deepcuts_fast.tasks.token_classification import entities, entity_scores, is_bio

BIO = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


# --- an independent reference: IOB2 chunks written another way ----------------------------------------------------


def reference_chunks(tags: list[str]) -> set[tuple[str, int, int]]:
    """IOB2 chunks found by scanning for starts: a B-X, or an I-X right after an O or after another type, starts a
    chunk of X that takes every following I-X."""
    chunks, i = set(), 0
    while i < len(tags):
        tag, kind = tags[i][0], tags[i][2:]
        previous = tags[i - 1] if i else "O"
        if tag == "B" or (tag == "I" and (previous == "O" or previous[2:] != kind)):
            j = i
            while j + 1 < len(tags) and tags[j + 1] == f"I-{kind}":
                j += 1
            chunks.add((kind, i, j))
            i = j + 1
        else:
            i += 1
    return chunks


def reference_f1(gold: list[list[str]], predicted: list[list[str]]) -> tuple[float, float, float]:
    """Micro precision, recall, F1 from the counts of matching chunks, row by row."""
    hits = sum(len(reference_chunks(g) & reference_chunks(p)) for g, p in zip(gold, predicted))
    n_gold = sum(len(reference_chunks(g)) for g in gold)
    n_pred = sum(len(reference_chunks(p)) for p in predicted)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    return precision, recall, (2 * hits / (n_gold + n_pred) if hits else 0.0)


# --- the chunker and entity F1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tags, want", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # an I- after O starts a chunk
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a change of type ends one
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    (["O", "O"], []),
    ([], []),
    (["O", "B-LOC", "I-LOC", "I-LOC"], [("LOC", 1, 3)]),  # closed at the end of the sequence
    (["B-MISC-X", "I-MISC-X"], [("MISC-X", 0, 1)]),  # a type may hold a hyphen
])
def test_entities_by_hand(tags, want):
    assert entities(tags) == want


def test_entity_f1_of_seqeval_s_own_example():
    """seqeval's README example: one of two gold entities found, one of two predicted right: P = R = F1 = 0.5."""
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predicted = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert entity_scores(gold, predicted) == {"f1": 0.5, "precision": 0.5, "recall": 0.5}
    assert entity_scores(gold, gold) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert entity_scores([["O"]], [["O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}  # nothing to find
    # chunks never run across sequences: the same tags in one sequence would make one chunk
    assert entity_scores([["B-PER"], ["I-PER"]], [["B-PER", "I-PER"], []])["f1"] == 0.0


def test_entities_and_f1_match_an_independent_chunker_on_random_tags():
    rng = random.Random(0)
    names = list(BIO.values())
    for _ in range(300):
        length = rng.randint(0, 12)
        tags = [rng.choice(names) for _ in range(length)]
        assert set(entities(tags)) == reference_chunks(tags), tags
        assert len(entities(tags)) == len(reference_chunks(tags))
    gold = [[rng.choice(names) for _ in range(rng.randint(1, 10))] for _ in range(40)]
    predicted = [[t if rng.random() < 0.7 else rng.choice(names) for t in row] for row in gold]
    got = entity_scores(gold, predicted)
    precision, recall, f1 = reference_f1(gold, predicted)
    assert 0 < f1 < 1
    assert got == pytest.approx({"precision": precision, "recall": recall, "f1": f1})


def test_only_chunk_tags_are_bio():
    assert is_bio(BIO.values()) and is_bio(["O", "B-X", "I-X", "E-X", "S-X"])
    assert not is_bio(["LABEL_0", "LABEL_1"]) and not is_bio(["NOUN", "VERB"]) and not is_bio(["O"])
    assert not is_bio(["O", "B-PER", "PER"])


# --- QA spans ----------------------------------------------------------------------------------------------------


def brute_force_span(start: list[float], end: list[float], real: list[bool], max_length: int) -> tuple[int, int]:
    """The first best (start, end) by trying every pair."""
    best, where = float("-inf"), (0, 0)
    for s in range(len(start)):
        for e in range(s, min(len(start), s + max_length)):
            if real[s] and real[e] and start[s] + end[e] > best:
                best, where = start[s] + end[e], (s, e)
    return where


def reference_span_f1(predicted: tuple[int, int], gold: tuple[int, int]) -> float:
    """Token-overlap F1 of the two position sets, an unanswerable (0, 0) span equal only to itself."""
    if (0, 0) in (predicted, gold):
        return float(predicted == gold)
    p, g = set(range(predicted[0], predicted[1] + 1)), set(range(gold[0], gold[1] + 1))
    common = len(p & g)
    return 0.0 if common == 0 else 2 * common / (len(p) + len(g))


def test_best_span_and_f1_match_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        tokens = int(torch.randint(2, 40, (1,), generator=g))
        start, end = torch.randn(tokens, generator=g), torch.randn(tokens, generator=g)
        real = torch.rand(tokens, generator=g) < 0.8
        real[0] = True
        length = [MAX_ANSWER_LENGTH, 1, 3][trial % 3]
        want = brute_force_span(start.tolist(), end.tolist(), real.tolist(), length)
        assert best_span(start, end, real, length) == want
        gold = tuple(sorted(torch.randint(0, tokens, (2,), generator=g).tolist()))
        assert span_f1(want, gold) == pytest.approx(reference_span_f1(want, gold))
    assert span_f1((3, 5), (4, 7)) == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))  # by hand: 4/7
    assert span_f1((0, 0), (0, 0)) == 1.0 and span_f1((0, 0), (1, 2)) == 0.0 and span_f1((2, 3), (5, 6)) == 0.0


# --- dc.evaluate on tiny models of each task ---------------------------------------------------------------------


def task_model(task: str, **config_changes) -> torch.nn.Module:
    """A tiny random BERT of `task`, in eval mode."""
    config = copy.deepcopy(tiny_model("bert").config)
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return getattr(transformers, TASKS[task].auto_class).from_config(config, attn_implementation="eager").eval()


def forward(model, batch: dict) -> dict:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def token_batches(model, seed: int = 0) -> list[dict]:
    """Batches whose token labels are the model's own predictions with a third of them changed, -100 on padding
    and on some real tokens (sub-word pieces), so the entity F1 is neither 0 nor 1."""
    g = torch.Generator().manual_seed(seed)
    batches = tiny_batches(3, batch_size=5, seq_len=12, seed=seed)
    for b in batches:
        guess = forward(model, b).logits.argmax(-1)
        noise = torch.randint(0, model.config.num_labels, guess.shape, generator=g)
        labels = torch.where(torch.rand(guess.shape, generator=g) < 0.35, noise, guess)
        unlabelled = (b["attention_mask"] == 0) | (torch.rand(guess.shape, generator=g) < 0.15)
        b["labels"] = labels.masked_fill(unlabelled, IGNORED)
    return batches


def test_evaluate_a_token_classifier_is_entity_f1_of_its_own_outputs():
    model = task_model("token-classification", num_labels=len(BIO), id2label=BIO,
                       label2id={v: k for k, v in BIO.items()})
    batches = token_batches(model)
    gold, predicted, correct, tokens, loss = [], [], 0, 0, 0.0
    for b in batches:
        logits = forward(model, b).logits
        for row_logits, row_labels in zip(logits, b["labels"]):
            keep = row_labels != IGNORED
            gold.append([BIO[int(i)] for i in row_labels[keep]])
            predicted.append([BIO[int(i)] for i in row_logits[keep].argmax(-1)])
            correct += int((row_logits[keep].argmax(-1) == row_labels[keep]).sum())
            tokens += int(keep.sum())
        with torch.no_grad():  # the head's own loss: the mean over the batch's labelled tokens
            loss += model(**b).loss.item() * int((b["labels"] != IGNORED).sum())
    precision, recall, f1 = reference_f1(gold, predicted)
    result = dc.evaluate(model, batches)
    assert result.task == "token-classification" and result.headline == "f1" and result.note is None
    assert 0 < f1 < 1 and result.score == pytest.approx(f1)
    assert result.metrics == pytest.approx({"f1": f1, "precision": precision, "recall": recall,
                                            "accuracy": correct / tokens})
    assert result.accuracy == pytest.approx(correct / tokens) and result.n == 15
    assert result.loss == pytest.approx(loss / tokens, rel=1e-5)
    assert result.mse is None and result.macro_f1 is None and result.predictions is None
    d = json.loads(json.dumps(result.to_dict()))
    assert d["f1"] == pytest.approx(f1) and d["precision"] == pytest.approx(precision) and "note" not in d


def test_labels_without_bio_tags_fall_back_to_token_accuracy_and_say_so():
    model = task_model("token-classification", num_labels=3)  # LABEL_0, LABEL_1, LABEL_2
    batches = token_batches(model, seed=1)
    result = dc.evaluate(model, batches)
    labelled = [(forward(model, b).logits.argmax(-1), b["labels"]) for b in batches]
    accuracy = (sum(int((g[lab != IGNORED] == lab[lab != IGNORED]).sum()) for g, lab in labelled)
                / sum(int((lab != IGNORED).sum()) for _, lab in labelled))
    assert result.headline == "accuracy" and set(result.metrics) == {"accuracy"}
    assert result.score == pytest.approx(accuracy)
    assert "not BIO tags" in result.note and "LABEL_0" in result.note and result.to_dict()["note"] == result.note


def test_token_labels_are_checked():
    model = task_model("token-classification", num_labels=len(BIO), id2label=BIO)
    batches = token_batches(model)
    with pytest.raises(DeepCutsError, match="not a class of the model's head"):
        dc.evaluate(model, [{**batches[0], "labels": batches[0]["labels"].clamp(min=0) + len(BIO)}])
    with pytest.raises(DeepCutsError, match="no token of the evaluation batches has a label"):
        dc.evaluate(model, [{**batches[0], "labels": torch.full_like(batches[0]["labels"], IGNORED)}])
    with pytest.raises(DeepCutsError, match=r"not shaped \(batch, tokens\)"):
        dc.evaluate(model, [{**batches[0], "labels": batches[0]["labels"][:, 0]}])


def qa_batches(model, seed: int = 0) -> list[dict]:
    """Batches whose gold spans are, for every other example, the model's own best span (an exact match) and
    otherwise a random span inside the real tokens (some of them (0, 0), unanswerable)."""
    g = torch.Generator().manual_seed(seed)
    batches = tiny_batches(3, batch_size=6, seq_len=14, seed=seed)
    for b in batches:
        b.pop("labels")
        out = forward(model, b)
        spans = []
        for row, mask in enumerate(b["attention_mask"]):
            length = int(mask.sum())
            own = brute_force_span(out.start_logits[row].tolist(), out.end_logits[row].tolist(), mask.bool().tolist(),
                                   MAX_ANSWER_LENGTH)
            other = tuple(sorted(torch.randint(0, length, (2,), generator=g).tolist()))
            spans.append(own if row % 2 == 0 else (0, 0) if row % 3 == 0 else other)
        b["start_positions"] = torch.tensor([s for s, _ in spans])
        b["end_positions"] = torch.tensor([e for _, e in spans])
    return batches


def test_evaluate_a_qa_model_is_span_exact_match_and_f1_of_its_own_outputs():
    model = task_model("question-answering")
    batches = qa_batches(model)
    exact, f1, n, loss = 0.0, 0.0, 0, 0.0
    for b in batches:
        out = forward(model, b)
        for row, mask in enumerate(b["attention_mask"]):
            predicted = brute_force_span(out.start_logits[row].tolist(), out.end_logits[row].tolist(),
                                         mask.bool().tolist(), MAX_ANSWER_LENGTH)
            gold = (int(b["start_positions"][row]), int(b["end_positions"][row]))
            exact += predicted == gold
            f1 += reference_span_f1(predicted, gold)
            n += 1
        with torch.no_grad():
            loss += model(**b).loss.item() * len(b["input_ids"])
    result = dc.evaluate(model, batches)
    assert result.task == "question-answering" and result.headline == "f1" and result.n == n == 18
    assert 0 < exact / n < 1 and exact / n < f1 / n < 1
    assert result.metrics == pytest.approx({"exact_match": exact / n, "f1": f1 / n})
    assert result.loss == pytest.approx(loss / n, rel=1e-5)
    assert result.accuracy is None and result.predictions is None
    assert result.to_dict()["exact_match"] == pytest.approx(exact / n)


def test_qa_positions_are_checked():
    model = task_model("question-answering")
    batch = qa_batches(model)[0]
    with pytest.raises(DeepCutsError, match="'start_positions' and 'end_positions' for a question-answering model"):
        dc.evaluate(model, [{k: v for k, v in batch.items() if k != "end_positions"}])
    with pytest.raises(DeepCutsError, match="outside the batch's 14 tokens"):
        dc.evaluate(model, [{**batch, "end_positions": batch["end_positions"] + 14}])
    with pytest.raises(DeepCutsError, match="end_position is before its start_position"):
        dc.evaluate(model, [{**batch, "start_positions": batch["end_positions"] + 1,
                             "end_positions": batch["end_positions"]}])


def test_a_sequence_classifier_keeps_its_accuracy_and_macro_f1():
    model, batches = tiny_model(num_labels=3), tiny_batches(2, num_labels=3)
    logits = torch.cat([forward(model, b).logits for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    result = dc.evaluate(model, batches)
    assert result.task == "sequence-classification" and result.headline == "accuracy"
    assert result.score == result.accuracy == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert set(result.metrics) == {"accuracy", "macro_f1"} and result.metrics["macro_f1"] == result.macro_f1
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_an_embedding_model_is_refused_with_what_measures_it():
    model = task_model("embedding")
    with pytest.raises(DeepCutsError, match=r"no metric for embedding models.*dc\.evaluate_embeddings.*--baseline"):
        dc.evaluate(model, tiny_batches(1))


def test_every_task_with_a_head_has_a_metric_and_one_without_says_what_measures_it():
    for task in TASKS.values():
        assert (task.metric is not None) == task.head
        assert task.metric is not None or task.unmeasured
    assert task_named("embedding").metric is None


# --- the command line --------------------------------------------------------------------------------------------


def run(argv: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def save_task_folder(task: str, folder, initializer_range: float = 0.02):
    """A tiny BERT folder of `task` with the MiniLM tokenizer (weights drawn with std `initializer_range`: a large
    one makes outputs that depend on the texts and change when units are pruned)."""
    tokenizer = dc.load_tokenizer("minilm")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"],
                                     num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"],
                                     num_hidden_layers=TINY["layers"], max_position_embeddings=64,
                                     initializer_range=initializer_range)
    torch.manual_seed(0)
    getattr(transformers, f"Bert{TASKS[task].suffix}")(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task, keys", [("token-classification", '"tokens"'), ("question-answering", '"answers"')])
def test_eval_of_a_token_or_qa_folder_on_a_text_file_says_what_to_use(task, keys, data_csv, tmp_path, capsys):
    folder = save_task_folder(task, tmp_path / "dense")
    code, out, err = run(["eval", "--model", str(folder), "--data", str(data_csv), "--quiet"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"is a {task} model" in err and "docs/data.md" in err and keys in err  # the file it needs


@pytest.fixture(scope="module")
def split_data(data_csv, tmp_path_factory):
    """A folder with train.csv (the tiny CSV's first 14 rows) and test.csv (its last 10)."""
    folder = tmp_path_factory.mktemp("splits")
    return folder, split_csv(data_csv, folder, 14)


def one_by_one(model, tokenizer, rows: list) -> tuple[float, float]:
    """Accuracy and mean cross-entropy from one unpadded forward per text."""
    right, loss = 0, 0.0
    for text, label in rows:
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits
        right += int(logits.argmax(-1).item() == int(label))
        loss += F.cross_entropy(logits, torch.tensor([int(label)])).item()
    return right / len(rows), loss / len(rows)


def test_prune_prints_the_held_out_metric_of_the_dense_and_the_slim_model(split_data, tmp_path, capsys):
    folder, test_rows = split_data
    model_dir = save_task_folder("sequence-classification", tmp_path / "dense", initializer_range=0.5)
    out = tmp_path / "slim"
    code, stdout, err = run(["prune", "--model", str(model_dir), "--data", str(folder), "--keep-flops", "0.4",
                             "--calibration-examples", "14", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    line = next(x for x in stdout.splitlines() if x.startswith("held-out"))
    found = re.fullmatch(r"held-out accuracy: dense (\S+) -> slim (\S+) \(([-+]\d+\.\d\d) pt\) on 10 examples of "
                         r"'test'", line)
    assert found, line
    tokenizer = dc.load_tokenizer(str(model_dir))
    (dense, dense_loss), (slim, slim_loss) = (one_by_one(dc.from_pretrained(path), tokenizer, test_rows)
                                              for path in (model_dir, out))
    assert float(found[1]) == pytest.approx(dense, abs=1e-4) and float(found[2]) == pytest.approx(slim, abs=1e-4)
    assert float(found[3]) == pytest.approx(100 * (slim - dense), abs=0.01)

    code, stdout, _ = run(["prune", "--model", str(model_dir), "--data", str(folder), "--keep-flops", "0.4",
                           "--calibration-examples", "14", "--out", str(out), "--overwrite", "--quiet", "--json"],
                          capsys)
    held_out = json.loads(stdout)["held_out"]
    assert held_out["split"] == "test" and held_out["n"] == 10 and held_out["metric"] == "accuracy"
    assert held_out["dense"] == pytest.approx(dense) and held_out["slim"] == pytest.approx(slim)
    assert held_out["dtype"] == "fp32" and held_out["slim_metrics"]["macro_f1"] is not None
    assert abs(dense_loss - slim_loss) > 1e-3  # the two models tell apart
    assert held_out["dense_metrics"]["loss"] == pytest.approx(dense_loss, rel=1e-4)
    assert held_out["slim_metrics"]["loss"] == pytest.approx(slim_loss, rel=1e-4)


def test_prune_says_why_it_has_no_held_out_metric(model_dir, data_csv, split_data, tmp_path, capsys):
    code, stdout, err = run(["prune", "--model", str(model_dir), "--data", str(data_csv), "--keep-flops", "0.5",
                             "--calibration-examples", "8", "--out", str(tmp_path / "one-file"), "--quiet"], capsys)
    assert code == 0, err
    skipped = [x for x in stdout.splitlines() if x.startswith("held-out")]
    assert len(skipped) == 1 and "skipped" in skipped[0] and "no held-out split" in skipped[0]
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    with open(split_data[0] / "train.csv", newline="") as f:
        (unlabelled / "train.csv").write_text(f.read())
    (unlabelled / "test.txt").write_text("a good film\nboring plot\n")
    code, stdout, err = run(["prune", "--model", str(model_dir), "--data", str(unlabelled), "--keep-flops", "0.5",
                             "--calibration-examples", "8", "--out", str(tmp_path / "unlabelled-out"), "--quiet",
                             "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["held_out"] == {"split": "test", "skipped": "the 'test' split of --data has no labels"}
