"""The main job (`deepcuts run`) end to end on a tiny encoder and a tiny CSV: every artefact, the
results.json schema, resuming, and the analysis and goal logic on known inputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.job import analysis
from deepcuts_fast.job.goals import quality_goals, verdicts
from deepcuts_fast.job.pipeline_summary import pipeline_summary
from deepcuts_fast.hashing import model_fingerprint
from deepcuts_fast.job.steps import StepStore
from conftest import TINY, sentence_transformers_files, tiny_model

TOP_KEYS = {"version", "machine", "settings", "dense", "scoring_seconds", "paper_mode", "paper_recovery",
            "paper_rewind", "structured_mode", "latency", "structured_recovery", "mask_analysis", "goals",
            "verdicts", "steps", "wall_seconds", "retraining_free", "retraining_free_summary", "precision",
            "deployment", "comparisons", "embedding"}
CRITERIA = ["magnitude", "gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut",
            "smooth-cam-cut-shift", "random"]


@pytest.fixture(scope="module")
def full_run(encoder_dir, data_csv, tmp_path_factory):
    """`deepcuts run` (the full grid) on a bare tiny encoder, which the job fine-tunes first."""
    out = tmp_path_factory.mktemp("run") / "full"
    cache = tmp_path_factory.mktemp("cache")
    argv = ["run", "--model", str(encoder_dir), "--data", str(data_csv), "--out", str(out), "--batch-size", "4",
            "--calibration-batches", "2", "--pipeline-examples", "16", "--latency-batch", "2", "--latency-seq", "16",
            "--quiet", "--json"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPCUTS_CACHE", str(cache))
        assert main(argv) == 0
    return out, argv, cache


def test_full_run_writes_every_artefact(full_run):
    out, _, _ = full_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= TOP_KEYS
    assert results["settings"]["criteria"] == CRITERIA and results["settings"]["model_can_rewind"]
    assert {(r["criterion"], r["compression"]) for r in results["paper_mode"]} == {
        (c, x) for c in CRITERIA for x in (2.0, 3.0, 3.5, 4.0)}
    assert {(r["criterion"], r["compression"]) for r in results["paper_recovery"]} == {
        (c, 4.0) for c in ("magnitude", "gradient", "cam-cut", "smooth-cut")}
    assert [(r["criterion"], r["compression"]) for r in results["paper_rewind"]] == [("cam-cut", 4.0)]
    assert {(r["criterion"], r["keep_flops"]) for r in results["structured_mode"]} == {
        (c, k) for c in CRITERIA for k in (0.75, 0.5, 0.33)}
    for r in results["structured_mode"]:
        assert 0 <= r["output_error_reconstructed"] < r["output_error"]  # the refit really reached the model
        assert r["speedup_fp32"] > 0 and r["flop_ratio"] >= 1 / r["keep_flops"] - 1e-6
        assert dc.Plan.from_dict(r["plan"]).heads is not None
    for r in results["paper_mode"] + results["paper_recovery"] + results["paper_rewind"]:
        assert 0 <= r["accuracy"] <= 1
    # conftest pins "auto" to fp32, so the native-dtype latency row is fp32 too and is not repeated
    assert set(results["latency"]) == {"fp32"}
    assert {p["dtype"] for step, p in results["precision"].items() if step != "latency"} == {"fp32"}
    assert all(p["reason"] for p in results["precision"].values())
    assert [g["met"] in (True, False) for g in results["goals"]] == [True] * 6  # every goal was measured
    criteria = ("fisher", "cam-cut", "smooth-cut", "gradient", "magnitude")
    # one-shot: every criterion; iterative (output error): once, as Fisher; iterative-criterion: Cam-Cut
    pipeline = (*criteria, "fisher (iterative)", "cam-cut (iterative-criterion)")
    assert sorted((r["criterion"], r["keep_flops"], r["seed"]) for r in results["retraining_free"]) == sorted(
        (c, k, s) for c in pipeline for k in (0.5, 0.33, 0.25) for s in (0, 1, 2))
    for r in results["retraining_free"]:
        assert 0 <= r["accuracy"] <= 1 and r["flop_ratio"] >= 1 / r["keep_flops"] - 1e-6 and r["timings"]["total"] > 0
        assert r["score_seconds"] > 0 and r["calibration_examples"] == 16  # --pipeline-examples of the 24
        assert r["plan"]["target"].get("selection") == {"one-shot": None, "iterative": "output",
                                                        "iterative-criterion": "criterion"}[r["method"]]
    plans = {s: dc.Plan.from_dict(next(r["plan"] for r in results["retraining_free"]
                                       if (r["criterion"], r["keep_flops"], r["seed"]) == ("fisher", 0.5, s)))
             for s in (0, 1, 2)}
    assert len({str((p.heads, p.neurons)) for p in plans.values()}) > 1  # the draws really differ
    summary = results["retraining_free_summary"]
    assert [(e["keep_flops"], e["criterion"]) for e in summary] == [(k, c) for k in (0.5, 0.33, 0.25) for c in pipeline]
    for e in summary:
        accs = [r["accuracy"] for r in results["retraining_free"]
                if (r["keep_flops"], r["criterion"]) == (e["keep_flops"], e["criterion"])]
        assert e["draws"] == 3 and e["accuracy_mean"] == pytest.approx(sum(accs) / 3)
        iterative = e["criterion"].endswith(")")
        base = e["criterion"].split(" (")[0]
        fisher, one_shot = e["vs_fisher"], e["vs_one_shot"]
        assert (fisher is None) == (base == "fisher") and (one_shot is None) == (not iterative)
        if fisher is not None:  # against Fisher of the same method, pooled over the same three draws
            assert (fisher["a"], fisher["b"]) == (e["criterion"], "fisher (iterative)" if iterative else "fisher")
            assert fisher["draws"] == [3, 3] and fisher["value_a"] == pytest.approx(e["accuracy_mean"])
        if one_shot is not None:
            assert (one_shot["a"], one_shot["b"], one_shot["draws"]) == (e["criterion"], base, [3, 3])
    assert sum(e["winner"] for e in summary) == 3
    assert all(results["verdicts"][k] for k in ("paper_mode", "structured_mode", "structured_mode_reconstructed"))
    iou = results["mask_analysis"]
    assert len(iou["weight_iou_matrix"]) == len(CRITERIA) and iou["plan_iou_matrix"] is not None
    report = (out / "report.md").read_text()
    for heading in ("## Paper mode", "## Structured mode", "## Quality goals", "## Mask analysis", "## Plots"):
        assert heading in report
    for png in ("paper_accuracy.png", "structured_speedup.png", "kept_units.png", "mask_iou.png", "plan_iou.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in report
    assert [r["epochs"] for r in results["structured_recovery"]] == [0.0, 1.0, 0.0]  # fine-tuned at 0.5 only
    for r in results["structured_recovery"]:
        slim = dc.from_pretrained(out / r["saved_to"])
        assert sum(p.numel() for p in slim.parameters()) < sum(
            p.numel() for p in dc.from_pretrained(out / "slim-keep0.75").parameters()) or r["keep_flops"] == 0.75
    deploy = results["deployment"]
    assert (deploy["keep_flops"], deploy["folder"]) == (0.5, "slim-keep0.5")
    by = {r["variant"]: r for r in deploy["rows"]}
    assert {f"{m} {v}" for m in ("dense", "slim") for v in ("torch fp32", "ORT fp32", "ORT int8")} <= set(by)
    best = min((r for r in by.values() if r["model"] == "dense"), key=lambda r: r["median_ms"])
    assert all(r["best_dense"] == best["variant"] for r in by.values())
    assert all(r["median_ms"] > 0 and r["batch"] == 2 and 0 <= r["accuracy"] <= 1 for r in by.values())
    assert by["dense torch fp32"]["speedup"] == 1.0 and by["slim ORT int8"]["size_mib"] < by["dense ORT int8"]["size_mib"]
    assert by["slim torch fp32"]["accuracy"] == results["structured_recovery"][1]["accuracy"]
    for model in ("dense", "slim"):  # the fp32 ONNX file gives torch's predictions (one borderline example at most)
        assert abs(by[f"{model} ORT fp32"]["accuracy"] - by[f"{model} torch fp32"]["accuracy"]) <= 1 / results["dense"]["n"]
    assert "## Deployment" in report and "| slim ORT int8 |" in report and f"Fastest dense: **{best['variant']}**" in report
    assert not list(out.glob(".*tmp*")) and not list((out / "steps").glob(".*"))


def documented_keys() -> dict[str, set[str]]:
    """Section title -> the keys its table in docs/results-json.md lists."""
    doc = (Path(__file__).parents[1] / "docs" / "results-json.md").read_text()
    sections = {}
    for block in doc.split("\n## ")[1:]:
        title, body = block.split("\n", 1)
        sections[title.strip()] = set(re.findall(r"^\| `([^`]+)` \|", body, flags=re.M))
    return sections


def test_results_json_has_the_documented_schema(full_run):
    results = json.loads((full_run[0] / "results.json").read_text())
    keys = documented_keys()
    assert set(results) == keys["Top level"]
    for section, rows in (("`paper_mode` rows", results["paper_mode"]),
                          ("`paper_recovery` and `paper_rewind` rows", results["paper_recovery"] + results["paper_rewind"]),
                          ("`structured_mode` rows", results["structured_mode"])):
        assert rows and all(keys[section] <= set(r) for r in rows), section
    assert keys["`mask_analysis`"] == set(results["mask_analysis"])
    assert results["comparisons"] and all(keys["`comparisons` entries"] == set(c) for c in results["comparisons"])
    n = results["dense"]["n"]
    assert len(results["dense"]["labels"]) == n and all(len(r["predictions"]) == n for r in results["paper_mode"])
    validation = {"validation_accuracy", "validation_accuracy_mean"}  # only where the data has a validation split
    for section, rows in (("`retraining_free` rows", results["retraining_free"]),
                          ("`retraining_free_summary` entries", results["retraining_free_summary"])):
        assert rows and all(keys[section] <= set(r) and set(r) - keys[section] <= validation for r in rows), section


def test_a_model_that_is_not_a_sentence_model_skips_the_embedding_section(full_run):
    """The tiny encoder has no sentence-transformers files: the section is one skipped line, as it is for a model
    given with a task head and with --no-embedding."""
    from deepcuts_fast.cli.app import build_parser
    from deepcuts_fast.cli.run import _config
    from deepcuts_fast.job.embedding_mode import skip_reason

    out, argv, _ = full_run
    skipped = json.loads((out / "results.json").read_text())["embedding"]["skipped"]
    assert "is not a sentence-embedding model" in skipped and "modules.json" in skipped
    report = (out / "report.md").read_text()
    assert f"## Sentence embeddings (label-free)\n\nSkipped: {skipped}.\n" in report
    assert "task head" in skip_reason(None, (0.5,))
    config = _config(build_parser().parse_args([*argv, "--no-embedding"]))
    assert config.embedding_keep_flops == () and "--no-embedding" in skip_reason("minilm", config.embedding_keep_flops)


def _sentence_folder(folder: Path) -> Path:
    """A tiny sentence-transformers-like folder: a bare BertModel with the MiniLM tokenizer, modules.json (Transformer,
    Pooling, Normalize) and 1_Pooling/config.json (mean pooling). Its weights are drawn wide (std 0.5), so that its
    attention and FFN units, not the embeddings alone, make its output, and pruning them moves it visibly."""
    from transformers import BertConfig, BertModel

    tokenizer = dc.load_tokenizer("minilm")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                     intermediate_size=TINY["ffn"], num_hidden_layers=TINY["layers"], max_position_embeddings=64,
                     initializer_range=0.5)
    BertModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sentence_transformers_files(folder, {"pooling_mode_mean_tokens": True})


def test_embedding_section_prunes_the_sentence_model_as_given(data_csv, tmp_path):
    """A sentence-transformers base model is pruned label-free at two budgets from one scoring pass and measured
    against itself on the test texts; the keep-0.5 slim model is saved with the sentence-transformers files; a rerun
    reuses every step; the report has the section."""
    from deepcuts_fast.data import encode_labels, load_dataset, make_batches
    from deepcuts_fast.job import JobConfig, MainJob, report
    from deepcuts_fast.job.held_out import HeldOut
    from deepcuts_fast.task import TaskModel

    base = _sentence_folder(tmp_path / "sentence")
    tokenizer = dc.load_tokenizer(str(base))
    classifier = dc.load_model(str(base))  # stands for the classifier the job fine-tunes from the base model
    task = TaskModel(classifier, tokenizer, base=str(base), data=str(data_csv))
    data = encode_labels(load_dataset(str(data_csv), "train"), classifier.config)
    draw = lambda seed, n: make_batches(data, tokenizer, batch_size=4, max_length=16, shuffle=True,  # noqa: E731
                                        seed=seed, limit=n)
    evaluation = HeldOut(test=make_batches(data, tokenizer, batch_size=8, max_length=16))
    config = JobConfig.quick(batch_size=4, calibration_batches=2, latency_batch=2, latency_seq=16, latency_repeats=2,
                             embedding_examples=16, embedding_keep_flops=(0.5, 0.33))
    job = MainJob(task, draw, evaluation, config, tmp_path / "run", "tiny", progress=False, log=lambda m: None)
    section = job.embedding()

    keys = documented_keys()
    assert set(section) == keys["`embedding`"] and all(set(r) == keys["`embedding` rows"] for r in section["rows"])
    assert (section["pooling"], section["normalize"], section["probe_skipped"]) == ("mean", True, None)
    assert section["calibration_examples"] == 16 and section["test_examples"] == 24
    rows = section["rows"]
    assert [(r["keep_flops"], r["method"], r["objective"].startswith("distill")) for r in rows] == [
        (0.5, "iterative", True), (0.33, "iterative", True)]
    for r in rows:
        assert -1 <= r["cosine_min"] <= r["cosine"] < 0.999  # real embeddings of a model that moved, not a copy
        assert 0 <= r["overlap"] <= 1 and r["k"] == 10 and r["flop_ratio"] >= 1 / r["keep_flops"] - 1e-6
        probe = r["probe"]
        assert probe["n"] == 24 and 0 <= probe["p"] <= 1 and probe["ci_low"] <= probe["diff"] <= probe["ci_high"]
        assert probe["diff"] == pytest.approx(probe["value_a"] - probe["value_b"], abs=1e-6)
        assert r["dense_ms"] > 0 and r["speedup"] == pytest.approx(r["dense_ms"] / r["slim_ms"], rel=1e-6)
        assert r["score_seconds"] == rows[0]["score_seconds"] > 0 and r["timings"]["score"] == 0  # one shared pass
    assert rows[0]["cosine"] != rows[1]["cosine"] and sum(rows[1]["ffn"]) < sum(rows[0]["ffn"])
    goals = section["goals"]
    assert [(g["name"], g["keep_flops"]) for g in goals] == [("cosine", 0.5), ("NN@10", 0.5), ("probe", 0.5)]
    assert [g["measured"] for g in goals] == [round(rows[0]["cosine"], 4), round(rows[0]["overlap"], 4),
                                             round(rows[0]["probe"]["diff"], 4)]
    assert [g["met"] for g in goals] == [rows[0]["cosine"] >= 0.95, rows[0]["overlap"] >= 0.7,
                                         rows[0]["probe"]["diff"] >= -0.01]
    saved = tmp_path / "run" / rows[0]["saved_to"]
    assert rows[1]["saved_to"] is None and (saved / "modules.json").is_file()
    assert (saved / "1_Pooling" / "config.json").is_file()
    assert sum(p.numel() for p in dc.from_pretrained(saved).parameters()) == rows[0]["params"]

    again = MainJob(task, draw, evaluation, config, tmp_path / "run", "tiny", progress=False, log=lambda m: None)
    assert again.embedding() == section and again.store.reused == ["embedding-k0.5", "embedding-k0.33",
                                                                   "embedding-latency"]
    text = "\n".join(report._embedding_section(
        {"settings": {**config.to_dict(), "seq_len_flops": job.seq_len}, "embedding": section}))
    assert "## Sentence embeddings (label-free)" in text and f"base model `{base}` as given" in text
    first = rows[0]
    assert f"| 0.5 | iterative | {first['cosine']:.4f} | {first['cosine_min']:.4f} | {first['overlap']:.4f} |" in text
    verdict = "PASS" if goals[0]["met"] else "MISS"
    assert f"| cosine {verdict}, NN@10 " in text and "saved as `embedding-keep0.5`" in text


def test_rerun_reuses_every_finished_step(full_run, capsys):
    out, argv, cache = full_run
    before = json.loads((out / "results.json").read_text())
    (out / "steps" / "paper-cam-cut-c3.json").unlink()  # as if the first run stopped before this step
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPCUTS_CACHE", str(cache))
        assert main(argv) == 0
    capsys.readouterr()
    after = json.loads((out / "results.json").read_text())
    assert after["steps"]["computed"] == ["paper-cam-cut-c3"]
    assert len(after["steps"]["reused"]) == len(before["steps"]["computed"]) - 1
    for key in ("dense", "paper_mode", "paper_recovery", "paper_rewind", "structured_mode", "deployment", "retraining_free",
                "retraining_free_summary", "embedding", "mask_analysis"):
        assert after[key] == before[key]


def test_step_store_recomputes_when_what_it_depends_on_changes(tmp_path):
    calls = []
    code = ("deepcuts_fast.errors",)  # tests/test_steps.py checks how the code a step declares keys it
    store = StepStore(tmp_path, {"model": "a"}, log=lambda m: None)
    assert store.run("x", lambda: calls.append(1) or {"v": 1}, code=code, k=1) == {"v": 1}
    assert store.run("x", lambda: calls.append(1) or {"v": 2}, code=code, k=1) == {"v": 1} and len(calls) == 1
    assert store.run("x", lambda: calls.append(1) or {"v": 3}, code=code, k=2) == {"v": 3} and len(calls) == 2
    other = StepStore(tmp_path, {"model": "b"}, log=lambda m: None)
    assert other.run("x", lambda: {"v": 4}, code=code, k=2) == {"v": 4}
    (tmp_path / "steps" / "x.json").write_text("{half")  # a corrupt step file is recomputed, not trusted
    assert other.run("x", lambda: {"v": 5}, code=code, k=2) == {"v": 5}


def test_model_fingerprint_sees_a_single_changed_weight():
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.bert.encoder.layer[1].output.dense.weight[3, 4] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)


def test_weight_mask_iou_matches_set_arithmetic():
    model = tiny_model()
    layout = dc.score(model, None, "magnitude").layout
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    names = [f"{layer.names[r]}.{k}" for layer in layout for r in layer.names for k in ("weight", "bias")]
    masks = {c: {n: torch.rand(params[n].shape, generator=g) > p for n in names}
             for c, p in (("a", 0.3), ("b", 0.6), ("c", 0.5))}
    masks["same"] = {n: m.clone() for n, m in masks["a"].items()}
    got = analysis.weight_mask_iou(masks, layout)
    for i, layer in enumerate(layout):
        mine = [n for n in names if n.startswith(layer.names["query"].rsplit(".attention", 1)[0] + ".")]
        kept = {c: {(n, j) for n in mine for j in torch.nonzero(masks[c][n].reshape(-1)).flatten().tolist()}
                for c in masks}
        assert got["a|b"][i] == pytest.approx(len(kept["a"] & kept["b"]) / len(kept["a"] | kept["b"]))
        assert got["a|same"][i] == 1.0
    matrix = analysis.mean_matrix(got, list(masks))
    assert matrix[0][1] == matrix[1][0] == pytest.approx(sum(got["a|b"]) / len(layout)) and matrix[2][2] == 1.0


def test_plan_iou_counts_heads_and_neurons_per_layer():
    p1 = {"heads": [[0, 1], []], "neurons": [[0, 2], [1]], "num_heads": [4, 4], "ffn_widths": [3, 3]}
    p2 = {"heads": [[1], [2]], "neurons": [[2], [1, 2]], "num_heads": [4, 4], "ffn_widths": [3, 3]}
    got = analysis.plan_iou({"x": p1, "y": p2})
    assert got["x|y"] == [pytest.approx(2 / 4), pytest.approx(1 / 3)]


def _results(dense, single, refit, recovered=None):
    rows = [{"criterion": c, "keep_flops": 0.5, "accuracy": a, "accuracy_reconstructed": r}
            for c, a, r in zip(("magnitude", "gradient", "cam-cut"), single, refit)]
    rec = [] if recovered is None else [{"criterion": "cam-cut", "keep_flops": 0.5, "epochs": 1.0, "accuracy": recovered}]
    paper = [{"criterion": c, "compression": x, "accuracy": a}
             for x, accs in ((2.0, (0.80, 0.75, 0.77)), (4.0, (0.70, 0.60, 0.72)))
             for c, a in zip(("magnitude", "gradient", "cam-cut"), accs)]
    return {"dense": {"accuracy": dense}, "structured_mode": rows, "structured_recovery": rec, "paper_mode": paper}


def test_quality_goals_are_judged_from_the_numbers():
    results = _results(0.81, (0.70, 0.72, 0.79), (0.75, 0.76, 0.80), recovered=0.805)
    rows = [{"criterion": c, "keep_flops": k, "seed": s, "accuracy": a}
            for c, k, accs in (("fisher", 0.5, (0.808, 0.807, 0.806)), ("cam-cut", 0.5, (0.813, 0.78, 0.78)),
                               ("fisher", 0.33, (0.799, 0.795, 0.80)))
            for s, a in enumerate(accs)]
    results["retraining_free_summary"] = pipeline_summary(rows, 0.81)
    goals = quality_goals(results)
    assert [g["met"] for g in goals] == [True, True, True, True, True, False]  # 0.5: <= 0.4 points; 0.33: <= 1
    assert goals[4]["measured"] == pytest.approx(0.81 - 0.807, abs=1e-4)  # fisher: best mean, not best draw
    assert "fisher" in goals[4]["detail"] and "worst draw 0.40 points below" in goals[4]["detail"]
    assert goals[5]["measured"] == pytest.approx(0.81 - (0.799 + 0.795 + 0.80) / 3, abs=1e-4)
    goals = quality_goals(_results(0.81, (0.70, 0.72, 0.74), (0.75, 0.76, 0.78)))
    assert [g["met"] for g in goals] == [False, True, False, None, None, None]
    assert goals[0]["measured"] == pytest.approx(0.07)


def test_pipeline_summary_averages_over_draws_and_names_one_winner_per_budget():
    rows = [{"criterion": c, "keep_flops": 0.5, "seed": s, "accuracy": a}
            for c, accs in (("a", (0.7, 0.8)), ("b", (0.75, 0.75)), ("c", (0.6, 0.9))) for s, a in enumerate(accs)]
    summary = pipeline_summary(rows, dense=0.8)
    assert [(e["criterion"], e["draws"], e["seeds"]) for e in summary] == [("a", 2, [0, 1]), ("b", 2, [0, 1]),
                                                                          ("c", 2, [0, 1])]
    assert [e["accuracy_mean"] for e in summary] == pytest.approx([0.75, 0.75, 0.75])
    assert [e["winner"] for e in summary] == [True, False, False]  # a tie goes to the first criterion
    assert (summary[2]["accuracy_min"], summary[2]["accuracy_max"]) == (0.6, 0.9)
    assert summary[0]["drop_points_mean"] == pytest.approx(5.0)


def test_comparisons_carry_intervals_and_name_a_winner_only_when_significant():
    """1,000 examples, all of class 0; each model is wrong on the first k of them, so every discordant pair favours
    the model with the smaller k, and the p-values are binomial tails: 10 discordant pairs give p = 2 / 2^10."""
    from deepcuts_fast.job import report
    from deepcuts_fast.job.significance import comparisons
    from deepcuts_fast.stats import encode_ids

    n = 1000

    def row(wrong: int, **fields) -> dict:
        pred = [1] * wrong + [0] * (n - wrong)
        return {"accuracy": 1 - wrong / n, "macro_f1": 0.5, "predictions": encode_ids(pred), **fields}

    dense = {**row(100), "labels": "0" * n, "n": n}
    paper = [row(w, criterion=c, compression=x) for x, ws in ((2.0, (140, 150)), (4.0, (152, 150)))
             for c, w in zip(("magnitude", "cam-cut"), ws)]
    structured = [{**row(w, criterion=c, keep_flops=0.5),
                   **{f"{k}_reconstructed": v for k, v in row(r).items()}}
                  for c, w, r in (("magnitude", 300, 200), ("gradient", 120, 118), ("cam-cut", 110, 105))]
    pipeline = [row(w, criterion=c, keep_flops=0.5, seed=s)
                for c, ws in (("fisher", (100, 102)), ("cam-cut", (200, 210))) for s, w in enumerate(ws)]
    results = {"dense": dense, "paper_mode": paper, "structured_mode": structured, "structured_recovery": [],
               "retraining_free": pipeline}
    results["retraining_free_summary"] = summary = pipeline_summary(pipeline, dense)
    fisher, cam = summary
    assert fisher["winner"] and fisher["drop_points_mean"] == pytest.approx(0.1)
    assert fisher["p_vs_dense"] == 0.5 and fisher["drop_points_ci"][0] <= 0.1 <= fisher["drop_points_ci"][1]
    assert cam["p_vs_dense"] < 1e-6 and cam["drop_points_ci"][0] > 5 and cam["macro_f1_mean"] == 0.5

    v = verdicts(results)
    assert v["paper_mode"].startswith("Does not hold here") and "Tie (no significant difference) at 4" in v["paper_mode"]
    assert "baseline is significantly better at 2" in v["paper_mode"] and ": magnitude)" in v["paper_mode"]
    assert v["structured_mode"].startswith("Holds: a DeepCuts criterion is significantly better")
    assert "cam-cut 0.8900 vs gradient 0.8800 (+0.0100, 95% CI [" in v["structured_mode"]
    assert v["structured_mode_reconstructed"].startswith("Holds:")  # cam-cut vs gradient: 13 pairs, p = 2 / 2^13
    results["comparisons"] = cmps = comparisons(results)
    by = {(c["section"], c["setting"], c["what"]): c for c in cmps}
    single = by[("structured_mode", "keep_flops 0.5", "best DeepCuts vs best baseline, single shot")]
    assert (single["a"], single["b"], single["verdict"]) == ("cam-cut", "gradient", "cam-cut")
    assert single["p"] == pytest.approx(2 / 2 ** 10, rel=1e-3) and 0 < single["ci_low"] < 0.01 < single["ci_high"]
    refit = by[("structured_mode", "keep_flops 0.5", "cam-cut reconstructed vs dense")]
    assert refit["verdict"] == "tie" and refit["p"] == pytest.approx(2 / 2 ** 5)  # 5 discordant pairs
    runner = by[("retraining_free", "keep_flops 0.5", "chosen criterion vs runner-up (pooled over draws)")]
    assert (runner["verdict"], runner["draws"], runner["diff"]) == ("fisher", [2, 2], pytest.approx(0.104))
    goals = quality_goals(results)
    assert goals[0]["ci"][0] <= goals[0]["measured"] <= goals[0]["ci"][1] and goals[0]["p"] == pytest.approx(1 / 2 ** 9, rel=1e-3)
    text = "\n".join(report._comparisons_section(results) + report._goals_table({"goals": goals}))
    assert "| tie |" in text and "| **cam-cut** |" in text and "| +1.00 [+" in text
    assert "fisher vs cam-cut +10.40 [" in report._pipeline_winners(results, [fisher])
    assert report._acc(results, dense) == "0.9000"  # one class in the labels: no macro-F1 beside accuracy
    three = {"dense": {**dense, "labels": "012" * 4}}
    assert report._acc(three, structured[0], "accuracy_reconstructed") == "0.8000 (F1 0.5000)"


def test_verdict_says_where_the_paper_claim_holds():
    v = verdicts(_results(0.81, (0.70, 0.72, 0.79), (0.75, 0.76, 0.80)))
    assert v["paper_mode"].startswith("Holds in part") and "c=4: cam-cut 0.7200 vs magnitude 0.7000" in v["paper_mode"]
    assert v["structured_mode"].startswith("Holds:")


def test_rewinding_starts_from_exactly_the_weights_fine_tuning_started_from(encoder_dir, data_csv, tmp_path,
                                                                            monkeypatch):
    from deepcuts_fast.task import finetuned_task_model
    from deepcuts_fast.train import finetune

    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path))
    task = finetuned_task_model(str(encoder_dir), str(data_csv), num_labels=2, progress=False)
    assert task.can_rewind and not task.cached
    assert task.finetune_settings()["dtype"] == task.finetune_info["precision"]["dtype"]
    replay = finetune(task.initial_model(), task.train_batches(), progress=False, **task.finetune_settings())
    want, got = task.model.state_dict(), replay.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    again = finetuned_task_model(str(encoder_dir), str(data_csv), num_labels=2, progress=False)
    assert again.cached and all(torch.equal(again.model.state_dict()[k], want[k]) for k in want)


def test_one_resolver_fine_tunes_a_bare_encoder_or_gives_it_a_random_head(encoder_dir, model_dir, data_csv, tmp_path,
                                                                          monkeypatch):
    """`deepcuts run` fine-tunes a bare encoder first; score, eval and prune give it a fresh random head."""
    from deepcuts_fast.errors import DeepCutsError
    from deepcuts_fast.task import task_model

    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path))
    random = task_model(str(encoder_dir), on_bare="random-head", num_labels=3, progress=False)
    assert random.model.config.num_labels == 3 and not random.can_rewind and not list(tmp_path.iterdir())
    tuned = task_model(str(encoder_dir), on_bare="fine-tune", data=str(data_csv), num_labels=2, progress=False)
    assert tuned.can_rewind and tuned.base == str(encoder_dir) and list(tmp_path.iterdir())
    for on_bare in ("fine-tune", "random-head"):  # a saved classifier is used as it is
        given = task_model(str(model_dir), on_bare=on_bare, data=str(data_csv), progress=False)
        assert not given.can_rewind
        assert torch.equal(given.model.classifier.weight, dc.from_pretrained(model_dir).classifier.weight)
    with pytest.raises(DeepCutsError, match="needs data"):
        task_model(str(encoder_dir), on_bare="fine-tune")
    with pytest.raises(DeepCutsError, match="on_bare"):
        task_model(str(encoder_dir), on_bare="train")


def test_quick_run_with_the_full_pipeline(encoder_dir, data_csv, tmp_path, monkeypatch):
    """`--quick --full-pipeline`: the quick grid for paper and structured mode, the full run's pipeline grid."""
    from deepcuts_fast.job import JobConfig

    monkeypatch.setenv("DEEPCUTS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["run", "--quick", "--full-pipeline", "--pipeline-examples", "16", "--model", str(encoder_dir),
                 "--data", str(data_csv), "--out", str(out), "--batch-size", "4", "--calibration-batches", "2",
                 "--latency-batch", "2", "--latency-seq", "16", "--quiet", "--json"]) == 0
    results = json.loads((out / "results.json").read_text())
    settings, quick, full = results["settings"], JobConfig.quick(), JobConfig.full()
    assert settings["criteria"] == list(quick.criteria) and settings["keep_flops"] == list(quick.keep_flops)
    assert settings["pipeline_examples"] == 16  # the flag still wins over the full grid's 2,048
    assert settings["pipeline_keep_flops"] == list(full.pipeline_keep_flops)
    assert settings["pipeline_draws"] == full.pipeline_draws and settings["pipeline_methods"] == list(
        full.pipeline_methods)
    assert {(r["criterion"], r["keep_flops"]) for r in results["retraining_free"]} == {
        (c if m == "one-shot" else f"{c} ({m})", k) for c, m in full.pipeline_runs() for k in full.pipeline_keep_flops}
