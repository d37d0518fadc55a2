"""`deepcuts run`: the main job, step by step, each step resumable.

Dense evaluation -> scoring (every criterion, passes shared) -> paper mode (single shot, recovery,
rewinding) -> structured mode (plan, prune, reconstruct, latency, recovery) -> the retraining-free pipeline ->
sentence-embedding mode (the base model as given, pruned label-free, where it is a sentence-transformers one) -> mask
analysis -> results.json, plots and report.md under `out`, with the best slim model per FLOP budget saved next to
them.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .._version import __version__
from ..benchmarking.deployment import compare_deployment, onnx_ready
from ..benchmarking.runners import max_seq_len
from ..code_fingerprint import code_fingerprint
from ..hashing import model_fingerprint
from ..machine import machine_info
from ..outputs import write_text
from ..planning import Plan
from ..pruning import from_pretrained, save_pretrained
from ..scoring import Scores, score_many
from ..scoring.layout import model_layout
from ..task import TaskModel
from ..train import evaluate
from . import analysis, embedding_mode, held_out, paper_mode, structured_mode
from .config import JobConfig
from .goals import quality_goals, verdicts
from .plots import write_plots
from .report import write_report
from .pipeline_summary import pipeline_summary
from .significance import comparisons
from .step_precision import latency_dtypes, step_precisions
from .steps import StepStore


class MainJob:
    """One run of the main job on a task model and its data, writing into `out`."""

    def __init__(self, task: TaskModel, draw: Callable[[int, int], list], evaluation: held_out.HeldOut,
                 config: JobConfig, out: Path, data_name: str, progress: bool = True,
                 log: Callable[[str], None] = print):
        """`draw(seed, examples)`: that many shuffled labelled training examples, in batches. `config.seed`'s draw of
        `reconstruction_examples` serves paper and structured mode (its first `calibration_batches` score, all of it
        reconstructs); the pipeline takes draws of `pipeline_examples` on seeds `seed`, `seed + 1`, ...
        `evaluation`: the test batches every number is reported on, and the validation batches every choice
        is made on."""
        self.task, self.model, self.config, self.out = task, task.model, config, Path(out)
        self.draw = draw
        self.reconstruction = draw(config.seed, max(config.reconstruction_examples,
                                                    config.calibration_batches * config.batch_size))
        self.calibration, self.evaluation = self.reconstruction[:config.calibration_batches], evaluation
        self.progress, self.log = progress, log
        self.data_name = data_name
        self.seq_len = min(config.latency_seq, max_seq_len(self.model) or config.latency_seq)
        self.precision = step_precisions(config, task)
        self.train_dtype = self.precision["recovery fine-tunes"]["dtype"]
        self.reconstruct_dtype = self.precision["reconstruction"]["dtype"]
        context = {"model": model_fingerprint(self.model), "data": data_name, "config": config.to_dict(),
                   "precision": {step: p["dtype"] for step, p in self.precision.items()},  # reasons: report only
                   "data_code": code_fingerprint(("deepcuts_fast.data", "deepcuts_fast.models"))}  # makes the batches
        self.store = StepStore(self.out, context, log)
        self._scores: dict[str, Scores] | None = None
        self._train_batches: list | None = None
        self._reference: list[torch.Tensor] | None = None

    # -- shared, computed on demand (a fully resumed run needs neither) -------------------------------

    def scores(self) -> dict[str, Scores]:
        if self._scores is None:
            c = self.config
            start = time.perf_counter()
            self._scores = score_many(self.model, self.calibration, list(c.criteria), noise_samples=c.noise_samples,
                                      noise_std=c.noise_std, noise_scale=c.noise_scale, seed=c.seed, dtype=c.dtype,
                                      progress=self.progress)
            self.scoring_seconds = round(time.perf_counter() - start, 2)
            self.log(f"scored {len(c.criteria)} criteria in {self.scoring_seconds:.1f} s")
        return self._scores

    def reference(self) -> list[torch.Tensor]:
        """The dense model's last hidden states on the output-error batches, computed once."""
        if self._reference is None:
            self._reference = structured_mode.last_hidden(
                self.model, self.reconstruction[:structured_mode.ERROR_BATCHES])
        return self._reference

    def train_batches(self) -> list:
        if self._train_batches is None:
            self._train_batches = self.task.train_batches()
        return self._train_batches

    # -- steps ---------------------------------------------------------------------------------------

    def dense(self) -> dict:
        result = self.store.run("dense", lambda: evaluate(self.model, self.evaluation.test,
                                                          progress=self.progress).to_dict(),
                                code=("deepcuts_fast.train",))
        self.log(f"dense accuracy {result['accuracy']:.4f} on {result['n']} examples")
        return result

    def paper(self) -> list[dict]:
        """Paper mode: every criterion's per-layer masks at every compression, single shot."""
        return [self._single_shot(crit, c) for crit in self.config.criteria for c in self.config.compressions]

    def _single_shot(self, crit: str, c: float) -> dict:
        """The step of one criterion's single-shot masks at compression `c`, as a row."""
        r = self.store.run(f"paper-{crit}-c{c:g}", lambda: paper_mode.single_shot(
            self.model, self.scores()[crit], c, self.evaluation),
            code=("deepcuts_fast.job.paper_mode", "deepcuts_fast.scoring"))
        return self._row("paper", crit, "compression", c, r)

    def paper_recovery(self) -> list[dict]:
        """Paper mode's masks of the recovery criteria at the recovery compressions, then fine-tuned."""
        c = self.config
        return [self._recovery(crit, comp) for crit in c.recovery_criteria if crit in c.criteria
                for comp in c.recovery_compressions]

    def _recovery(self, crit: str, comp: float) -> dict:
        """The step of one criterion's masks at compression `comp`, fine-tuned, as a row."""
        c = self.config
        r = self.store.run(f"recovery-{crit}-c{comp:g}", lambda: paper_mode.recovered(
            self.model, self.scores()[crit], comp, self.train_batches(), self.evaluation,
            c.recovery_epochs, c.recovery_lr, c.seed, self.train_dtype, self.progress),
            code=("deepcuts_fast.job.paper_mode", "deepcuts_fast.scoring", "deepcuts_fast.task"))
        return self._row("recovered", crit, "compression", comp, r)

    def paper_rewind(self) -> list[dict]:
        c = self.config
        crits = [x for x in c.rewind_criteria if x in c.criteria]
        if not crits:
            return []
        if not self.task.can_rewind:
            self.log("rewinding skipped: the model was given fine-tuned, so its pre-fine-tuning weights are unknown")
            return []
        settings = self.task.finetune_settings()
        rows = []
        for crit in crits:
            r = self.store.run(f"rewind-{crit}-c{c.rewind_compression:g}", lambda: paper_mode.rewound(
                self.task.initial_model(), self.scores()[crit], c.rewind_compression, self.train_batches(),
                self.evaluation, settings, self.progress),
                code=("deepcuts_fast.job.paper_mode", "deepcuts_fast.scoring", "deepcuts_fast.task"))
            rows.append(self._row("rewound", crit, "compression", c.rewind_compression, r))
        return rows

    def structured(self) -> list[dict]:
        """Structured mode: every criterion's global plan at every FLOP budget, pruned, evaluated, reconstructed."""
        return [self._structured(crit, keep) for crit in self.config.criteria for keep in self.config.keep_flops]

    def _structured(self, crit: str, keep: float) -> dict:
        """The step of one criterion's slim model at `keep` of the FLOPs, as a row."""
        r = self.store.run(f"structured-{crit}-k{keep:g}", lambda: structured_mode.prune_and_evaluate(
            self.model, self.scores()[crit], keep, self.seq_len, self.reconstruction, self.evaluation,
            self.reference(), self.reconstruct_dtype),
            code=("deepcuts_fast.job.structured_mode", "deepcuts_fast.scoring"))
        return self._row("structured", crit, "keep_flops", keep, r)

    def _row(self, step: str, crit: str, setting: str, value: float, result: dict) -> dict:
        """A criterion's result at one `setting` ("compression" or "keep_flops") as a row of the results, logged as
        one line with its accuracy (and its accuracy after reconstruction, where the step reconstructs)."""
        where = f"{'c' if setting == 'compression' else setting}={value:<4g}"
        line = f"{step:<10s}{crit:>22s}  {where} accuracy {result['accuracy']:.4f}"
        if "accuracy_reconstructed" in result:
            line += f", reconstructed {result['accuracy_reconstructed']:.4f}"
        self.log(line)
        return {"criterion": crit, setting: value, **result}

    def latency(self, rows: list[dict]) -> dict:
        """Dense vs every slim model on this machine (fp32, and the fastest native dtype where it is not fp32;
        on the GPU too when there is one)."""
        c = self.config
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        plans = [r["plan"] for r in rows]
        out = {}
        for device in devices:
            for dtype in latency_dtypes(c, device):
                tag = dtype if device == "cpu" else f"{device}_{dtype}"
                out[tag] = self.store.run(f"latency-{tag}", lambda: structured_mode.latency(
                    self.model, rows, device, dtype, c.latency_batch, self.seq_len, c.latency_repeats),
                    code=("deepcuts_fast.job.structured_mode",), plans=plans, batch=c.latency_batch, seq=self.seq_len)
                for row, measured in zip(rows, out[tag][1:]):
                    row[f"latency_ms_{tag}"] = measured["median_ms"]
                    row[f"speedup_{tag}"] = measured["speedup"]
                self.log(f"latency {tag}: dense {out[tag][0]['median_ms']:.1f} ms at batch {c.latency_batch}, "
                         f"seq {self.seq_len}")
        return out

    def structured_recovery(self, rows: list[dict]) -> list[dict]:
        """Per FLOP budget: the best reconstructed slim model, fine-tuned (full run) and saved."""
        c = self.config
        out = []
        for keep in c.keep_flops:
            best = held_out.best([r for r in rows if r["keep_flops"] == keep], "accuracy_reconstructed")
            folder = self.out / f"slim-keep{keep:g}"
            recover = c.structured_recovery_epochs > 0 and keep in c.structured_recovery_keeps

            def compute(best=best, folder=folder, recover=recover):
                slim = structured_mode.rebuild(self.model, best, self.reconstruction, self.reconstruct_dtype)
                result = {"accuracy": best["accuracy_reconstructed"], "epochs": 0.0,
                          "macro_f1": best.get("macro_f1_reconstructed"),
                          "predictions": best.get("predictions_reconstructed")}
                if recover:
                    result = structured_mode.recover(slim, self.train_batches(), self.evaluation,
                                                     c.structured_recovery_epochs, c.recovery_lr, c.seed,
                                                     self.train_dtype, self.progress)
                save_pretrained(slim, folder, tokenizer=self.task.tokenizer, plan=Plan.from_dict(best["plan"]),
                                overwrite=True)
                return result

            r = self.store.run(f"slim-keep{keep:g}", compute, code=(
                "deepcuts_fast.job.structured_mode", "deepcuts_fast.planning", "deepcuts_fast.pruning",
                "deepcuts_fast.task"), plan=best["plan"], recover=recover)
            out.append({"criterion": best["criterion"], "keep_flops": keep, "saved_to": folder.name,
                        "speedup_fp32": best.get("speedup_fp32"), **r})
            self.log(f"best slim at keep_flops={keep:g}: {best['criterion']}, accuracy {r['accuracy']:.4f} "
                     f"after {r['epochs']:g} epochs of recovery -> {folder}")
        return out

    def deployment(self, saved: list[dict]) -> dict:
        """The saved slim model of `deploy_keep` against the dense one: torch and ONNX Runtime, fp32 and int8 (and
        torch bf16 where native), timed in one benchmark run at the latency batch, each with its test accuracy."""
        c = self.config
        if c.deploy_keep is None:
            return {"skipped": "the run was configured without a deployment comparison (deploy_keep None)"}
        row = next((r for r in saved if r["keep_flops"] == c.deploy_keep), None)
        if row is None:
            return {"skipped": f"no slim model saved at keep_flops {c.deploy_keep} (the run's budgets: "
                               f"{', '.join(f'{k:g}' for k in c.keep_flops)})"}
        missing = onnx_ready()
        if missing:
            self.log(f"deployment comparison skipped: {missing}")
            return {"skipped": missing}

        def compute() -> dict:
            slim = from_pretrained(self.out / row["saved_to"])
            result = compare_deployment(self.model, slim, self.task.tokenizer, test=self.evaluation.test,
                                        calibration=self.calibration,  # OpenVINO int8 on reviews, not random ids
                                        batch_sizes=(c.latency_batch,), seq_len=self.seq_len,
                                        repeats=c.latency_repeats, log=self.log)
            return {"keep_flops": c.deploy_keep, "criterion": row["criterion"], "folder": row["saved_to"], **result}

        result = self.store.run(f"deployment-k{c.deploy_keep:g}", compute,
                                code=("deepcuts_fast.benchmarking", "deepcuts_fast.export", "deepcuts_fast.pruning"),
                                saved=row, batch=c.latency_batch, seq=self.seq_len)
        best = min(result["rows"], key=lambda r: r["median_ms"])
        self.log(f"deployment: fastest is {best['variant']}, {best['speedup']:.2f}x dense torch fp32")
        return result

    def pipeline(self) -> list[dict]:
        """`dc.prune_without_retraining` per calibration draw, FLOP budget, method and criterion (one-shot: global
        search, rearrangement, reconstruction; iterative: the search's counts, units chosen and refit bottom-up);
        one shared unit-scoring pass per draw serves them all."""
        c = self.config
        rows = []
        for seed in range(c.seed, c.seed + c.pipeline_draws):
            batches = self.draw(seed, c.pipeline_examples)
            drawn = _examples(batches)
            if seed == c.seed and drawn < c.pipeline_examples and c.pipeline_draws > 1:
                self.log(f"note: the training split has {drawn:,} examples, fewer than the {c.pipeline_examples:,} "
                         "of a pipeline draw: every draw takes all of them, so the draws' range shows no calibration "
                         "spread (lower --pipeline-examples for distinct draws)")
            shared = _SharedScores(self.model, batches, [*c.pipeline_criteria, "fisher"], c, seed, self.progress)
            for keep in c.pipeline_keep_flops:
                for crit, method in c.pipeline_runs():
                    one_shot = method == "one-shot"
                    r = self.store.run(f"pipeline-{crit}-k{keep:g}-seed{seed}" + ("" if one_shot else f"-{method}"),
                                       lambda: {**structured_mode.retraining_free(
                                           self.model, crit, keep, self.seq_len, shared.scores(), batches,
                                           self.evaluation, self.reconstruction[:structured_mode.ERROR_BATCHES],
                                           self.reference(), self.reconstruct_dtype, method),
                                           "score_seconds": shared.seconds},
                                       code=("deepcuts_fast.job.structured_mode", "deepcuts_fast.pipeline",
                                             "deepcuts_fast.scoring"))
                    label = crit if one_shot else f"{crit} ({method})"
                    rows.append({"criterion": label, "method": method, "keep_flops": keep, "seed": seed,
                                 "calibration_examples": drawn, **r})
                    self.log(f"pipeline  {label:>22s}  keep_flops={keep:<4g} seed {seed}  accuracy {r['accuracy']:.4f}")
        return rows

    def embedding(self) -> dict:
        """The job's base model as given, where it is a sentence-embedding model, pruned label-free at every
        `embedding_keep_flops` and measured against itself (`embedding_mode`); `{"skipped": why}` otherwise."""
        c = self.config
        skipped = embedding_mode.skip_reason(self.task.base, c.embedding_keep_flops)
        if skipped:
            self.log(f"sentence embeddings skipped: {skipped}")
            return {"skipped": skipped}
        mode = embedding_mode.EmbeddingMode(self.task.base, self.draw, self.evaluation.test, c, self.seq_len,
                                            self.reconstruct_dtype, self.progress)
        rows = [self.store.run(f"embedding-k{keep:g}", lambda keep=keep: mode.prune(keep, self.out),
                               code=("deepcuts_fast.job.embedding_mode", "deepcuts_fast.embedding_metrics",
                                     "deepcuts_fast.pipeline", "deepcuts_fast.scoring"),
                               base=self.task.base) for keep in c.embedding_keep_flops]
        timed = self.store.run("embedding-latency", lambda: mode.latency(rows), code=(
            "deepcuts_fast.job.embedding_mode", "deepcuts_fast.job.structured_mode"),
            plans=[r["plan"] for r in rows], batch=c.latency_batch, seq=self.seq_len)
        for r, t in zip(rows, timed[1:]):
            self.log(f"embedding keep_flops={r['keep_flops']:<4g} cosine {r['cosine']:.4f}, NN@{r['k']} "
                     f"{r['overlap']:.4f}, {t['speedup']:.2f}x dense fp32")
        return embedding_mode.summary(self.task.base, rows, timed)

    def mask_analysis(self, rows: list[dict]) -> dict:
        c = self.config
        crits = list(c.criteria)

        def weights():
            masks = {crit: paper_mode.paper_masks(self.scores()[crit], c.iou_compression) for crit in crits}
            return analysis.weight_mask_iou(masks, model_layout(self.model))

        pairwise = self.store.run(f"iou-c{c.iou_compression:g}", weights, code=(
            "deepcuts_fast.job.analysis", "deepcuts_fast.job.paper_mode", "deepcuts_fast.scoring"))
        plans = {r["criterion"]: r["plan"] for r in rows if r["keep_flops"] == c.iou_keep_flops}
        plan_pairs = analysis.plan_iou(plans) if len(plans) == len(crits) else {}
        return {"criteria": crits, "compression": c.iou_compression, "weight_iou": pairwise,
                "weight_iou_matrix": analysis.mean_matrix(pairwise, crits),
                "keep_flops": c.iou_keep_flops, "plan_iou": plan_pairs,
                "plan_iou_matrix": analysis.mean_matrix(plan_pairs, crits) if plan_pairs else None,
                "kept_units": {crit: {"heads": p["heads"], "neurons_per_layer": [len(n) for n in p["neurons"]]}
                               for crit, p in plans.items()}}

    # -- the whole run -------------------------------------------------------------------------------

    def run(self) -> dict:
        start = time.perf_counter()
        results = {"version": __version__, "machine": machine_info(), "settings": self._settings(),
                   "precision": self.precision}
        results["dense"] = self.dense()
        results["paper_mode"] = self.paper()
        results["paper_recovery"] = self.paper_recovery()
        results["paper_rewind"] = self.paper_rewind()
        rows = self.structured()
        results["latency"] = self.latency(rows)
        results["structured_mode"] = rows
        results["structured_recovery"] = self.structured_recovery(rows)
        results["deployment"] = self.deployment(results["structured_recovery"])
        results["retraining_free"] = self.pipeline()
        results["retraining_free_summary"] = pipeline_summary(results["retraining_free"], results["dense"])
        results["embedding"] = self.embedding()
        results["mask_analysis"] = self.mask_analysis(rows)
        results["scoring_seconds"] = self.store.run("scoring", lambda: {"all": self._scoring_seconds()},
                                                    code=("deepcuts_fast.scoring",))
        results["goals"] = quality_goals(results)
        results["verdicts"] = verdicts(results)
        results["comparisons"] = comparisons(results)
        results["steps"] = {"reused": self.store.reused, "computed": self.store.computed,
                            "seconds": self.store.seconds}
        results["wall_seconds"] = round(time.perf_counter() - start, 1)
        self.write(results)
        return results

    def _scoring_seconds(self) -> float:
        self.scores()
        return self.scoring_seconds

    def _settings(self) -> dict:
        return {**self.config.to_dict(), "data": self.data_name, "model_can_rewind": self.task.can_rewind,
                "calibration_examples": _examples(self.calibration),
                "reconstruction_examples_used": _examples(self.reconstruction),
                "evaluation_examples": _examples(self.evaluation.test),
                "validation_examples": None if self.evaluation.validation is None else _examples(
                    self.evaluation.validation),
                "selection_split": self.evaluation.selection_split, "seq_len_flops": self.seq_len,
                "scope_paper": "layer", "params_counted": "encoder", "scope_structured": "global",
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "finetune": _finetune_summary(self.task)}

    def write(self, results: dict) -> None:
        """results.json first, then the plots and report.md under `out` (each written atomically); a plot that
        raises is logged and named in the report, never fatal to it."""
        write_text(self.out / "results.json", json.dumps(results, indent=1), overwrite=True)
        plots = write_plots(results, self.out)
        for name, why in plots.failed.items():
            self.log(f"plot {name} skipped: {why}")
        write_report(results, [p.name for p in plots.written], self.out / "report.md", plots.failed)


def _examples(batches: list) -> int:
    """Labelled examples in a list of batches."""
    return sum(len(b["labels"]) for b in batches)


class _SharedScores:
    """Unit scores of several criteria from one scoring pass, made on first use (a resumed run may need none)."""

    def __init__(self, model, batches: list, criteria: list[str], config: JobConfig, seed: int, progress: bool):
        self.model, self.batches, self.criteria, self.config, self.seed = model, batches, criteria, config, seed
        self.progress = progress
        self.seconds: float | None = None
        self._scores: dict[str, Scores] | None = None

    def scores(self) -> dict[str, Scores]:
        if self._scores is None:
            start = time.perf_counter()
            self._scores = score_many(self.model, self.batches, list(dict.fromkeys(self.criteria)), granularity="unit",
                                      noise_samples=self.config.noise_samples, noise_std=self.config.noise_std,
                                      noise_scale=self.config.noise_scale, seed=self.seed, dtype=self.config.dtype, progress=self.progress)
            self.seconds = round(time.perf_counter() - start, 2)
        return self._scores


def _finetune_summary(task: TaskModel) -> dict | None:
    """How the task model was fine-tuned by this package (None when it was given fine-tuned)."""
    info = task.finetune_info
    if info is None:
        return None
    return {"cached": task.cached, "seconds": info.get("seconds"), "steps": info.get("steps"),
            "dtype": task.finetune_dtype}

