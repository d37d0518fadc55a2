"""deepcuts-fast: interpretability-based (DeepCuts) pruning scores for BERT-family encoders."""
from ._version import __version__

from .benchmarking import BenchmarkReport, benchmark
from .deploy import Deployed, Deployment, deploy, load_deployed
from .distill import distill
from .embedding_metrics import EmbeddingMetrics, evaluate_embeddings
from .errors import DeepCutsError
from .export import export
from .models import load_model, load_tokenizer
from .pipeline import prune_from_scores, prune_without_retraining
from .planning import Plan, plan
from .pruning import export_program, from_pretrained, prune, reconstruct, save_pretrained
from .scoring import (CRITERIA, ScoreOptions, ScoreRun, Scores, apply_masks, layer_importance, score, score_many,
                      score_run)
from .task import TaskModel, task_model
from .train import EvalResult, evaluate

__all__ = [
    "BenchmarkReport",
    "CRITERIA",
    "DeepCutsError",
    "Deployed",
    "Deployment",
    "EmbeddingMetrics",
    "EvalResult",
    "Plan",
    "ScoreOptions",
    "ScoreRun",
    "Scores",
    "TaskModel",
    "__version__",
    "apply_masks",
    "benchmark",
    "deploy",
    "distill",
    "evaluate",
    "evaluate_embeddings",
    "export",
    "export_program",
    "from_pretrained",
    "layer_importance",
    "load_deployed",
    "load_model",
    "load_tokenizer",
    "plan",
    "prune",
    "prune_from_scores",
    "prune_without_retraining",
    "reconstruct",
    "save_pretrained",
    "score",
    "score_many",
    "score_run",
    "task_model",
]
