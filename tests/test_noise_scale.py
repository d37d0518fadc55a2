"""Smooth-Cut's noise relative to each prunable Linear's activation scale (`noise_scale="relative"`), and the
absolute sigma of the paper (`noise_scale="absolute"`): the realised noise, seeds, backends, options, saved
files, and the point of it all: relative noise changes the masks, the paper's 1e-3 does not."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import tiny_batches, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import deepcuts_fast as dc
from deepcuts_fast.cli import build_parser, main
from deepcuts_fast.cli.flags import check_flags
from deepcuts_fast.errors import DeepCutsError
from deepcuts_fast.job.analysis import plan_iou
from deepcuts_fast.kernels import add_noise, add_noise_reference, backends
from deepcuts_fast.scoring import probes
from deepcuts_fast.scoring.options import ScoreOptions
from test_cli_flags import no_loading  # noqa: F401, F811 (a fixture)

CPU_BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not backends.available(name, "cpu"),
                                                            reason=f"backend {name!r} not available here"))
                for name in ("torch", "cpp", "triton")]


def _recording(monkeypatch):
    """Every add_noise call of the scoring probes: (Linear index, samples, output before, output after)."""
    calls = []
    real = probes.add_noise

    def spy(y, std, seed, batch, layer, samples, backend="auto"):
        before = y.detach().clone()
        real(y, std, seed, batch, layer, samples, backend=backend)
        calls.append((layer, samples, before, y.detach().clone()))

    monkeypatch.setattr(probes, "add_noise", spy)
    return calls


@pytest.mark.parametrize("noise_scale,noise_std", [("relative", 0.15), ("relative", 0.4), ("absolute", 0.02)])
@pytest.mark.parametrize("sequential", [False, True])
def test_realised_noise_std_per_linear(monkeypatch, noise_scale, noise_std, sequential):
    """On fresh random inputs, each Linear's added noise has std sigma x (that output's std over the real tokens)
    per noise sample (relative), or sigma (absolute), within the sampling error of ~2,500 draws."""
    model = tiny_model("bert", seed=11)
    batches = tiny_batches(n_batches=1, batch_size=8, seq_len=16, seed=23)
    calls = _recording(monkeypatch)
    dc.score(model, batches, "smooth-cut", noise_samples=3, noise_std=noise_std, noise_scale=noise_scale,
             sequential_noise=sequential, with_fisher=False, progress=False)
    mask = batches[0]["attention_mask"].bool()
    assert len(calls) == (3 if sequential else 1) * 12  # 2 layers x 6 prunable Linears, per chunk
    ratios = []
    for layer, samples, before, after in calls:
        k = len(samples)
        noise = (after - before).double().view(k, *mask.shape, -1)
        clean = before.double().view(k, *mask.shape, -1)
        for s in range(k):
            scale = clean[s][mask].std(unbiased=False) if noise_scale == "relative" else 1.0
            ratios.append(float(noise[s].std() / (noise_std * scale)))
    ratios = torch.tensor(ratios)
    assert ((ratios - 1).abs() < 0.1).all(), ratios  # each within 10% (the draws' own error is ~2%)
    assert abs(float(ratios.mean()) - 1) < 0.02


def test_relative_sigma_follows_the_activation_scale(monkeypatch):
    """Scaling the whole model's activations (here: one Linear's weights and bias x 50) scales that Linear's
    relative noise by 50 as well, while its absolute noise stays put."""
    batches = tiny_batches(n_batches=1, seed=5)
    sizes = {}
    for scale in ("relative", "absolute"):
        for factor in (1.0, 50.0):
            model = tiny_model("bert", seed=3)
            lin = model.bert.encoder.layer[0].attention.self.value
            with torch.no_grad():
                lin.weight.mul_(factor)
                lin.bias.mul_(factor)
            calls = _recording(monkeypatch)
            dc.score(model, batches, "smooth-cut", noise_samples=2, noise_std=0.1, noise_scale=scale,
                     with_fisher=False, progress=False)
            value = [(after - before).std() for layer, _, before, after in calls if layer == 2]  # layer 0's value
            sizes[scale, factor] = float(value[0])
    assert sizes["relative", 50.0] / sizes["relative", 1.0] == pytest.approx(50, rel=0.05)
    assert sizes["absolute", 50.0] / sizes["absolute", 1.0] == pytest.approx(1, rel=0.05)


def _scores(**kw):
    model, batches = tiny_model("bert"), tiny_batches()
    return dc.score(model, batches, "smooth-cut", noise_samples=3, progress=False, **kw)


def test_seeds_reproduce_and_differ():
    a, b, c = _scores(seed=5), _scores(seed=5), _scores(seed=6)
    assert a.meta["noise_scale"] == "relative" and a.meta["noise_std"] == 0.15
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.allclose(a[k], c[k]) for k in a)


def test_relative_noise_is_the_same_stacked_sequential_and_chunked():
    stacked = _scores(seed=1)
    sequential = _scores(seed=1, sequential_noise=True)
    chunked = _scores(seed=1, max_memory=1)
    assert chunked.meta["samples_per_chunk"] == 1 and stacked.meta["samples_per_chunk"] == 3
    for other in (sequential, chunked):
        for k in stacked:
            torch.testing.assert_close(other[k], stacked[k], rtol=1e-4, atol=1e-6 * float(stacked[k].abs().max()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("noise_scale", ["relative", "absolute"])
@pytest.mark.parametrize("granularity", ["weight", "unit"])
def test_backends_agree(backend, noise_scale, granularity):
    # two texts a batch (the second padded): the Triton interpreter's time goes by the noise kernel's programs
    model, batches = tiny_model("bert"), tiny_batches(2, batch_size=2, seq_len=8)
    kw = dict(noise_samples=3, noise_std=0.1, noise_scale=noise_scale, seed=4, progress=False)
    got = dc.score(model, batches, "smooth-cam-cut", granularity, backend=backend, **kw)
    want = dc.score(model, batches, "smooth-cam-cut", granularity, backend="torch", **kw)
    for i in range(len(want.layout)):
        for a, b in ((got.heads(i), want.heads(i)), (got.neurons(i), want.neurons(i))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_sample_std_kernel_paths_match_the_reference(backend, dtype):
    """A tensor of per-sample stds, read by the kernel itself in one call over every sample (a strided input too),
    agrees with the reference and with one call per sample at that sample's scalar; a 0-dim tensor equals a float."""
    gen = torch.Generator().manual_seed(9)
    samples = range(2, 5)
    y = (torch.randn(3, 7, 37, generator=gen) * 4).to(dtype)
    stds = torch.tensor([0.5, 0.0, 2.0])
    expect, fused, one_by_one = y.clone(), y.clone(), y.clone()
    strided = y.transpose(1, 2).clone().transpose(1, 2)
    add_noise_reference(expect, stds, 2**40 + 7, 3, 11, samples)
    add_noise(fused, stds, 2**40 + 7, 3, 11, samples, backend=backend)
    add_noise(strided, stds, 2**40 + 7, 3, 11, samples, backend=backend)
    for i, sd in enumerate(stds.tolist()):
        add_noise(one_by_one[i], sd, 2**40 + 7, 3, 11, range(samples.start + i, samples.start + i + 1),
                  backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fused.float(), expect.float(), rtol=tol, atol=tol)
    assert torch.equal(fused, one_by_one) and torch.equal(strided, fused)
    assert torch.equal(fused[1], y[1])  # a zero std adds nothing
    scalar, tensor = y.clone(), y.clone()
    add_noise(scalar, 0.5, 1, 2, 3, samples, backend=backend)
    add_noise(tensor, torch.tensor(0.5), 1, 2, 3, samples, backend=backend)
    torch.testing.assert_close(tensor.float(), scalar.float(), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="2 values for 3 noise samples"):
        add_noise(y.clone(), torch.ones(2), 1, 2, 3, samples, backend=backend)


def _unit_plans(model, batches, keep, **noise):
    scores = dc.score_many(model, batches, ["gradient", "smooth-cut", "fisher"], granularity="unit",
                           noise_samples=10, seed=0, progress=False, **noise)
    return {c: dc.plan(model, scores[c], keep_flops=keep, seq_len=16, reference=scores["fisher"]).to_dict()
            for c in ("gradient", "smooth-cut")}


def test_relative_noise_changes_the_masks_and_the_papers_sigma_does_not():
    """The point of relative noise: with the paper's absolute 1e-3 Smooth-Cut keeps exactly the gradient
    criterion's units (IoU 1 at every budget); with 0.15 of each output's std it keeps other ones."""
    model = tiny_model("bert", seed=2)
    batches = tiny_batches(n_batches=2, batch_size=8, seq_len=16, seed=7)
    relative_iou, absolute_iou = [], []
    for keep in (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):
        for noise, out in ((dict(noise_scale="absolute", noise_std=1e-3), absolute_iou),
                           (dict(noise_scale="relative", noise_std=0.15), relative_iou)):
            ious = plan_iou(_unit_plans(model, batches, keep, **noise))["gradient|smooth-cut"]
            out.append(min(ious))
    assert absolute_iou == [1.0] * 7
    assert sum(iou < 1 for iou in relative_iou) >= 2, relative_iou  # here 3 of the 7 budgets


def test_options_defaults_and_validation():
    assert (ScoreOptions().noise_scale, ScoreOptions().noise_std) == ("relative", 0.15)
    assert ScoreOptions(noise_scale="absolute").noise_std == 1e-3
    assert ScoreOptions(reference=True).noise_scale == "absolute"  # the original code's noise
    assert ScoreOptions(reference=True, noise_scale="relative").noise_std == 0.15
    assert "noise_scale" in ScoreOptions().recorded()
    assert ScoreOptions(noise_scale="absolute", noise_std=0).noise_std == 0.0
    for bad, message in [(dict(noise_scale="relative", noise_std=0), "must be > 0 with noise_scale='relative'"),
                         (dict(noise_std=float("inf")), "noise_std must be a finite number"),
                         (dict(noise_std=float("nan")), "noise_std must be a finite number"),
                         (dict(noise_std=-0.1), "noise_std must be a finite number >= 0"),
                         (dict(noise_scale="Relative"), "unknown noise_scale 'Relative'"),
                         (dict(noise_scale=1), "noise_scale must be a string")]:
        with pytest.raises(DeepCutsError, match=message):
            ScoreOptions(**bad)
    with pytest.warns(UserWarning, match="too little to change the gradients"):
        ScoreOptions(noise_std=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScoreOptions(noise_std=0.1)
        ScoreOptions(noise_scale="absolute", noise_std=1e-3)


def test_saved_scores_record_the_scale_and_old_files_read_as_absolute(tmp_path):
    scores = _scores(noise_scale="absolute")
    path = tmp_path / "s.safetensors"
    scores.save(path)
    assert dc.Scores.load(path).meta["noise_scale"] == "absolute"
    relative = _scores()
    relative.save(path, overwrite=True)
    assert dc.Scores.load(path).meta["noise_scale"] == "relative"
    # a file written before the field existed: its noise was absolute
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for key in ("meta", "fisher_meta"):
        meta = json.loads(header[key])
        meta.pop("noise_scale", None)
        header[key] = json.dumps(meta)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=header)
    loaded = dc.Scores.load(old)
    assert loaded.meta["noise_scale"] == "absolute" and loaded.fisher.meta["noise_scale"] == "absolute"
    assert all(torch.equal(loaded[k], relative[k]) for k in relative)


@pytest.mark.parametrize("argv,message", [
    (["score", "--data", "d.csv", "--noise-std", "0"], "--noise-std must be > 0 with --noise-scale relative"),
    (["score", "--data", "d.csv", "--noise-scale", "relative", "--noise-std", "0"], "must be > 0 with --noise-scale"),
    (["score", "--data", "d.csv", "--noise-std", "inf"], "--noise-std must be a finite number >= 0, got inf"),
    (["run", "--noise-std", "0"], "--noise-std must be > 0 with --noise-scale relative"),
    (["run", "--noise-scale", "absolute", "--noise-std=-1"], "--noise-std must be a finite number >= 0, got -1"),
])
def test_cli_refuses_bad_noise_at_once(argv, message, tmp_path, no_loading, capsys):
    out = tmp_path / "out"
    code = main(argv + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and not out.exists(), err


def test_cli_noise_flags_parse_and_document_their_defaults(capsys):
    parser = build_parser()
    args = parser.parse_args(["score", "--data", "d.csv", "--out", "s", "--noise-scale", "absolute"])
    assert (args.noise_scale, args.noise_std) == ("absolute", None)
    check_flags(parser.parse_args(["score", "--data", "d", "--out", "s", "--noise-scale", "absolute",
                                   "--noise-std", "0"]))  # no noise: fine when absolute
    check_flags(parser.parse_args(["score", "--data", "d", "--out", "s", "--reference", "--noise-std", "0"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["score", "--data", "d", "--out", "s", "--noise-scale", "relativ"])
    capsys.readouterr()
    for command in (["score"], ["run"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--noise-scale {relative,absolute}" in text and "default relative" in text
        assert "paper's 1e-3" in text and "relative must be > 0" in text
        expected = "0.15 relative, 0.001 absolute" if command == ["score"] else "default 0.15 with the job's relative"
        assert expected in text


def test_cli_score_records_the_noise_scale(model_dir, data_csv, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    argv = ["score", "--model", str(model_dir), "--data", str(data_csv), "--criterion", "smooth-cut", "--batches", "1",
            "--batch-size", "4", "--noise-samples", "2", "--noise-scale", "absolute", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    meta = dc.Scores.load(out).meta
    assert (meta["noise_scale"], meta["noise_std"]) == ("absolute", 1e-3)
    assert main(argv[:-5] + ["--noise-std", "0.2", "--out", str(out), "--overwrite", "--quiet"]) == 0
    meta = dc.Scores.load(out).meta
    assert (meta["noise_scale"], meta["noise_std"]) == ("relative", 0.2)
