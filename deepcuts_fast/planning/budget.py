"""What a plan may be asked for, checked without a model: one budget (a fraction of FLOPs or of unit parameters,
fractions of heads and / or neurons, or a speedup) and a scope, and how far a plan may miss it.

Apart from `planner.py` so that a caller (the CLI, the pipeline) can refuse a bad budget before it loads anything,
and so that both knapsacks (`selection.py`, `speedup.py`) share one notion of "missed".
"""
from __future__ import annotations

import math
import numbers

from ..errors import DeepCutsError, short_repr
from ..scoring.options import Spelling, python_setting

SCOPES = ("global", "layer")

BUDGETS = ("keep_flops", "keep_params", "keep_heads", "keep_neurons")

TOLERANCE = 0.02  # of the dense cost: how far a plan may miss its budget (whole units) before `plan` warns
# (for a speedup: of the dense model's predicted time)

SLACK = 1e-9  # float noise when comparing fractions (and times, relative to the budget)


def check_budget(keep_flops: float | None = None, keep_params: float | None = None, keep_heads: float | None = None,
                 keep_neurons: float | None = None, speedup: float | None = None,
                 spell: Spelling = python_setting) -> tuple[str, dict[str, float]]:
    """(kind, asked): the one budget of a plan, checked without a model, so a caller can refuse it before loading
    anything. kind is "time" (`speedup`, a finite number >= 1, alone), "flops" or "params" (that fraction alone) or
    "fraction" (keep_heads and / or keep_neurons); asked maps each given budget's name to its value. Every fraction
    is in [0, 1]. `spell` writes the options' names in the messages (`python_setting`: the keywords)."""
    budgets = {"keep_flops": keep_flops, "keep_params": keep_params, "keep_heads": keep_heads,
               "keep_neurons": keep_neurons}
    speed = _asked_speedup(speedup, spell, budgets)
    if speed is not None:
        return "time", {"speedup": speed}
    asked = _asked_budgets(budgets, spell)
    return _budget_kind(asked, spell), asked


def check_scope(scope: str) -> None:
    """Refuse a scope other than SCOPES' ("global": over the whole encoder, "layer": inside every layer)."""
    if not isinstance(scope, str) or scope not in SCOPES:
        raise DeepCutsError(f"unknown scope {short_repr(scope)}; choose 'global' or 'layer'")


def _asked_budgets(budgets: dict[str, float | None], spell: Spelling) -> dict[str, float]:
    """The budgets given, by name, each checked to be a fraction in [0, 1]."""
    given = {n: v for n, v in budgets.items() if v is not None}
    if not given:
        names = [spell(n) for n in BUDGETS]
        raise DeepCutsError(f"give a target: {', '.join(names[:-1])} and/or {names[-1]} (or {spell('speedup')}, a "
                            "budget of time)")
    for n, v in given.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise DeepCutsError(f"{spell(n)} is a fraction in [0, 1], got {short_repr(v)}; pass a float such as 0.5")
        if not 0 <= v <= 1:
            raise DeepCutsError(f"{spell(n)} is a fraction in [0, 1], got {v:g}")
    return {n: float(v) for n, v in given.items()}


def _budget_kind(asked: dict[str, float], spell: Spelling) -> str:
    """"flops", "params" or "fraction" (heads and / or neurons), refusing a mix of cost budgets."""
    costs = [n for n in ("keep_flops", "keep_params") if n in asked]
    if costs:
        if len(asked) > 1:
            raise DeepCutsError(f"give one budget, not {' and '.join(spell(n) for n in asked)}")
        return costs[0][len("keep_"):]
    return "fraction"


def _asked_speedup(speedup, spell: Spelling, budgets: dict[str, float | None]) -> float | None:
    """`speedup` checked to be a finite number >= 1 and the only budget asked; None when it is not asked."""
    if speedup is None:
        return None
    given = [spell(name) for name, value in budgets.items() if value is not None]
    if given:
        raise DeepCutsError(f"give one budget, not {spell('speedup')} and {' and '.join(given)}: a speedup is itself "
                            "a budget (of time); drop the others or the speedup")
    if (isinstance(speedup, bool) or not isinstance(speedup, numbers.Real) or not math.isfinite(speedup)
            or speedup < 1):
        raise DeepCutsError(f"{spell('speedup')} is how many times faster than the dense model the slim one should "
                            f"run, a finite number >= 1; got {short_repr(speedup)}; pass e.g. {spell('speedup', 2.0)}")
    return float(speedup)
