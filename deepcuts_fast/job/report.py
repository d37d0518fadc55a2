"""report.md of a main-job run: what was run, on what, how long it took, the tables, the answer to
the paper's claim, the quality goals (met or missed) and the plots."""
from __future__ import annotations

from pathlib import Path

from ..outputs import write_text
from ..stats import format_p, p_text, points
from .significance import multi_class
from ..benchmarking.deployment import deployment_table

PIPELINE_PLOT = "retraining_free.png"  # shown in the retraining-free section, not under Plots
PLOT_CAPTIONS = {
    "paper_accuracy.png": "Paper mode: test accuracy vs compression per criterion; hollow markers: after recovery "
                          "fine-tuning or lottery-ticket rewinding, where run.",
    "structured_speedup.png": "Structured mode: test accuracy after reconstruction vs measured speedup, one panel "
                              "per latency setting (its title names the machine and dtype), the x axis from 1x "
                              "(dense); the grey band around each budget's median is the timing noise, so points "
                              "inside it are ties; stars: recovery fine-tuned slim models.",
    "kept_units.png": "Heads and FFN neurons the global plans keep per layer; criteria that keep the same counts "
                      "(the default allocation takes every criterion's counts from Fisher) share one bar, and the "
                      "mark shows how many of the same heads they all keep.",
    PIPELINE_PLOT: "Retraining-free pipeline: test accuracy vs FLOPs kept, mean over the calibration draws with "
                   "min-max bars; on Rotten Tomatoes a black dash marks Kwon et al. 2022's code on the same split.",
    "mask_iou.png": "IoU of the kept weights between criteria (paper mode).",
    "plan_iou.png": "IoU of the kept heads + FFN neurons between criteria (structured mode).",
}


def _plot_lines(name: str) -> list[str]:
    """A plot's image and its one-line caption."""
    return [f"![{name}]({name})", "", f"*{PLOT_CAPTIONS[name]}*", ""]


def _f(value, fmt: str = "{:.4f}") -> str:
    return "" if value is None else fmt.format(value)


def _acc(results: dict, row: dict, key: str = "accuracy") -> str:
    """A row's accuracy, with its macro-F1 beside it on data of more than two classes: '0.8123 (F1 0.7990)'."""
    text = f"{row[key]:.4f}"
    f1 = row.get(key.replace("accuracy", "macro_f1"))
    return text + (f" (F1 {f1:.4f})" if f1 is not None and multi_class(results) else "")


def _ci(low: float | None, high: float | None, fmt: str = "{:+.4f}") -> str:
    return "" if low is None else f" [{fmt.format(low)}, {fmt.format(high)}]"


def _paper_table(results: dict) -> list[str]:
    comps = results["settings"]["compressions"]
    rec = {(r["criterion"], r["compression"]): r for r in results["paper_recovery"]}
    rew = {(r["criterion"], r["compression"]): r for r in results["paper_rewind"]}
    lines = ["| criterion | " + " | ".join(f"c={c:g}" for c in comps) + " |", "|---" * (len(comps) + 1) + "|",
             f"| dense | {_acc(results, results['dense'])} |" + " |" * (len(comps) - 1)]
    for crit in results["settings"]["criteria"]:
        cells = []
        for c in comps:
            row = next(r for r in results["paper_mode"] if r["criterion"] == crit and r["compression"] == c)
            cell = _acc(results, row)
            if (crit, c) in rec:
                cell += f" / {_acc(results, rec[(crit, c)])}"
            if (crit, c) in rew:
                cell += f" / rewound {_acc(results, rew[(crit, c)])}"
            cells.append(cell)
        lines.append(f"| {crit} | " + " | ".join(cells) + " |")
    return lines


def _structured_table(results: dict) -> list[str]:
    tags = list(results["latency"])
    lines = ["| criterion | keep_flops | single shot | reconstructed | params | FLOP ratio | "
             + " | ".join(f"speedup {t}" for t in tags) + " |", "|---" * (6 + len(tags)) + "|"]
    for r in results["structured_mode"]:
        lines.append(f"| {r['criterion']} | {r['keep_flops']:g} | {_acc(results, r)} | "
                     f"{_acc(results, r, 'accuracy_reconstructed')} | {r['params']:,} | {r['flop_ratio']:.2f}x | "
                     + " | ".join(_f(r.get(f'speedup_{t}'), "{:.2f}x") for t in tags) + " |")
    return lines


def _latency_table(results: dict) -> list[str]:
    lines = ["| setting | dense median (ms) | IQR (ms) | runs | fastest slim (ms) |", "|---|---|---|---|---|"]
    warnings = []
    for tag, rows in results["latency"].items():
        fastest = min(rows[1:], key=lambda r: r["median_ms"]) if len(rows) > 1 else None
        dense = rows[0]
        lines.append(f"| {tag} | {dense['median_ms']:.1f} | {_f(dense.get('iqr_ms'), '{:.1f}')} | "
                     f"{dense.get('repeats', '')} | "
                     + (f"{fastest['median_ms']:.1f} ({fastest['model']}, {fastest['speedup']:.2f}x)" if fastest else "")
                     + " |")
        warnings += [f"{tag}: {w}" for w in dense.get("warnings", [])]
    return lines + ([""] + [f"Warning: {w}." for w in warnings] if warnings else [])


def _pipeline_section(results: dict) -> list[str]:
    rows, summary = results.get("retraining_free") or [], results.get("retraining_free_summary") or []
    if not rows:
        return []
    s = results["settings"]
    seeds = sorted({r["seed"] for r in rows})
    examples = rows[0].get("calibration_examples")  # older results: the reconstruction draw's size
    examples_text = (f"{examples:,} training examples (all of them score and reconstruct)" if examples else
                     f"{s['reconstruction_examples_used']} training examples (the first {s['calibration_examples']} "
                     "score, all of them reconstruct)")
    compared = any(e.get("vs_fisher") or e.get("vs_one_shot") for e in summary)
    out = ["### Retraining-free pipeline", "",
           "`dc.prune_without_retraining`: the criterion's unit scores rank-matched to Fisher inside each layer, "
           "one global FLOP search, Fisher mask rearrangement, physical pruning, layer-wise least-squares "
           "reconstruction (the one-shot method)"
           + ("; rows marked (iterative) use `method=\"iterative\"` instead: the search's per-layer counts, each "
              "sublayer's units chosen bottom-up on the partly pruned model by the output error their removal leaves "
              "and its output projection refit before the next (the counts are the Fisher-referenced search's for "
              "every criterion, so this method runs once, as Fisher); rows marked (iterative-criterion) choose the "
              "units by the criterion's own ranking instead (`selection=\"criterion\"`)"
              if any(r.get("method", "one-shot") != "one-shot" for r in rows) else "")
           + ". " + (f"Each calibration draw (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1
                                 else f"The calibration draw (seed {seeds[0]})") + f" takes its own {examples_text}"
           "; one unit-scoring pass per draw serves every criterion. Accuracy over the "
           "draws: mean [min, max]" + (" (F1: mean macro-F1)" if multi_class(results) else "") + "; below dense: the "
           "mean drop in points with its 95% paired-bootstrap interval over the test examples and McNemar's p, each "
           "example's correctness averaged over the draws (pooled)"
           + ("; vs Fisher (one-shot Fisher for one-shot rows, Fisher's iterative row for iterative ones) and iterative "
              "vs one-shot (the same criterion): the difference in "
              "points, pooled the same way, named better only where significant at 0.05, else a tie" if compared
              else "") + ". In bold the row chosen per budget, the best "
           f"mean on the {s.get('selection_split', 'test')} split.", "",
           "| keep_flops | criterion | draws | accuracy | below dense (points, mean [95% CI], p) |"
           + (" vs Fisher | iterative vs one-shot |" if compared else ""),
           "|---|---|---|---|---|" + ("---|---|" if compared else "")]
    for e in summary:
        cell = f"{e['accuracy_mean']:.4f} [{e['accuracy_min']:.4f}, {e['accuracy_max']:.4f}]"
        if e.get("macro_f1_mean") is not None and multi_class(results):
            cell += f" (F1 {e['macro_f1_mean']:.4f})"
        name = f"**{e['criterion']}**" if e["winner"] else e["criterion"]
        ci = e.get("drop_points_ci")
        drop = f"{e['drop_points_mean']:+.2f}" + (_ci(*ci, fmt="{:+.2f}") + f", {p_text(e['p_vs_dense'])}"
                                                  if ci else "")
        out.append(f"| {e['keep_flops']:g} | {name} | {e['draws']} | {cell} | {drop} |"
                   + (f" {_versus_cell(e.get('vs_fisher'))} | {_versus_cell(e.get('vs_one_shot'))} |" if compared
                      else ""))
    winners = [e for e in summary if e["winner"]]
    out += ["", _pipeline_winners(results, winners), ""]
    first = [r for r in rows if r["seed"] == seeds[0] and any(
        e["winner"] and (e["keep_flops"], e["criterion"]) == (r["keep_flops"], r["criterion"]) for e in winners)]
    out += [f"Kept units of the chosen criteria (seed {seeds[0]}):", "", "| keep_flops | criterion | heads per layer | "
            "FFN per layer |", "|---|---|---|---|"]
    out += [f"| {r['keep_flops']:g} | {r['criterion']} | {r['heads']} | {r['ffn']} |" for r in first]
    scoring: dict[int, float] = {}
    for r in rows:
        scoring.setdefault(r["seed"], r["score_seconds"])
    per_cell = sorted(r["timings"]["total"] for r in rows)
    out += ["", "Time: the shared scoring pass (" + ", ".join(dict.fromkeys([*s["pipeline_criteria"], "fisher"]))
            + ") took "
            + ", ".join(f"{v:.0f} s (seed {k})" for k, v in scoring.items()) + "; search, rearrangement, pruning "
            f"and reconstruction took a median {per_cell[len(per_cell) // 2]:.1f} s per (criterion, budget, draw).", ""]
    return out


def _versus_cell(c: dict | None) -> str:
    """'+1.20 [+0.35, +2.05] points, p=0.006, **cam-cut better**' (a - b), or '-' where nothing was compared."""
    if c is None:
        return "-"
    return f"{points(c)}, " + ("tie" if c["verdict"] == "tie" else f"**{c['verdict']} better**")


def _deployment_section(results: dict) -> list[str]:
    """The saved slim model against the dense one under every installed runtime and precision, each row also against
    the fastest dense variant of the same run, which is named with the fastest slim one."""
    d = results.get("deployment")
    if not d:
        return []
    if "skipped" in d:
        return ["## Deployment", "", f"Skipped: {d['skipped']}.", ""]
    rows = d["rows"]
    warnings = d["benchmark"].get("warnings") or []
    runtimes = ", ".join(dict.fromkeys(r["variant"].split()[1] for r in rows))
    return ["## Deployment", "",
            f"The saved slim model `{d['folder']}` ({d['criterion']}, keep_flops {d['keep_flops']:g}) against the "
            f"dense model, each built by every runtime installed here ({runtimes}) in every precision it offers on "
            "this machine (bf16 only where native; ORT int8: dynamic quantization per channel; OpenVINO int8: NNCF "
            f"calibrated on {d.get('calibration', 'random token ids')}), "
            f"all timed in one benchmark run at batch {rows[0]['batch']}, sequence {rows[0]['seq']}. Every row is "
            "compared with dense torch fp32 and with the fastest dense variant of the same run: the slim model has to "
            "beat what a user can already do with the dense one. Accuracy on the test split, each variant in its own "
            f"runtime. `deepcuts deploy --model {d['folder']} --data <your data> --out deployed` writes the fastest "
            "variant that predicts as torch does.", "",
            *deployment_table(d), *([""] + [f"Warning: {w}." for w in warnings] if warnings else []), ""]


def _pipeline_winners(results: dict, chosen: list[dict]) -> str:
    """Per budget: the chosen criterion against the runner-up, named the winner only where significantly better."""
    cmps = {c["setting"]: c for c in results.get("comparisons") or []
            if c["section"] == "retraining_free" and c["what"].startswith("chosen criterion vs runner-up")}
    parts = []
    for e in chosen:
        c = cmps.get(f"keep_flops {e['keep_flops']:g}")
        if c is None:  # no runner-up, or no per-example predictions to test with
            parts.append(f"{e['keep_flops']:g}: {e['criterion']} ({e['drop_points_mean']:+.2f} points below dense)")
        else:
            who = c["verdict"] if c["verdict"] != "tie" else f"tie ({c['a']} chosen)"
            parts.append(f"{e['keep_flops']:g}: {who}, {c['a']} vs {c['b']} {points(c)}")
    return "Winner per budget (the chosen criterion vs the runner-up; a winner only where significant at 0.05): " \
        + "; ".join(parts) + "."


def _embedding_section(results: dict) -> list[str]:
    """The base model pruned label-free as a sentence-embedding model: per budget how well the slim model keeps the
    dense one's embeddings, its fp32 speed and the goals; one line where the section was skipped."""
    e = results.get("embedding")
    if not e:
        return []
    head = ["## Sentence embeddings (label-free)", ""]
    if "skipped" in e:
        return [*head, f"Skipped: {e['skipped']}.", ""]
    s, rows = results["settings"], e["rows"]
    probe = ("probe: each model's logistic regression fitted on its own embeddings of those training texts with "
             "their labels, accuracy on the test texts, slim - dense in points with its 95% paired-bootstrap interval "
             "and McNemar's p" if e["probe_skipped"] is None else f"no probe ({e['probe_skipped']})")
    out = [*head, f"The job's base model `{e['model']}` as given (not the fine-tuned classifier, whose encoder has "
           f"moved), pruned by `dc.prune_without_retraining(..., objective=\"distill\")` from "
           f"{e['calibration_examples']:,} training texts with their labels dropped (one unit-scoring pass shared by "
           f"the budgets), no retraining. Each slim model against the dense one on the {e['test_examples']:,} test "
           f"texts, both pooled as the model's folder says ({e['pooling']}"
           + (", normalized" if e["normalize"] else "") + f", fp32): mean and lowest cosine between the two "
           f"embeddings of a text, NN@{rows[0]['k']} overlap among the test texts, {probe}. Latency: dense and slim "
           f"fp32 on the CPU at batch {s['latency_batch']}, sequence {s['seq_len_flops']}, median of interleaved "
           f"rounds [IQR]. Goals at keep_flops {e['goals'][0]['keep_flops']:g}: "
           + ", ".join(f"{g['name']} {g['target']}" for g in e["goals"]) + ".", "",
           f"| keep_flops | method | cosine | cosine_min | NN@{rows[0]['k']} | probe slim - dense | dense ms [IQR] | "
           "slim ms [IQR] | speedup | goals |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdicts = [f"{g['name']} {({True: 'PASS', False: 'MISS', None: 'not measured'})[g['met']]}"
                    for g in e["goals"] if g["keep_flops"] == r["keep_flops"]]
        out.append(f"| {r['keep_flops']:g} | {r['method']} | {r['cosine']:.4f} | {r['cosine_min']:.4f} | "
                   f"{r['overlap']:.4f} | {points(r['probe']) or '-'} | "
                   f"{r['dense_ms']:.1f} [{r['dense_iqr_ms']:.1f}] | {r['slim_ms']:.1f} [{r['slim_iqr_ms']:.1f}] | "
                   f"{r['speedup']:.2f}x | {', '.join(verdicts) or '-'} |")
    saved = next((r for r in rows if r["saved_to"]), None)
    if saved:
        out += ["", f"The keep_flops {saved['keep_flops']:g} slim model is saved as `{saved['saved_to']}` with the "
                "base folder's sentence-transformers files (`SentenceTransformer(folder, trust_remote_code=True)` "
                "loads it)."]
    return [*out, *([""] + [f"Warning: {w}." for w in e["latency_warnings"]] if e["latency_warnings"] else []), ""]


SECTION_NAMES = {"paper_mode": "paper mode", "structured_mode": "structured",
                 "structured_recovery": "structured, recovered", "retraining_free": "retraining-free"}


def _comparisons_section(results: dict) -> list[str]:
    """One compact table of the run's paired comparisons: difference, 95% interval, p and verdict."""
    cmps = results.get("comparisons") or []
    if not cmps:
        return []
    n = cmps[0]["n"]
    lines = ["## Paired comparisons (test split)", "",
             f"Each row compares two models on the same {n:,} test examples: A - B in accuracy points with its 95% "
             "paired-bootstrap interval (2,000 resamples of the examples) and McNemar's exact p-value; the verdict "
             "names the better model only where p < 0.05 and the interval excludes 0, otherwise it is a tie. Rows "
             "over calibration draws average each example's correctness over the draws first (pooled over draws).",
             "", "| section | setting | comparison | A | B | A - B (points) [95% CI] | p | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cmps:
        diff = f"{100 * c['diff']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"
        verdict = "tie" if c["verdict"] == "tie" else f"**{c['verdict']}**"
        lines.append(f"| {SECTION_NAMES.get(c['section'], c['section'])} | {c['setting']} | {c['what']} | "
                     f"{c['a']} {c['value_a']:.4f} | "
                     f"{c['b']} {c['value_b']:.4f} | {diff} | {format_p(c['p'])} | {verdict} |")
    return [*lines, ""]


def _sigma(settings: dict) -> str:
    """The Smooth-Cut noise level as set: '0.15 x each layer's output std' or '0.001 (absolute)'."""
    if settings.get("noise_scale", "absolute") == "relative":
        return f"{settings['noise_std']:g} x each layer's output std"
    return f"{settings['noise_std']:g} (absolute)"


def _finetune_note(settings: dict) -> str:
    ft = settings.get("finetune")
    if not ft:
        return ""
    how = "taken from the cache; it had taken" if ft["cached"] else "fine-tuned in this run in"
    return f" ({how} {ft['seconds']:.0f} s, {ft['steps']} steps in {ft['dtype']})"


def _precision_table(results: dict) -> list[str]:
    """Which dtype each step ran in, and why (decided from what this machine runs natively)."""
    precision = results.get("precision")
    if not precision:
        return []
    lines = ["| step | dtype | why |", "|---|---|---|"]
    lines += [f"| {step} | {p['dtype'] or '-'} | {p['reason']} |" for step, p in precision.items()]
    return [*lines, ""]


def _goals_table(results: dict) -> list[str]:
    lines = ["| goal | target | measured [95% CI] | p | result | detail |", "|---|---|---|---|---|---|"]
    for g in results["goals"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[g["met"]]
        ci = g.get("ci") or (None, None)
        p = "" if g.get("p") is None else format_p(g["p"])
        lines.append(f"| {g['goal']} | {g['target']} | {_f(g['measured'])}{_ci(*ci)} | {p} | {verdict} | "
                     f"{g['detail']} |")
    return lines


def _iou_table(matrix: list[list[float]], labels: list[str]) -> list[str]:
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for a, row in zip(labels, matrix)]
    return lines


def _selection_note(settings: dict) -> str:
    """Where the run's choices ("best", "winner", the saved slim models) were made."""
    if settings.get("selection_split") == "validation":
        return (f" (every best / winner choice is made on the {settings['validation_examples']:,} validation "
                "examples, then reported on the test split)")
    return " (no validation split: best / winner choices are made on the test split, so they are optimistic)"


def _failed_plots(failed: dict[str, str]) -> list[str]:
    """One line naming each plot that raised while drawn, with why, so a reader knows it is missing for a reason."""
    if not failed:
        return []
    return ["**Plots not drawn:** " + "; ".join(f"`{name}` ({why})" for name, why in failed.items())
            + ". Their numbers are in the tables below and in results.json.", ""]


def render(results: dict, plots: list[str], failed: dict[str, str] | None = None) -> str:
    """The report as markdown text; `failed`: the plots that raised (file name -> the error's first line)."""
    failed = failed or {}
    s, m, d = results["settings"], results["machine"], results["dense"]
    steps = results["steps"]
    out = ["# deepcuts run report", "",
           f"deepcuts-fast {results['version']} · data `{s['data']}` · {s['evaluation_examples']:,} held-out test "
           "examples" + _selection_note(s) + f" · calibration {s['calibration_examples']} examples "
           f"({s['calibration_batches']} batches of {s['batch_size']}, length {s['max_length']}), reconstruction "
           f"on {s['reconstruction_examples_used']} examples · noise N={s['noise_samples']}, sigma={_sigma(s)} · seed {s['seed']}", "",
           f"Machine: {m['processor']} ({m.get('isa', 'ISA not recorded')}), {m['logical_cpus']} logical CPUs "
           f"({m['threads']} torch threads), torch {m['torch']}, {m['platform']}"
           + (f", GPU {s['gpu']}" if s.get("gpu") else ", no GPU") + ".", "",
           *_failed_plots(failed),
           *_precision_table(results),
           f"Wall time {results['wall_seconds']:.0f} s in this invocation ({len(steps['computed'])} steps computed, "
           f"{len(steps['reused'])} reused from an earlier run); scoring all criteria took "
           f"{results['scoring_seconds']['all']:.1f} s; the steps took {sum(steps['seconds'].values()):.0f} s in all.",
           "", f"Dense fine-tuned model: accuracy **{d['accuracy']:.4f}**"
           + (f", macro-F1 {d['macro_f1']:.4f}" if d.get("macro_f1") is not None and multi_class(results) else "")
           + f", loss {d['loss']:.4f}" + _finetune_note(s) + ".", "",
           "## Paper mode", "",
           "Unstructured masks, top fraction of every prunable tensor (layer scope), compression counted over "
           "the encoder parameters. Cells: single shot"
           + (f" / after {s['recovery_epochs']:g} epoch of recovery fine-tuning with the mask fixed (lr "
              f"{s['recovery_lr']:g})" if results["paper_recovery"] else "")
           + (" / with lottery-ticket rewinding (surviving weights reset to the pre-fine-tuning model, then the "
              "original 1-epoch fine-tune with the mask fixed)" if results["paper_rewind"] else "") + ".", ""]
    out += _paper_table(results)
    out += ["", f"**Does the paper's claim hold (paper mode)?** {results['verdicts']['paper_mode']}", ""]
    if results["structured_mode"]:
        out += ["## Structured mode", "",
                f"Global plan from each criterion's unit scores (sum of the unit's weight scores) at a fraction of "
                f"the encoder FLOPs (sequence {s['seq_len_flops']}), the budget spent as `dc.plan` does by default "
                f"(each criterion's scores rank-matched to Fisher's from the same calibration pass, so layers and "
                f"unit types compare), physically pruned; single shot, then after "
                f"least-squares reconstruction of the output projections. Speedups: slim vs dense median latency at "
                f"batch {s['latency_batch']}, sequence {s['seq_len_flops']}, measured in one benchmark run per "
                f"setting on this machine.", ""]
        out += _structured_table(results)
        out += ["", *_latency_table(results), ""]
        if results["structured_recovery"]:
            out += [f"Best slim model per FLOP budget (chosen by reconstructed accuracy on the "
                    f"{s.get('selection_split', 'test')} split; saved next to this report):", "",
                    "| keep_flops | criterion | recovery epochs | accuracy | folder |", "|---|---|---|---|---|"]
            out += [f"| {r['keep_flops']:g} | {r['criterion']} | {r['epochs']:g} | {_acc(results, r)} | "
                    f"`{r['saved_to']}` |" for r in results["structured_recovery"]]
            out.append("")
        out += _deployment_section(results)
        out += _pipeline_section(results) + (_plot_lines(PIPELINE_PLOT) if PIPELINE_PLOT in plots else [])
        v = results["verdicts"]
        out += [f"**Does the paper's claim hold (structured mode, single shot)?** {v['structured_mode']}", "",
                f"After reconstruction: {v['structured_mode_reconstructed']}", ""]
    out += _embedding_section(results)
    out += _comparisons_section(results)
    out += ["## Quality goals (test split; the best criterion chosen on the "
            f"{s.get('selection_split', 'test')} split)", "", *_goals_table(results), ""]
    a = results["mask_analysis"]
    out += ["## Mask analysis", "",
            f"Layer-averaged IoU of the kept weights between criteria (paper mode, c={a['compression']:g}):", "",
            *_iou_table(a["weight_iou_matrix"], a["criteria"]), ""]
    if a.get("plan_iou_matrix"):
        out += [f"Layer-averaged IoU of the kept heads + FFN neurons (structured, keep_flops {a['keep_flops']:g}):",
                "", *_iou_table(a["plan_iou_matrix"], a["criteria"]), "",
                "Kept heads / FFN neurons per layer:", "", "| criterion | heads per layer | neurons per layer |",
                "|---|---|---|"]
        out += [f"| {c} | {[len(h) for h in k['heads']]} | {k['neurons_per_layer']} |"
                for c, k in a["kept_units"].items()]
        out.append("")
    if plots:
        out += ["## Plots", ""] + [line for p in plots if p != PIPELINE_PLOT for line in _plot_lines(p)]
    elif not failed:
        out += ["(Plots skipped: matplotlib is not installed.)", ""]
    return "\n".join(out)


def write_report(results: dict, plots: list[str], path: Path, failed: dict[str, str] | None = None) -> Path:
    """Write report.md atomically; `failed` names the plots that could not be drawn (see `render`)."""
    write_text(path, render(results, plots, failed), overwrite=True)
    return path
