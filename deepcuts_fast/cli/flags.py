"""Flag values checked before anything loads, and the flags' spelling of library options, which the library's
checks take (`spell=flag_setting`) so that its errors name the flags a user typed."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import DeepCutsError

# Value checks of numeric flags, by argparse dest; a command checks the ones it has.
AT_LEAST_ONE_FLAGS = ("seq_len", "multiple_of", "batches", "batch_size", "max_length", "noise_samples",
                      "calibration_examples", "limit")
AT_LEAST_ZERO_FLAGS = ("min_heads", "min_neurons")
LIBRARY_FLAGS = {"batches": "--data"}  # library options whose flag is not their name with '-' for '_'


def flag_setting(name: str, *value: Any) -> str:
    """A library option as the command line writes it: `flag_setting("keep_flops")` is --keep-flops,
    `flag_setting("scope", "layer")` is --scope layer, `flag_setting("rearrange", False)` is --no-rearrange."""
    flag = LIBRARY_FLAGS.get(name) or flag_of(name)
    if not value:
        return flag
    if isinstance(value[0], bool):
        return flag if value[0] else "--no-" + flag[2:]
    return f"{flag} {value[0]:g}" if isinstance(value[0], float) else f"{flag} {value[0]}"


def flag_of(dest: str) -> str:
    """The command-line spelling of an argparse dest: keep_flops -> --keep-flops."""
    return "--" + dest.replace("_", "-")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse out-of-range values of the numeric flags `args` has, naming the flag, so a command fails at once
    instead of after loading a model (and in Python keyword names); the noise and the seed as the library
    checks them."""
    from ..scoring.options import check_noise, check_seed

    given = {dest: value for dest, value in vars(args).items() if value is not None}
    for dest, least in [(d, 1) for d in AT_LEAST_ONE_FLAGS] + [(d, 0) for d in AT_LEAST_ZERO_FLAGS]:
        if dest in given and given[dest] < least:
            raise DeepCutsError(f"{flag_of(dest)} must be an integer >= {least}, got {given[dest]}")
    if "noise_scale" in vars(args):
        check_noise(args.noise_std, args.noise_scale, getattr(args, "reference", False), spell=flag_setting)
    if "seed" in given:
        check_seed(given["seed"], "--seed")
