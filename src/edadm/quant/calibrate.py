"""Scale initialisation on calibration data (no reconstruction): the naive PTQ step."""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calib import CalibrationSet
from .quantizer import ActObserver
from .wrap import quant_modules, set_quant_state

log = logging.getLogger("edadm")


@torch.no_grad()
def init_weight_ranges(model: nn.Module, method: str = "mse", p: float = 2.4) -> None:
    """Per-output-channel weight ranges of every quantized layer."""
    for _, mod in quant_modules(model):
        mod.weight_quantizer.init_from_weight(mod.weight, method=method, p=p)


@torch.no_grad()
def init_act_ranges(model: nn.Module, calib: CalibrationSet, batch_size: int, method: str = "mse",
                    p: float = 2.4, seed: int = 0, progress: bool = True) -> None:
    """Per-tensor input ranges of every quantized layer, from one pass over the calibration set.

    The pass runs with weights quantized and activations in float, so each layer sees the
    inputs the weight-quantized model produces. Observers keep bounded samples per layer.
    """
    dev = next(model.parameters()).device
    mods = [(n, m) for n, m in quant_modules(model) if m.act_quantizer is not None]
    for i, (_, m) in enumerate(mods):
        m.observer = ActObserver(seed=seed + i)
    set_quant_state(model, weight=True, act=False)
    try:
        for x, t in tqdm(list(calib.batches(batch_size)), desc="activation ranges", disable=not progress):
            model(x.to(dev), t.to(dev))
        for _, m in mods:
            lo, hi = m.observer.range(m.act_quantizer.bits, m.act_quantizer.symmetric, method=method, p=p)
            m.act_quantizer.set_range(lo, hi)
    finally:
        for _, m in mods:
            m.observer = None
        set_quant_state(model, weight=True, act=True)
