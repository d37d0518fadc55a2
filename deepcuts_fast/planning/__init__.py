"""Planning: unit scores -> which heads and FFN neurons to keep."""
from .allocation import ALLOCATIONS
from .budget import check_budget
from .checks import check_scores
from .plan import Plan
from .planner import plan
from .rank_match import rank_match
from .rearrange import rearrange

__all__ = ["ALLOCATIONS", "Plan", "check_budget", "check_scores", "plan", "rank_match", "rearrange"]
