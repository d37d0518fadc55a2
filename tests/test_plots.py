"""The main job's plots, drawn from two real results.json files trimmed to the keys the plots read
(tests/data): a `--quick` run of MiniLM on Rotten Tomatoes, and the full grid on the tiny random encoder of
test_main_job.py (every section present). Checks what a reader relies on: every PNG is written, ticks sit at
the measured points, legends stay off the data, a plot of times names the machine and dtype, and the
retraining-free plot appears exactly when the pipeline ran."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from deepcuts_fast.job import plots  # noqa: E402
from deepcuts_fast.job.report import PLOT_CAPTIONS  # noqa: E402

DATA = Path(__file__).parent / "data"
KINDS = ("quick", "full_tiny")
EVERY_PLOT = {"paper_accuracy.png", "structured_speedup.png", "kept_units.png", "retraining_free.png",
              "mask_iou.png", "plan_iou.png"}


def load(kind: str) -> dict:
    return json.loads((DATA / f"results_{kind}.json").read_text())


def texts(fig) -> list[str]:
    """Every piece of text a figure shows: titles, axis labels, tick labels, legend entries."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text)]


@pytest.fixture(scope="module", params=KINDS)
def drawn(request) -> tuple[dict, dict]:
    results = load(request.param)
    return results, plots.figures(results)


@pytest.mark.parametrize("kind", KINDS)
def test_write_plots_writes_every_png(kind, tmp_path):
    written = plots.write_plots(load(kind), tmp_path)
    assert {p.name for p in written} == EVERY_PLOT == {p.name for p in tmp_path.iterdir()}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert EVERY_PLOT <= set(PLOT_CAPTIONS)  # the report captions each one


def test_paper_accuracy_ticks_are_the_measured_compressions(drawn):
    results, figs = drawn
    ax = figs["paper_accuracy.png"].axes[0]
    assert list(ax.get_xticks()) == sorted({r["compression"] for r in results["paper_mode"]})


def test_legends_and_titles_stay_off_the_axes(drawn):
    for name, fig in drawn[1].items():
        fig.draw_without_rendering()  # runs the constrained layout
        axes = [ax.get_window_extent() for ax in fig.axes]
        for legend in fig.legends:
            box = legend.get_window_extent()
            assert not any(box.overlaps(a) for a in axes), name
            assert not any(box.overlaps(ax.title.get_window_extent()) for ax in fig.axes), name


def test_time_plot_names_the_machine_and_dtype(drawn):
    results, figs = drawn
    fig = figs["structured_speedup.png"]
    m = results["machine"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [plots.timing_caption(results, tag) for tag in results["latency"]]
    for title, tag in zip(titles, results["latency"]):
        assert m["processor"] in title and m["isa"] in title and f"{m['threads']} thread" in title
        assert title.endswith(f", {tag}")


def test_timing_caption_names_the_gpu_for_cuda_settings():
    results = load("quick")
    results["settings"]["gpu"] = "NVIDIA H200"
    assert plots.timing_caption(results, "cuda_bf16") == "NVIDIA H200, bf16"
    assert plots.timing_caption(results, "fp32") == "AMD EPYC (AVX-512 BF16), 2 threads, fp32"


def test_recovered_slim_models_are_named(drawn):
    results, figs = drawn
    shown = texts(figs["structured_speedup.png"])
    recovered = [r for r in results["structured_recovery"] if r["epochs"] > 0]
    assert [t for t in shown if "recovery fine-tune" in t] == [
        f"{r['criterion']} at keep {r['keep_flops']:g}, after {r['epochs']:g} epoch recovery fine-tune"
        for r in recovered]
    assert recovered or results["settings"]["structured_recovery_epochs"] == 0  # the full run fine-tunes one


def test_retraining_free_plot_shows_draws_dense_and_anchor(drawn):
    results, figs = drawn
    ax = figs["retraining_free.png"].axes[0]
    budgets = sorted({e["keep_flops"] for e in results["retraining_free_summary"]}, reverse=True)
    assert list(ax.get_xticks()) == budgets
    labels = ax.get_legend_handles_labels()[1]
    assert set(results["settings"]["pipeline_criteria"]) <= set(labels)
    anchor = [line for line in labels if line.startswith(plots.KWON_ANCHOR_LABEL)]
    if results["settings"]["data"] == plots.KWON_ANCHOR_DATA:  # the quick run is on the anchor's split
        assert anchor and "1.35 points below dense at 0.5" in anchor[0]
        dash = next(c for c in ax.collections if c.get_label() == anchor[0])
        (x0, y0), (x1, y1) = dash.get_segments()[0]
        assert y0 == y1 == pytest.approx(results["dense"]["accuracy"] - 0.0135) and x0 < 0.5 < x1
    else:
        assert not anchor


@pytest.mark.parametrize("missing", ["empty", "absent"])
def test_retraining_free_plot_is_skipped_without_pipeline_rows(missing, tmp_path):
    results = load("full_tiny")
    for key in ("retraining_free", "retraining_free_summary"):
        if missing == "empty":
            results[key] = []
        else:
            del results[key]
    written = {p.name for p in plots.write_plots(results, tmp_path)}
    assert written == EVERY_PLOT - {"retraining_free.png"}


def test_a_run_without_structured_mode_gets_the_paper_mode_plots(tmp_path):
    results = load("quick")
    results.update(structured_mode=[], latency={}, structured_recovery=[], retraining_free=[],
                   retraining_free_summary=[])
    results["mask_analysis"]["plan_iou_matrix"] = None
    assert [p.name for p in plots.write_plots(results, tmp_path)] == ["paper_accuracy.png", "mask_iou.png"]
