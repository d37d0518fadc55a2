"""Planning: unit scores -> which heads and FFN neurons to keep."""
from .plan import Plan, check_scores, plan
from .rank_match import rank_match
from .rearrange import rearrange

__all__ = ["Plan", "check_scores", "plan", "rank_match", "rearrange"]
