"""Export and loading of quantized denoisers."""
from .serialize import load_quantized, save_quantized

__all__ = ["load_quantized", "save_quantized"]
