"""The package version: the one place it is written (packaging reads it too, via pyproject.toml)."""
__version__ = "0.1.0"
