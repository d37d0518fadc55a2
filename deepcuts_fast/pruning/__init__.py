"""Pruning: a Plan -> a physically smaller model, saved and loaded (ONNX export: `deepcuts_fast.export`)."""
from .io import export_program, from_pretrained, save_pretrained
from .iterative import iterative_prune, select_and_refit
from .reconstruct import reconstruct
from .slicing import prune

__all__ = ["export_program", "from_pretrained", "iterative_prune", "prune", "reconstruct", "save_pretrained",
           "select_and_refit"]
