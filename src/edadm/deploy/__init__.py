"""Quantized directories: export (save), load, integer engine, ONNX export and runtimes."""
from .export import save_quantized
from .load import load_quantized

__all__ = ["load_quantized", "save_quantized"]
