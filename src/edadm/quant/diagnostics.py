"""Per-layer quantization error of a fake-quantized denoiser, for the report.

For every quantized Conv2d / Linear, on one calibration batch run through the quantized
model (so each layer sees the inputs it really gets):
- weight: ||W_q - W||^2 / ||W||^2 against the full-precision weight;
- input: ||Q(x) - x||^2 / ||x||^2 of its activation quantizer(s);
- output: ||f(Q(x), W_q) - f(x, W)||^2 / ||f(x, W)||^2, the layer's own error given the
  same input (errors of earlier layers are not counted again).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modules import QConv2d, QuantMixin
from .wrap import quant_modules


def fp_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the quantized layers' weights, taken before reconstruction rounds them."""
    return {name: m.weight.detach().cpu().clone() for name, m in quant_modules(model)}


def _fp_forward(mod: QuantMixin, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, QConv2d):
        return mod._conv_forward(x, w, mod.bias)
    return F.linear(x, w, mod.bias)


@torch.no_grad()
def layer_errors(model: nn.Module, weights: dict[str, torch.Tensor], args: tuple, kwargs: dict | None = None) -> list[dict]:
    """Relative errors per quantized layer, in forward order, from one forward pass."""
    sums: dict[str, list[float]] = {}
    order: list[str] = []
    hooks = []

    def make_hook(name: str):
        def hook(mod: QuantMixin, inputs, out):
            x = inputs[0]
            w = weights[name].to(x.device, x.dtype)
            s = sums.setdefault(name, [0.0] * 4)
            if name not in order:
                order.append(name)
            s[0] += float((mod.quant_input(x) - x).pow(2).sum())
            s[1] += float(x.pow(2).sum())
            ref = _fp_forward(mod, x, w)
            s[2] += float((out - ref).pow(2).sum())
            s[3] += float(ref.pow(2).sum())
        return hook

    layers = dict(quant_modules(model))
    for name, mod in layers.items():
        if name in weights:
            hooks.append(mod.register_forward_hook(make_hook(name)))
    try:
        model(*args, **(kwargs or {}))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name in order:
        mod, s = layers[name], sums[name]
        w = weights[name].to(mod.weight.device)
        wq = mod.quant_weight()
        rows.append({"name": name, "kind": type(mod).__name__, "weight_bits": mod.spec.weight_bits,
                     "act_bits": mod.spec.act_bits, "split": bool(mod.split),
                     "weight": float((wq - w).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30)),
                     "input": s[0] / max(s[1], 1e-30) if mod.spec.act_bits else 0.0,
                     "output": s[2] / max(s[3], 1e-30)})
    return rows
