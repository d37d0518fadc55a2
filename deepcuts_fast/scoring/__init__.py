"""Scoring: criteria -> probes -> per-weight or per-unit `Scores` -> paper-style masks."""
from .criteria import CRITERIA, Criterion, Needs, get_criterion, register
from .layer_importance import layer_importance
from .masks import apply_masks, kept_fraction
from .options import ScoreOptions
from .runner import ScoreRun, score_run
from .score import score, score_many
from .scores import Scores

__all__ = ["CRITERIA", "Criterion", "Needs", "ScoreOptions", "ScoreRun", "Scores", "apply_masks", "get_criterion",
           "kept_fraction", "layer_importance", "register", "score", "score_many", "score_run"]
