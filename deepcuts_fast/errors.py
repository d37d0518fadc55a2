"""User-facing errors: one clear message that says what went wrong and what to do."""
from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable, Sequence
from typing import Any


class DeepCutsError(Exception):
    """An error caused by user input or environment; the CLI prints it as one line, no traceback."""


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's message (its type name when the message is empty), for
    one-line error reports that wrap another library's exception."""
    text = str(error).strip()
    return text.splitlines()[0] if text else (type(error).__name__ if isinstance(error, BaseException) else "")


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(what: str, value, choices: Sequence[str]) -> None:
    """Refuse a `value` outside `choices`: 'unknown WHAT 'x'. Did you mean 'y'? Choose one of: a, b'."""
    if value not in choices:
        raise DeepCutsError(f"unknown {what} {value!r}.{suggest(str(value), choices)} Choose one of: "
                            f"{', '.join(choices)}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 6, 4, 40, 40


def short_repr(value: Any) -> str:
    """A short repr of `value` for messages about arbitrary (possibly huge or deeply nested) input."""
    return _REPR.repr(value)
