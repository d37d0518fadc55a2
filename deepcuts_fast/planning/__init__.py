"""Planning: unit scores -> which heads and FFN neurons to keep."""
from .allocate import check_scores, plan
from .calibrate import rank_match
from .plan import Plan
from .rearrange import rearrange

__all__ = ["Plan", "check_scores", "plan", "rank_match", "rearrange"]
