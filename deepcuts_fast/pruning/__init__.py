"""Pruning: a Plan -> a physically smaller model, saved, loaded and exported."""
from .io import export_program, from_pretrained, save_pretrained
from .onnx_export import export
from .reconstruct import reconstruct
from .slicing import prune

__all__ = ["export", "export_program", "from_pretrained", "prune", "reconstruct", "save_pretrained"]
