"""The `deepcuts` command line: one module per command (each declares its `COMMAND`: parser and run), which
parse flags and call the public API; `app.py` collects them, `parsing.py` and `flags.py` hold what they share."""
from .app import build_parser, main

__all__ = ["build_parser", "main"]
