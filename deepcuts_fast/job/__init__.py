"""The main job (`deepcuts run`): score every criterion, paper mode, structured mode, analysis, report."""
from .config import BASELINE_CRITERIA, DEEPCUTS_CRITERIA, FULL_CRITERIA, QUICK_CRITERIA, JobConfig
from .run import MainJob

__all__ = ["BASELINE_CRITERIA", "DEEPCUTS_CRITERIA", "FULL_CRITERIA", "JobConfig", "MainJob", "QUICK_CRITERIA"]
