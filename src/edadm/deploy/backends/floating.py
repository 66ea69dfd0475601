"""Float backends: the simulation's own arithmetic, on any device.

- ``float``: layers whose input the method keeps in float (the output conv): a float conv /
  linear with the weights dequantized from their codes.
- ``dequant``: the input quantize-dequantized with its static scale (one fused
  ``fake_quantize_per_tensor_affine`` kernel: float32 ``x * (1 / scale)``, round half to even,
  zero point, clamp, exactly the simulation's operations), then a float conv / linear with the
  weights rebuilt from the integer codes **once**, in the layer's compute dtype. This is the
  CUDA default: on an H200 ``torch._int_mm`` measured no faster than fp16 GEMMs at Stable
  Diffusion's shapes and cuDNN has no int8 convolution PyTorch can call, so the fastest exact
  path is fp16 / bf16 tensor-core math on the simulation's numbers. On CPUs it is the exact
  fallback where oneDNN's int8 kernels would saturate (docs/kernels.md).
"""
from __future__ import annotations

from . import Backend, Part, register


def _serves_float(part: Part, forced: bool) -> str | None:
    return "input kept in float by the method" if part.act is None else None


def _serves_dequant(part: Part, forced: bool) -> str | None:
    if part.act is None:
        return None
    if part.device.type == "cuda":
        return "fp16 / bf16 math on the simulation's numbers (faster than int8 GEMM on this GPU)"
    if part.device.type == "cpu":
        return "float32 from the integer codes"
    return f"no integer kernel for {part.kind} on {part.device.type}"


def _prepare(layer, i: int) -> dict:
    """dtype -> weight of part i rebuilt from its codes; the compute dtype's made now."""
    return {layer.compute_dtype: layer.dequantized_weight(i, layer.compute_dtype)}


def _weight(layer, i: int, state: dict, dtype):
    w = state.get(dtype)
    if w is None:  # a call in another dtype than the layer was cast to: one more copy, kept
        w = state[dtype] = layer.dequantized_weight(i, dtype)
    return w


def _run_float(layer, x, i, bias, state):
    return layer.float_op(x, _weight(layer, i, state, x.dtype), bias)


def _run_dequant(layer, x, i, bias, state):
    return layer.float_op(layer.qdq_input(x, i), _weight(layer, i, state, x.dtype), bias)


register(Backend("float", "float conv / linear on dequantized weights (input kept in float)", 0, _serves_float,
                 _prepare, _run_float))
register(Backend("dequant", "the simulation's arithmetic in float: fused input quantize-dequantize, weights "
                            "rebuilt from the codes once", 50, _serves_dequant, _prepare, _run_dequant))
