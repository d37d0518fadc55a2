"""Planning: unit scores -> which heads and FFN neurons to keep."""
from .allocate import check_scores, plan
from .plan import Plan

__all__ = ["Plan", "check_scores", "plan"]
