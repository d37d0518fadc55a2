"""What one main-job run does: the criteria, the grids and the budgets of each stage.

`JobConfig.quick()` is the reduced grid of `deepcuts run --quick` (minutes on 2 CPU cores);
`JobConfig.full()` is the whole comparison (about two hours there, estimated from its steps' times;
`with_full_pipeline()` on the quick grid, an hour; README gives measured times).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# The quick grid leaves out the random control (always near the majority class; the full grid keeps
# it): every criterion costs five test-set evaluations, the bulk of a quick run's time.
QUICK_CRITERIA = ("magnitude", "gradient", "cam-cut", "smooth-cut")
FULL_CRITERIA = ("magnitude", "gradient", "cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut",
                 "smooth-cam-cut-shift", "random")
PIPELINE_METHODS = {"one-shot": ("one-shot", "output"), "iterative": ("iterative", "output"),
                    "iterative-criterion": ("iterative", "criterion")}
"""The job's pipeline methods: (`method`, `selection`) of `dc.prune_without_retraining`."""
DEEPCUTS_CRITERIA = ("cam-cut", "cam-cut-shift", "smooth-cut", "smooth-cam-cut", "smooth-cam-cut-shift")
BASELINE_CRITERIA = ("magnitude", "gradient")


@dataclass(frozen=True)
class JobConfig:
    """Every setting that changes a number of the run (recorded in results.json and the report)."""

    criteria: tuple[str, ...] = FULL_CRITERIA
    compressions: tuple[float, ...] = (2.0, 3.0, 3.5, 4.0)  # paper mode, layer scope, encoder params
    keep_flops: tuple[float, ...] = (0.75, 0.5, 0.33)  # structured mode, global plan
    calibration_batches: int = 32
    batch_size: int = 16
    max_length: int = 64
    noise_samples: int = 10
    # The smooth criteria's noise, paper mode and structured mode alike (one scoring pass): 0.15 of each prunable
    # output's std, SmoothGrad's advice; the paper's absolute 1e-3 leaves Smooth-Cut's masks equal to the gradient
    # criterion's, and is reproduced with noise_scale="absolute", noise_std=1e-3 (deepcuts run --noise-scale ...).
    noise_scale: str = "relative"
    noise_std: float = 0.15
    seed: int = 0
    reconstruction_examples: int = 512  # least-squares refit data (fewer over-fits the FFN outputs)
    recovery_criteria: tuple[str, ...] = ("magnitude", "gradient", "cam-cut", "smooth-cut")
    recovery_compressions: tuple[float, ...] = (4.0,)
    recovery_epochs: float = 0.25  # paper-mode recovery fine-tune, masks held fixed
    recovery_lr: float = 5e-5
    rewind_criteria: tuple[str, ...] = ("cam-cut",)  # lottery-ticket rewinding
    rewind_compression: float = 4.0
    structured_recovery_epochs: float = 1.0  # of the best slim model at these budgets; 0 = none
    structured_recovery_keeps: tuple[float, ...] = (0.5,)
    pipeline_criteria: tuple[str, ...] = ("fisher", "cam-cut", "smooth-cut", "gradient", "magnitude")
    pipeline_draws: int = 3  # dc.prune_without_retraining per criterion and budget on seeds seed, seed+1, ...
    # Each pipeline draw's own training examples: all of them score and refit, as dc.prune_without_retraining does
    # with the batches it is given (2,048: the calibration set its quality targets are stated for).
    pipeline_examples: int = 2048
    pipeline_keep_flops: tuple[float, ...] = (0.5, 0.33, 0.25)  # the pipeline's FLOP budgets
    # The pipeline's methods, each a row "<criterion> (<method>)" (one-shot rows: just the criterion). "one-shot" runs
    # every pipeline criterion. "iterative" (units chosen by output error) runs once, as Fisher: its per-layer counts
    # are the Fisher-referenced search's, the same for every criterion, so its result does not depend on the
    # criterion. "iterative-criterion" (units chosen by the criterion's ranking) runs `iterative_ranked`.
    pipeline_methods: tuple[str, ...] = ("one-shot", "iterative", "iterative-criterion")
    iterative_ranked: tuple[str, ...] = ("cam-cut",)  # the DeepCuts criterion that leads the one-shot method at 0.33
    latency_batch: int = 32
    latency_seq: int = 128
    dtype: str = "auto"  # fine-tunes, scoring, reconstruction; "auto": as deepcuts_fast.precision decides
    latency_dtypes: tuple[str, ...] = ("fp32", "auto")  # auto: the fastest native dtype, dropped when it is fp32
    latency_repeats: int = 10  # at least; the benchmark also takes at least 1 s of runs per setting
    deploy_keep: float | None = 0.5  # the saved slim model of this budget vs dense, torch vs ONNX Runtime; None: skip
    # Sentence-embedding mode, where the job's base model is a sentence-transformers folder (the default `minilm`):
    # that model as given, pruned by `dc.prune_without_retraining(..., objective="distill")` on this many training
    # texts with the labels dropped, at these FLOP budgets (empty: skipped), with this method ("iterative": the better
    # mean cosine at half the FLOPs on all-MiniLM-L6-v2 in benchmarks/RESULTS.md, "Label-free pruning of an embedding
    # model").
    embedding_examples: int = 2000
    embedding_keep_flops: tuple[float, ...] = (0.5, 0.33)
    embedding_method: str = "iterative"
    iou_compression: float = 3.0  # paper-mode masks compared between criteria
    iou_keep_flops: float = 0.5  # structured plans compared between criteria

    @classmethod
    def full(cls, **overrides) -> "JobConfig":
        return replace(cls(), **overrides)

    @classmethod
    def quick(cls, **overrides) -> "JobConfig":
        """Fewer calibration batches and criteria, one FLOP budget, no recovery fine-tuning, one pipeline draw of
        512 examples (Fisher and the one-shot default, Cam-Cut), sentence embeddings pruned at 0.5 only from 512
        texts."""
        quick = cls(criteria=QUICK_CRITERIA, keep_flops=(0.5,), calibration_batches=8, recovery_criteria=(),
                    recovery_compressions=(), rewind_criteria=(), structured_recovery_epochs=0.0,
                    pipeline_criteria=("fisher", "cam-cut"), pipeline_draws=1, pipeline_examples=512,
                    pipeline_keep_flops=(0.5,), pipeline_methods=("one-shot", "iterative"), embedding_examples=512,
                    embedding_keep_flops=(0.5,))
        return replace(quick, **overrides)

    def with_full_pipeline(self) -> "JobConfig":
        """This config with the full grid's retraining-free pipeline (criteria, methods, budgets, draws, examples):
        `deepcuts run --quick --full-pipeline` measures the pipeline as the full run does, in far less time."""
        full = JobConfig()
        fields = ("pipeline_criteria", "pipeline_draws", "pipeline_examples", "pipeline_keep_flops", "pipeline_methods",
                  "iterative_ranked")
        return replace(self, **{f: getattr(full, f) for f in fields})

    def pipeline_runs(self) -> list[tuple[str, str]]:
        """(criterion, job method) of every pipeline row per budget and draw, in report order."""
        chosen = {"one-shot": self.pipeline_criteria, "iterative": ("fisher",),
                  "iterative-criterion": tuple(c for c in self.iterative_ranked if c in self.pipeline_criteria)}
        return [(crit, method) for method in self.pipeline_methods for crit in chosen[method]]

    def to_dict(self) -> dict:
        return asdict(self)
