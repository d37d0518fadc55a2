"""The main job's plots, drawn from two real results.json files trimmed to the keys the plots read
(tests/data): a `--quick` run of MiniLM on Rotten Tomatoes, and the full grid on the tiny random encoder of
test_main_job.py (every section present). Checks what a reader relies on: every PNG is written, ticks sit at
the measured points, legends stay off the data, a plot of times names the machine and dtype, and the
retraining-free plot appears exactly when the pipeline ran, error bars never go negative, and a plot that raises
costs only itself: the others and the report are written, naming it."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

from deepcuts_fast.job import plots  # noqa: E402
from deepcuts_fast.job.goals import ANCHOR_DATA  # noqa: E402
from deepcuts_fast.job.report import PLOT_CAPTIONS  # noqa: E402

# The portable pass (make test-portable) skips this file: PNGs drawn from stored results.json files, no model computed
pytestmark = pytest.mark.isa_independent

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
    written, failed = plots.write_plots(load(kind), tmp_path)
    assert not failed and {p.name for p in written} == EVERY_PLOT == {p.name for p in tmp_path.iterdir()}
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


def _bands(ax) -> list[tuple[float, float]]:
    """The (left, right) data x of the noise bands of a speedup panel."""
    return sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches if p.get_gid() == "noise_band")


def test_speedup_axis_starts_at_dense_speed_with_a_noise_band_per_budget(drawn):
    """Speedups of one budget that differ by 1% must read as ties: the axis starts at 1x (the dense model, marked),
    not at the smallest speedup, and a band around each budget's median speedup spans the noise, here the stated
    2% run-to-run noise (the fixtures record no IQRs), which the x label names."""
    results, figs = drawn
    fig = figs["structured_speedup.png"]
    budgets = sorted({r["keep_flops"] for r in results["structured_mode"]}, reverse=True)
    for ax, tag in zip(fig.axes, results["latency"]):
        key = f"speedup_{tag}"
        assert ax.get_xlim()[0] < 1.0 < ax.get_xlim()[1]
        assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.lines)  # dense speed
        bands = _bands(ax)
        assert len(bands) == len(budgets)
        for keep in budgets:
            speeds = sorted(r[key] for r in results["structured_mode"] if r["keep_flops"] == keep)
            mid = (speeds[(len(speeds) - 1) // 2] + speeds[len(speeds) // 2]) / 2
            assert pytest.approx((mid * 0.98, mid * 1.02)) in bands
        assert "grey band: ±2%, the stated run-to-run noise (no latency IQRs recorded)" in ax.get_xlabel()
    assert "ties" in fig.get_suptitle()


def test_quick_run_speedups_within_one_percent_share_the_band():
    """The quick run's fp32 speedups of gradient, cam-cut and smooth-cut (1.86x to 1.93x) lie in one band: a
    reader sees ties, not a ranking; magnitude's 1.82x lies outside."""
    results = load("quick")
    ax = plots.structured_speedup_figure(results).axes[0]
    ((low, high),) = _bands(ax)
    inside = {r["criterion"] for r in results["structured_mode"] if low <= r["speedup_fp32"] <= high}
    assert inside == {"gradient", "cam-cut", "smooth-cut"}
    assert ax.get_xlim()[1] - ax.get_xlim()[0] > 10 * (high - low) / 2  # the whole 1x..2x range, not 2%


@pytest.mark.parametrize("iqr, half, says", [(0.05, 0.04, "±4.0%, the measured IQR of dense / slim"),
                                             (0.01, 0.02, "±2%, the stated run-to-run noise (measured IQR only "
                                                          "±0.8%)")], ids=["measured", "floor"])
def test_noise_band_uses_the_measured_latency_spread_when_wider(iqr, half, says):
    """With the latency rows' IQRs the band is the speedup's IQR half-width (half the dense and slim relative IQRs'
    sum), never narrower than the stated run-to-run noise."""
    results = load("quick")
    rows = [r for r in results["structured_mode"]]
    results["latency"]["fp32"] = [{"model": "dense", "median_ms": 500.0, "iqr_ms": 500.0 * iqr, "speedup": 1.0}] + [
        {"model": f"{r['criterion']}@0.5", "median_ms": 500 / r["speedup_fp32"],
         "iqr_ms": 500 / r["speedup_fp32"] * (iqr * 0.6), "speedup": r["speedup_fp32"]} for r in rows]
    assert plots.speedup_noise(results, "fp32") == (pytest.approx(half), says)
    ax = plots.structured_speedup_figure(results).axes[0]
    ((low, high),) = _bands(ax)
    assert (high - low) / (high + low) == pytest.approx(half) and says in ax.get_xlabel()


def _bars(ax) -> list[tuple[float, float]]:
    """(x centre, height) of the bars of an axes."""
    from matplotlib.patches import Rectangle

    return [(p.get_x() + p.get_width() / 2, p.get_height()) for p in ax.patches if isinstance(p, Rectangle)]


def test_kept_units_draws_counts_all_criteria_share_once():
    """Under the default allocation every criterion keeps Fisher's counts per layer (full_tiny: all 8 criteria at
    each of 3 budgets): one grey bar per layer, one row of panels per budget, the titles saying so, no repeats."""
    results = load("full_tiny")
    fig = plots.kept_units_figure(results)
    budgets = sorted({r["keep_flops"] for r in results["structured_mode"]}, reverse=True)
    assert len(fig.axes) == 2 * len(budgets)
    for (ax_h, ax_n), keep in zip(zip(fig.axes[::2], fig.axes[1::2]), budgets):
        row = next(r for r in results["structured_mode"] if r["keep_flops"] == keep)
        assert [h for _, h in _bars(ax_h)] == row["heads"] and [h for _, h in _bars(ax_n)] == row["ffn"]
        assert f"keep_flops {keep:g}" in ax_h.get_title() and "shared by all 8 criteria" in ax_h.get_title()
    assert "Fisher allocation" in fig.get_suptitle()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["all 8 criteria (same counts)"]


def test_kept_units_gives_each_distinct_allocation_a_bar():
    """Criteria whose counts differ (the quick fixture's older run) keep a bar each in their colour; criteria with
    equal counts share one, named together."""
    results = load("quick")
    ax_h, ax_n = plots.kept_units_figure(results).axes
    assert len(_bars(ax_h)) == 4 * 6 and "per criterion" in ax_h.get_title()
    rows = results["structured_mode"]
    rows[3]["heads"], rows[3]["ffn"] = rows[1]["heads"], rows[1]["ffn"]  # smooth-cut = gradient
    fig = plots.kept_units_figure(results)
    assert len(_bars(fig.axes[0])) == 3 * 6
    assert "gradient = smooth-cut (same counts)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_kept_units_marks_the_heads_every_criterion_keeps():
    """Equal counts, different heads: the analysed budget's heads panel marks per layer how many heads all
    criteria keep (from the mask analysis's kept head indices), so where they differ shows."""
    results = load("quick")
    rows = results["structured_mode"]
    for r in rows:
        r["heads"], r["ffn"] = [2, 2], [10, 10]
    heads = {"magnitude": [[0, 1], [2, 3]], "gradient": [[0, 1], [3, 4]], "cam-cut": [[0, 1], [3, 5]],
             "smooth-cut": [[0, 1], [3, 4]]}
    results["mask_analysis"]["kept_units"] = {c: {"heads": h, "neurons_per_layer": [10, 10]} for c, h in heads.items()}
    ax_h = plots.kept_units_figure(results).axes[0]
    (marks,) = [c for c in ax_h.collections if c.get_gid() == "heads_kept_by_all"]
    assert [y0 for (_, y0), _ in marks.get_segments()] == [2, 1]
    assert "heads every criterion keeps" in marks.get_label()
    results["mask_analysis"]["keep_flops"] = 0.75  # analysed at another budget: nothing to mark at 0.5
    assert not [c for c in plots.kept_units_figure(results).axes[0].collections if c.get_gid() == "heads_kept_by_all"]


def test_recovered_slim_models_are_named(drawn):
    results, figs = drawn
    shown = texts(figs["structured_speedup.png"])
    recovered = [r for r in results["structured_recovery"] if r["epochs"] > 0]
    assert [t for t in shown if "recovery fine-tune" in t] == [
        f"{r['criterion']} at keep {r['keep_flops']:g}, after {r['epochs']:g} epoch recovery fine-tune"
        for r in recovered]
    assert recovered or results["settings"]["structured_recovery_epochs"] == 0  # the full run fine-tunes one


def _anchor_labels(ax) -> list[str]:
    return [label for label in ax.get_legend_handles_labels()[1] if label.startswith(plots.KWON_ANCHOR_LABEL)]


def test_retraining_free_plot_shows_draws_dense_and_anchor(drawn):
    results, figs = drawn
    ax = figs["retraining_free.png"].axes[0]
    budgets = sorted({e["keep_flops"] for e in results["retraining_free_summary"]}, reverse=True)
    assert list(ax.get_xticks()) == budgets
    labels = ax.get_legend_handles_labels()[1]
    assert set(results["settings"]["pipeline_criteria"]) <= set(labels)
    anchor = _anchor_labels(ax)
    if results["settings"]["data"] == ANCHOR_DATA:  # the quick run is on the anchor's split
        assert anchor and "1.35 points below their dense at keep_flops 0.5" in anchor[0]
        assert "their dense 82.55%" in anchor[0] and "0.75" not in anchor[0]  # no budget the run lacks
        dash = next(c for c in ax.collections if c.get_label() == anchor[0])
        (x0, y0), (x1, y1) = dash.get_segments()[0]
        assert y0 == y1 == pytest.approx(results["dense"]["accuracy"] - 0.0135) and x0 < 0.5 < x1
    else:
        assert not anchor and not [c for c in ax.collections if c.get_gid() == "kwon_anchor"]


def test_kwon_anchor_only_on_the_embedded_data_at_its_budgets():
    """The anchor was measured on the embedded reviews' test split: drawn there, at each budget it was measured
    at that the run has (full_tiny: 0.75 and 0.5, not 0.33), each dash its drop below this run's dense; never on
    other data, even the same grid."""
    results = load("full_tiny")
    assert not _anchor_labels(plots.retraining_free_figure(results).axes[0])  # tiny.csv
    results["settings"]["data"] = ANCHOR_DATA
    ax = plots.retraining_free_figure(results).axes[0]
    (label,) = _anchor_labels(ax)
    assert "1.35 points below their dense at keep_flops 0.5" in label
    assert "0.05 points below their dense at keep_flops 0.75" in label and "0.33" not in label
    (dash,) = [c for c in ax.collections if c.get_gid() == "kwon_anchor"]
    dense = results["dense"]["accuracy"]
    ends = sorted(((x0 + x1) / 2, y0) for (x0, y0), (x1, _) in dash.get_segments())
    assert ends == [pytest.approx((0.5, dense - 0.0135)), pytest.approx((0.75, dense - 0.0005))]
    quick = load("quick")
    quick["settings"]["data"] = "my_reviews.csv"
    assert not _anchor_labels(plots.retraining_free_figure(quick).axes[0])


def test_retraining_free_plot_says_when_a_point_has_no_spread():
    quick, full = load("quick"), load("full_tiny")
    assert {e["draws"] for e in quick["retraining_free_summary"]} == {1}
    assert "1 calibration draw: no spread" in plots.retraining_free_figure(quick).axes[0].get_title()
    title = plots.retraining_free_figure(full).axes[0].get_title()
    assert "mean over 3 calibration draws per point, bars min to max" in title and "no spread" not in title
    full["retraining_free_summary"][0]["draws"] = 1  # a point that lost two draws
    assert "mean over 1-3 calibration draws" in plots.retraining_free_figure(full).axes[0].get_title()


def test_retraining_free_lines_join_only_the_budgets_of_one_criterion(drawn):
    """Each criterion (each method: 'fisher (iterative)' is its own) is one line through its own budgets; a
    criterion with one budget is a point, not a line."""
    results, figs = drawn
    ax = figs["retraining_free.png"].axes[0]
    summary = results["retraining_free_summary"]
    for container in ax.containers:
        crit = container.get_label()
        line = container.lines[0]
        mine = sorted({e["keep_flops"] for e in summary if e["criterion"] == crit}, reverse=True)
        assert len(line.get_xdata()) == len(mine)
        assert list(line.get_xdata()) == pytest.approx(mine, abs=0.05)  # beside its budget, criteria side by side
        assert (line.get_linestyle() == "None") == (len(mine) == 1)


@pytest.mark.parametrize("missing", ["empty", "absent"])
def test_retraining_free_plot_is_skipped_without_pipeline_rows(missing, tmp_path):
    results = load("full_tiny")
    for key in ("retraining_free", "retraining_free_summary"):
        if missing == "empty":
            results[key] = []
        else:
            del results[key]
    written = {p.name for p in plots.write_plots(results, tmp_path).written}
    assert written == EVERY_PLOT - {"retraining_free.png"}


def test_a_run_without_structured_mode_gets_the_paper_mode_plots(tmp_path):
    results = load("quick")
    results.update(structured_mode=[], latency={}, structured_recovery=[], retraining_free=[],
                   retraining_free_summary=[])
    results["mask_analysis"]["plan_iou_matrix"] = None
    assert [p.name for p in plots.write_plots(results, tmp_path).written] == ["paper_accuracy.png", "mask_iou.png"]


def test_error_bars_never_go_negative_when_the_interval_excludes_its_point():
    """A range that excludes its mean (the `deepcuts run --quick` crash: one draw of 1,000 / 1,187 correct, whose
    mean was rounded to 6 digits while min and max were not) draws with zero-length bars, not an error."""
    from deepcuts_fast.job.pipeline_summary import pipeline_summary

    results = load("quick")
    one = pipeline_summary([{"keep_flops": 0.5, "criterion": "fisher", "accuracy": 1000 / 1187, "seed": 0}],
                           results["dense"]["accuracy"])[0]
    assert one["accuracy_min"] <= one["accuracy_mean"] <= one["accuracy_max"]  # the summary's range holds its mean
    above = {**one, "accuracy_mean": one["accuracy_max"] + 1e-7}  # as the summary used to round it
    outside = {**one, "keep_flops": 0.75, "accuracy_mean": 0.8, "accuracy_min": 0.82, "accuracy_max": 0.85}
    results["retraining_free_summary"] = [outside, above]
    ax = plots.retraining_free_figure(results).axes[0]
    (bars,) = ax.containers[0].lines[2]  # the errorbar's vertical bars, one segment per budget
    segments = [(low, high) for (_, low), (_, high) in bars.get_segments()]
    assert segments == [pytest.approx((0.8, 0.85)), pytest.approx((above["accuracy_mean"],) * 2)]


def _failing(monkeypatch, name: str) -> None:
    """Make the figure `name` raise a two-line error when drawn."""
    def boom(results):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(plots.FIGURES, name, (plots.FIGURES[name][0], boom))


def test_a_plot_that_raises_is_skipped_and_named(monkeypatch, tmp_path):
    _failing(monkeypatch, "kept_units.png")
    written, failed = plots.write_plots(load("full_tiny"), tmp_path)
    assert {p.name for p in written} == EVERY_PLOT - {"kept_units.png"} == {p.name for p in tmp_path.iterdir()}
    assert failed == {"kept_units.png": "RuntimeError: boom"}


def test_the_report_is_written_and_names_a_plot_that_raised(monkeypatch, tmp_path):
    """`MainJob.write`: results.json, the other plots and report.md are written; the failure is logged in one line
    and named near the top of the report, which links only the plots that exist."""
    from deepcuts_fast.job.run import MainJob

    results = load("quick")
    results.update(structured_mode=[], latency={}, structured_recovery=[], version="test", wall_seconds=1.0,
                   scoring_seconds={"all": 1.0}, steps={"reused": [], "computed": [], "seconds": {}}, goals=[],
                   verdicts={"paper_mode": "no"}, comparisons=[])
    results["dense"]["loss"] = 0.5
    results["mask_analysis"]["plan_iou_matrix"] = None
    _failing(monkeypatch, "mask_iou.png")
    logged: list[str] = []
    MainJob.write(SimpleNamespace(out=tmp_path, log=logged.append), results)
    assert json.loads((tmp_path / "results.json").read_text())["version"] == "test"
    assert {p.name for p in tmp_path.glob("*.png")} == {"paper_accuracy.png", "retraining_free.png"}
    assert logged == ["plot mask_iou.png skipped: RuntimeError: boom"]
    report = (tmp_path / "report.md").read_text()
    head = report.split("## Paper mode")[0]
    assert "**Plots not drawn:** `mask_iou.png` (RuntimeError: boom)." in head
    assert "](paper_accuracy.png)" in report and "](mask_iou.png)" not in report
    assert "matplotlib is not installed" not in report
