"""Scoring: criteria -> probes -> per-weight or per-unit `Scores` -> paper-style masks."""
from .calibration import ScoreRun, score_run
from .criteria import CRITERIA, Criterion, get_criterion
from .masks import apply_masks, kept_fraction
from .score import score, score_many
from .scores import Scores

__all__ = ["CRITERIA", "Criterion", "ScoreRun", "Scores", "apply_masks", "get_criterion", "kept_fraction", "score",
           "score_many", "score_run"]
