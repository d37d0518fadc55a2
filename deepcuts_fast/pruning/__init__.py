"""Pruning: a Plan -> a physically smaller model, saved, loaded and exported."""
from .io import export_program, from_pretrained, save_pretrained
from .iterative import iterative_prune, select_and_refit
from .onnx_export import export
from .reconstruct import reconstruct
from .slicing import prune

__all__ = ["export", "export_program", "from_pretrained", "iterative_prune", "prune", "reconstruct", "save_pretrained",
           "select_and_refit"]
