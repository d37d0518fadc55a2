"""The main job (`deepcuts run`): score every criterion, paper mode, structured mode, analysis, report."""
from .config import BASELINE_CRITERIA, DEEPCUTS_CRITERIA, FULL_CRITERIA, QUICK_CRITERIA, JobConfig
from .run import MainJob

RUN_FOLDER_KIND = "run"  # the manifest kind of a run folder, which a rerun resumes

__all__ = ["BASELINE_CRITERIA", "DEEPCUTS_CRITERIA", "FULL_CRITERIA", "JobConfig", "MainJob", "QUICK_CRITERIA", "RUN_FOLDER_KIND"]
