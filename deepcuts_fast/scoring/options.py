"""`ScoreOptions`: every option of a scoring call in one validated, frozen object.

`score`, `score_many`, `score_run` and `deepcuts score` each build one (from `options=` or from their
keyword arguments) and pass it on; nothing below them re-reads or re-checks options.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..errors import DeepCutsError, check_choice
from ..kernels import BACKENDS
from ..precision import NAMES, parse_dtype
from .criteria import Criterion
from .objective import OBJECTIVES

GRANULARITIES = ("weight", "unit")
UNIT_METHODS = ("sum", "first-order")
NOISE_SCALES = ("relative", "absolute")
DEFAULT_NOISE_STD = {"relative": 0.15, "absolute": 1e-3}  # SmoothGrad's 10-20% of the scale; the paper's sigma
WEAK_RELATIVE_NOISE = 0.01  # relative sigmas below this barely perturb the gradients (warned)
BOOLEANS = ("train_mode", "sequential_noise", "include_padding", "with_fisher", "reference", "progress")

Spelling = Callable[..., str]
"""How a check's message writes an option: `spell(name)` its name, `spell(name, value)` a setting of it."""


def python_setting(name: str, *value: Any) -> str:
    """The library's spelling of an option in messages: `name`, or `name=value` (e.g. noise_scale='absolute').
    The checks that take a `spell` argument let a caller with other names (the command line's flags) pass its own."""
    return f"{name}={value[0]!r}" if value else name


@dataclass(frozen=True)
class ScoreOptions:
    """How to score. The first twelve fields decide the numbers: they are recorded in every result's
    meta and in checkpoint fingerprints; the rest say how the run goes.

    Smooth-Cut's noise: with `noise_scale="relative"` (the default) the noise added to a prunable Linear's
    output has standard deviation `noise_std` times that output's own standard deviation, measured per
    noise sample over the batch's real tokens (all channels) on the output before its noise is added;
    `noise_std` defaults to 0.15 there (SmoothGrad's 10-20% of the input's range). With
    `noise_scale="absolute"` the sigma is `noise_std` itself, 1e-3 by default (the paper's setting,
    which at the activations' scale of BERT-family models leaves Smooth-Cut's masks equal to the
    gradient criterion's); `reference=True` makes "absolute" the default. A relative `noise_std` must
    be > 0; an absolute one >= 0 (0: no noise).

    `objective` says what the gradients of the data-needing criteria differentiate: "labels" (cross-entropy, or
    MSE for one output, to the batches' labels through the model's trained head), "distill" (the dense model's
    own outputs: its logits, or a bare encoder's pooled embedding; see `deepcuts_fast.scoring.objective`), or
    "auto" (the default: labels when every batch has them and the model a trained head, else distill, said in
    one line). Each result's `meta["objective"]` records what ran.

    `with_fisher` (default on) adds Fisher's unit scores from the clean pass to every result scored
    with data (`Scores.fisher`), which `plan` needs to compare units across layers; it costs one
    clean pass when only the smooth criteria are asked for, and little otherwise.

    `reference=True` reproduces the original DeepCuts code and turns on `train_mode` (dropout on),
    `sequential_noise` (the N noise samples as N passes) and `include_padding` (activation means over
    padding tokens too). `dtype` is kept as its name ("auto", "fp32", "bf16", "fp16"); each pass
    records what "auto" resolved to.

    Every field is checked strictly, so a typo fails instead of being truncated or read as true: whole-number
    fields take ints (or floats without a fractional part, never bools), `noise_std` and `shift` finite numbers,
    `seed` an int in [0, 2**64), `max_memory` None or a positive number of bytes, the flags True or False.
    """

    granularity: str = "weight"
    unit_method: str = "sum"
    noise_samples: int = 10
    noise_std: float | None = None  # None: DEFAULT_NOISE_STD[noise_scale]
    noise_scale: str | None = None  # "relative": sigma = noise_std x the output's std; "absolute": sigma = noise_std;
    #                                  None: "relative", or "absolute" with `reference` (the original code's noise)
    shift: float = 10.0
    seed: int = 0
    dtype: str | torch.dtype | None = "auto"  # a name or torch dtype; None means "auto"; kept as its name
    train_mode: bool = False
    sequential_noise: bool = False
    include_padding: bool = False
    with_fisher: bool = True
    reference: bool = False
    backend: str = "auto"
    max_memory: int | None = None  # bytes for the stacked noisy batch; None: half the free GPU memory, or 4 GiB
    progress: bool = True
    objective: str = "auto"  # the loss the gradients come from (deepcuts_fast.scoring.objective); results' meta
    #                          records what it resolved to

    RECORDED: ClassVar[tuple[str, ...]] = ("granularity", "unit_method", "noise_samples", "noise_std",
                                           "noise_scale", "shift", "seed", "dtype", "train_mode",
                                           "sequential_noise", "include_padding", "with_fisher")

    def __post_init__(self) -> None:
        for name in ("granularity", "unit_method", "backend"):
            if not isinstance(getattr(self, name), str):
                raise DeepCutsError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.granularity not in GRANULARITIES:
            raise DeepCutsError(f"unknown granularity {self.granularity!r}; choose 'weight' or 'unit'")
        if self.unit_method not in UNIT_METHODS:
            raise DeepCutsError(f"unknown unit_method {self.unit_method!r}; choose 'sum' or 'first-order'")
        scale, sigma = check_noise(self.noise_std, self.noise_scale, self.reference)
        object.__setattr__(self, "noise_scale", scale)
        if scale == "relative" and sigma < WEAK_RELATIVE_NOISE:
            warnings.warn(f"noise_std={sigma:g} with noise_scale='relative' is {sigma:g} of each output's standard "
                          "deviation: too little to change the gradients, so the smooth criteria will give the "
                          "plain criteria's masks; SmoothGrad uses 0.1-0.2. For the paper's absolute sigma pass "
                          "noise_scale='absolute'", UserWarning, stacklevel=3)
        check_choice("objective", self.objective, OBJECTIVES)
        if self.backend not in BACKENDS:
            raise DeepCutsError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        for name in BOOLEANS:
            if not isinstance(getattr(self, name), bool):
                raise DeepCutsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        requested = parse_dtype(self.dtype)
        normal = dict(noise_samples=whole_number("noise_samples", self.noise_samples, minimum=1),
                      noise_std=sigma,
                      shift=real_number("shift", self.shift),
                      seed=check_seed(self.seed),
                      max_memory=None if self.max_memory is None else whole_number("max_memory", self.max_memory,
                                                                                   minimum=1),
                      dtype="auto" if requested is None else NAMES[requested])
        if self.reference:
            normal.update(train_mode=True, sequential_noise=True, include_padding=True)
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @property
    def unit(self) -> bool:
        """Whether heads and FFN neurons are scored rather than single weights."""
        return self.granularity == "unit"

    @property
    def first_order(self) -> bool:
        """Whether unit scores come from the activation statistics rather than from summed weight scores."""
        return self.unit and self.unit_method == "first-order"

    def recorded(self) -> dict:
        """The options that decide the numbers, as recorded in the scores' meta."""
        return {name: getattr(self, name) for name in self.RECORDED}

    @property
    def relative_noise(self) -> bool:
        """Whether the noise's sigma is `noise_std` times each output's standard deviation."""
        return self.noise_scale == "relative"

    def check_criteria(self, criteria: Sequence[Criterion]) -> None:
        """Refuse a criterion that cannot be scored at this granularity."""
        for c in criteria:
            if not self.unit and not c.per_weight:
                raise DeepCutsError(f"{c.name} scores heads and FFN neurons only; pass granularity='unit'")


def options_from(options: ScoreOptions | None, **keywords) -> ScoreOptions:
    """`options` when given, else the `ScoreOptions` the keywords spell; a keyword that contradicts
    `options` (neither its default nor the value in `options`) is an error."""
    given = ScoreOptions(**keywords)
    if options is None:
        return given
    if not isinstance(options, ScoreOptions):
        raise DeepCutsError(f"options must be a ScoreOptions, got {type(options).__name__}")
    default = ScoreOptions()
    clashes = [f.name for f in fields(ScoreOptions)
               if getattr(given, f.name) not in (getattr(default, f.name), getattr(options, f.name))]
    if clashes:
        raise DeepCutsError(f"{', '.join(clashes)} given both in options= and as keywords, with different values; "
                            "pass each option once")
    return options


def whole_number(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int when it is a whole number in [minimum, maximum] (an int, or a float without a fractional
    part; never a bool or a string), so that a typo like 2.7 or "2" fails instead of being truncated or compared."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise DeepCutsError(f"{name} must be a whole number{_bounds(minimum, maximum)}, got {value!r} "
                            f"({type(value).__name__}); pass an int")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise DeepCutsError(f"{name} must be a whole number{_bounds(minimum, maximum)}, got {number}")
    return number


def real_number(name: str, value, minimum: float | None = None, maximum: float | None = None) -> float:
    """`value` as a float when it is a finite real number in [minimum, maximum] (never a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DeepCutsError(f"{name} must be a finite number{_bounds(minimum, maximum)}, got {value!r} "
                            f"({type(value).__name__}); pass a float")
    number = float(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise DeepCutsError(f"{name} must be a finite number{_bounds(minimum, maximum)}, got {number:g}")
    return number


def check_noise(noise_std: Any, noise_scale: Any = None, reference: Any = False,
                spell: Spelling = python_setting) -> tuple[str, float]:
    """(scale, sigma) of the smooth criteria's noise, or the error: `noise_scale` "relative" or "absolute" (None:
    "relative", or "absolute" with `reference`, the original code's noise); `noise_std` None for the scale's
    default, else finite and > 0 when relative (a fraction of each output's standard deviation), >= 0 when
    absolute (0: no noise). Raises only; `ScoreOptions` warns about a relative sigma too small to matter."""
    scale = noise_scale if noise_scale is not None else ("absolute" if reference is True else "relative")
    if not isinstance(scale, str):
        raise DeepCutsError(f"{spell('noise_scale')} must be a string, got {scale!r}")
    if scale not in NOISE_SCALES:
        raise DeepCutsError(f"unknown {spell('noise_scale')} {scale!r}; choose 'relative' (sigma = noise_std x "
                            "each output's standard deviation) or 'absolute' (sigma = noise_std)")
    if noise_std is None:
        return scale, DEFAULT_NOISE_STD[scale]
    sigma = real_number(spell("noise_std"), noise_std, minimum=0)
    if scale == "relative" and sigma == 0:
        raise DeepCutsError(f"{spell('noise_std')} must be > 0 with {spell('noise_scale', 'relative')} (a fraction of "
                            "each output's standard deviation, e.g. 0.15); for no noise pass "
                            f"{spell('noise_scale', 'absolute')} and {spell('noise_std', 0)}")
    return scale, sigma


def check_seed(value, name: str = "seed") -> int:
    """The seed as an int in [0, 2**64), the range of the 64-bit noise and torch seeds (`name` says where it came
    from, e.g. a flag); every command's --seed is checked here too, so none reaches torch negative."""
    seed = whole_number(name, value, minimum=0)
    if seed >= 2**64:
        raise DeepCutsError(f"{name} must be below 2**64 (noise seeds are 64-bit), got {seed}")
    return seed


def _bounds(minimum: float | None, maximum: float | None) -> str:
    """' in [a, b]', ' >= a', ' <= b' or '' for an error message."""
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return "" if maximum is None else f" <= {maximum}"
