"""The label-free (distillation) objective: its sampled targets carry the distillation loss's curvature, every
gradient criterion scores unlabelled data with it, `auto` picks labels or distillation rightly, a random head is
never read, plain text loads unlabelled, and the pipeline and `deepcuts prune` run end to end without labels."""
from __future__ import annotations

import pytest
import torch
from conftest import sentence_transformers_files, tiny_batches, tiny_model
from torch.func import functional_call, jacrev
from transformers import AutoModel

import deepcuts_fast as dc
from deepcuts_fast.cli import main
from deepcuts_fast.data import load_dataset, make_batches
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.scoring.objective import (Objective, head_state, mark_untrained_head, pool, resolve_objective,
                                             sentence_pooling)

GRADIENT_CRITERIA = ["gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "fisher"]
FAST = dict(granularity="unit", noise_samples=2, progress=False, backend="torch")


def unlabelled(n_batches: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Tiny token batches without labels."""
    batches = tiny_batches(n_batches, seed=seed)
    for b in batches:
        del b["labels"]
    return batches


def flat(scores: dc.Scores) -> torch.Tensor:
    """All head and neuron scores of one result, in one vector."""
    units = scores.unit_scores()
    return torch.cat([*units["heads"], *units["neurons"]])


class _WithParameter:
    """`model` called with one parameter replaced by `value` (torch.func), as `Objective.outputs` calls a model."""

    def __init__(self, model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
        self.model, self.name, self.value, self.forward = model, name, value, model.forward

    def __call__(self, **inputs):
        return functional_call(self.model, {self.name: self.value}, (), inputs)


@pytest.mark.parametrize("output", ["logits", "embedding"])
def test_sampled_targets_carry_the_distillation_losss_curvature(output):
    """At the dense model the distillation loss's gradient is zero, and the second moment of the sampled-target
    gradients (Monte Carlo over many draws) is its exact Hessian: the true Fisher of the KL to the dense softmax,
    or J^T J of half the squared error to the dense pooled embedding."""
    model = tiny_model(num_labels=4).double()
    net = model if output == "logits" else model.bert  # the bare encoder: pooled embedding, no head
    name = "encoder.layer.1.output.dense.bias" if output == "embedding" else "bert.encoder.layer.1.output.dense.bias"
    objective = Objective("distill", output=output)
    batch = unlabelled(1)[0]
    theta = dict(net.named_parameters())[name].detach().clone()

    def outputs(value: torch.Tensor) -> torch.Tensor:
        return objective.outputs(_WithParameter(net, name, value), batch)

    with torch.no_grad():
        dense = outputs(theta)
    n = dense.shape[0]
    if output == "logits":
        p = torch.softmax(dense, -1)
        distill = lambda v: (p * (p.log() - torch.log_softmax(outputs(v), -1))).sum() / n  # noqa: E731
    else:
        distill = lambda v: 0.5 * (outputs(v) - dense).square().sum() / n  # noqa: E731
    assert torch.func.grad(distill)(theta).abs().max() < 1e-12  # why plain distillation would score zero
    hessian = jacrev(jacrev(distill))(theta)
    jacobian = jacrev(outputs)(theta)  # (examples, outputs, parameters)
    draws = 5000
    repeated = dense.repeat(draws, 1).requires_grad_(True)
    targets = objective.targets(dense.repeat(draws, 1), None, seed=3, batch=0)
    per_output, = torch.autograd.grad(objective.loss(repeated, targets, 1), repeated)  # one example per row
    grads = torch.einsum("epk,dep->dek", jacobian, per_output.view(draws, n, -1)).reshape(draws * n, -1)
    second_moment = grads.T @ grads / (draws * n)
    assert hessian.diag().min() > 0
    assert (second_moment - hessian).norm() / hessian.norm() < 0.1
    assert (second_moment.diag() - hessian.diag()).norm() / hessian.diag().norm() < 0.05


def test_every_gradient_criterion_scores_unlabelled_data(capsys):
    """Non-zero, finite scores for every gradient criterion; the same seed reproduces them exactly, another seed
    draws other targets, so they differ a little but rank the units alike."""
    model = tiny_model(num_labels=3)
    first = dc.score_many(model, unlabelled(), GRADIENT_CRITERIA, objective="distill", seed=1, **FAST)
    again = dc.score_many(model, unlabelled(), GRADIENT_CRITERIA, objective="distill", seed=1, **FAST)
    other = dc.score_many(model, unlabelled(), GRADIENT_CRITERIA, objective="distill", seed=2, **FAST)
    assert capsys.readouterr().err == ""  # asked for, so nothing to announce
    for name in GRADIENT_CRITERIA:
        a, b, c = flat(first[name]), flat(again[name]), flat(other[name])
        assert torch.isfinite(a).all() and (a != 0).float().mean() > 0.9, name
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
        assert torch.corrcoef(torch.stack([a, c]))[0, 1] > 0.3, name
        assert first[name].meta["objective"] == "distill (dense model's logits)"


def test_a_regression_head_is_distilled_with_gaussian_targets():
    scores = dc.score(tiny_model(num_labels=1), unlabelled(), "fisher", objective="distill", **FAST)
    assert torch.isfinite(flat(scores)).all() and (flat(scores) > 0).float().mean() > 0.9


def test_a_bare_encoder_is_scored_through_its_pooled_embedding(capsys):
    encoder = AutoModel.from_config(tiny_model().config).eval()
    scores = dc.score_many(encoder, unlabelled(), GRADIENT_CRITERIA, **FAST)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "bare encoder" in note and "mean-pooled embeddings" in note
    for name in GRADIENT_CRITERIA:
        assert torch.isfinite(flat(scores[name])).all() and flat(scores[name]).abs().sum() > 0, name


def test_smooth_cut_targets_are_the_dense_models_clean_draws():
    """The noisy copies share the target drawn from the clean dense outputs, so with almost no noise Smooth-Cut
    gives the gradient criterion's scores (independent draws per copy would average to something else)."""
    model, batches = tiny_model(num_labels=3), unlabelled()
    kw = dict(objective="distill", seed=4, granularity="weight", progress=False, backend="torch")
    smooth = dc.score(model, batches, "smooth-cut", noise_samples=3, noise_scale="absolute", noise_std=1e-7, **kw)
    plain = dc.score(model, batches, "gradient", **kw)
    for key in plain.keys():
        torch.testing.assert_close(smooth[key], plain[key], rtol=1e-3, atol=1e-7)


def test_auto_takes_labels_only_with_labels_and_a_trained_head(capsys):
    model, labelled = tiny_model(), tiny_batches()
    auto = dc.score(model, labelled, "gradient", **FAST)
    assert capsys.readouterr().err == ""
    assert auto.meta["objective"] == "labels"
    torch.testing.assert_close(flat(auto), flat(dc.score(model, labelled, "gradient", objective="labels", **FAST)))
    distilled = dc.score(model, labelled, "gradient", objective="distill", **FAST)
    assert not torch.allclose(flat(auto), flat(distilled))
    partly = [labelled[0], unlabelled()[1]]
    dc.score(model, partly, "gradient", **FAST)
    assert capsys.readouterr().err == ("deepcuts: note: calibration batch 1 has no labels, so the gradients come from "
                                       "distillation to the dense model's own outputs: distill (dense model's logits)\n")
    with pytest.raises(DeepCutsError, match="calibration batch 1 has no 'labels'; pass objective='distill'"):
        dc.score(model, partly, "gradient", objective="labels", **FAST)


def test_a_random_head_is_never_scored_through(encoder_dir, capsys):
    """A bare encoder loaded with a fresh head: labels are refused, auto switches to the pooled embedding, and its
    scores are the encoder's own, whatever the head holds."""
    model = dc.load_model(str(encoder_dir))
    assert head_state(model) == "random" and head_state(model.bert) == "none"
    batches = tiny_batches()
    with pytest.raises(DeepCutsError, match="no trained task head.*objective='distill'"):
        dc.score(model, batches, "gradient", objective="labels", **FAST)
    capsys.readouterr()
    scores = dc.score(model, batches, "gradient", **FAST)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "randomly initialized" in note and "mean-pooled embeddings" in note
    with torch.no_grad():
        model.classifier.weight.normal_()
    again = dc.score(model, batches, "gradient", **FAST)
    bare = dc.score(model.bert, batches, "gradient", **FAST)
    torch.testing.assert_close(flat(scores), flat(again))
    torch.testing.assert_close(flat(scores), flat(bare))
    assert head_state(mark_untrained_head(tiny_model())) == "random"


def test_unknown_objective_is_refused():
    with pytest.raises(DeepCutsError, match="unknown objective 'distil'.*Did you mean 'distill'"):
        dc.score(tiny_model(), unlabelled(), "gradient", objective="distil", **FAST)
    assert resolve_objective(tiny_model(), tiny_batches(), "labels").kind == "labels"


def test_pooling_follows_the_sentence_transformers_config(tmp_path):
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean")[1], hidden[1, :2].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "max")[1], hidden[1, :2].amax(0))
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    assert sentence_pooling(str(tmp_path)) == ("mean", False)
    sentence_transformers_files(tmp_path, {"word_embedding_dimension": 4, "pooling_mode_cls_token": True,
                                           "pooling_mode_mean_tokens": False})
    assert sentence_pooling(str(tmp_path)) == ("cls", True)
    sentence_transformers_files(tmp_path, {"pooling_mode_max_tokens": True}, normalize=False)
    assert sentence_pooling(str(tmp_path)) == ("max", False)
    sentence_transformers_files(tmp_path, {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(DeepCutsError, match="weightedmean"):
        sentence_pooling(str(tmp_path))


def test_plain_text_loads_unlabelled(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a good film\nboring plot\r\nfunny actor\n", encoding="utf-8")
    data = load_dataset(str(texts), require_labels=False)
    assert data.texts == ["a good film", "boring plot", "funny actor"] and not data.labelled
    batches = make_batches(data, dc.load_tokenizer("minilm"), batch_size=2)
    assert [len(b["input_ids"]) for b in batches] == [2, 1] and all("labels" not in b for b in batches)
    with pytest.raises(DeepCutsError, match="plain text without labels"):
        load_dataset(str(texts))
    texts.write_text("one\n\nthree\n", encoding="utf-8")
    with pytest.raises(DeepCutsError, match="line 2 is blank"):
        load_dataset(str(texts), require_labels=False)
    texts.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DeepCutsError, match="is empty; it needs one text a line"):
        load_dataset(str(texts), require_labels=False)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n{"text": "dull"}\n', encoding="utf-8")
    assert load_dataset(str(rows), require_labels=False).texts == ["fine", "dull"]
    with pytest.raises(DeepCutsError, match="no `label` column"):
        load_dataset(str(rows))


@pytest.mark.parametrize("method", ["one-shot", "iterative"])
def test_the_pipeline_runs_without_labels(method, capsys):
    model = tiny_model()
    slim, plan, info = dc.prune_without_retraining(model, unlabelled(), 0.5, criterion="smooth-cut", method=method)
    assert info["objective"] == "distill (dense model's logits)"
    assert 0.3 < info["flops_kept"] <= 0.55
    assert "the calibration data has no labels" in capsys.readouterr().err
    ids = unlabelled()[0]
    out = slim(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    assert torch.isfinite(out).all()


def test_prune_a_bare_encoder_on_plain_text_from_the_command_line(encoder_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"text number {i} is {'good' if i % 2 else 'dull'}" for i in range(12)) + "\n")
    out = tmp_path / "slim"
    capsys.readouterr()
    code = main(["prune", "--model", str(encoder_dir), "--data", str(texts), "--keep-flops", "0.5",
                 "--calibration-examples", "8", "--batch-size", "4", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("\n") == 1 and "no trained task head" in err and "mean-pooled embeddings" in err, err
    slim = dc.from_pretrained(out)
    assert head_state(slim) == "random"  # the pruned folder's head stays marked: never scored through later
    code = main(["score", "--model", str(encoder_dir), "--data", str(texts), "--criterion", "gradient",
                 "--objective", "labels", "--batches", "1", "--batch-size", "4", "--out", str(tmp_path / "s"),
                 "--quiet"])
    assert code == 2 and "plain text without labels" in capsys.readouterr().err
