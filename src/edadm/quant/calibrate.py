"""Scale initialisation on calibration data (no reconstruction): the naive PTQ step."""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calib import CalibrationSet
from .quantizer import ActObserver
from .wrap import act_quantizers, quant_modules, set_quant_state

log = logging.getLogger("edadm")


@torch.no_grad()
def init_weight_ranges(model: nn.Module, method: str = "mse", p: float = 2.4) -> None:
    """Per-output-channel weight ranges of every quantized layer (each split part alone)."""
    for _, mod in quant_modules(model):
        for wq, sl in mod.weight_quantizers():
            wq.init_from_weight(mod.weight[:, sl], method=method, p=p)


@torch.no_grad()
def init_act_ranges(model: nn.Module, calib: CalibrationSet, batch_size: int, method: str = "mse",
                    p: float = 2.4, seed: int = 0, progress: bool = True, kind: str = "free") -> None:
    """Per-tensor ranges of every activation quantizer, from one pass over the calibration set.

    The pass runs with weights quantized and activations in float, so each quantizer sees
    what the weight-quantized model produces. Observers keep bounded samples per quantizer.
    kind: "free" or "symmetric" range search (primitives.search_act_range).
    """
    dev = next(model.parameters()).device
    aqs = list(act_quantizers(model))
    for i, (_, q) in enumerate(aqs):
        q.observer = ActObserver(seed=seed + i)
    set_quant_state(model, weight=True, act=False)
    try:
        for args, kwargs in tqdm(list(calib.model_inputs(batch_size, dev)), desc="activation ranges",
                                 disable=not progress):
            model(*args, **kwargs)
        for name, q in aqs:
            if q.observer.count == 0:
                raise RuntimeError(f"activation quantizer {name} saw no data during calibration")
            lo, hi = q.observer.range(q.bits, q.symmetric, method=method, p=p, kind=kind)
            q.set_range(lo, hi)
    finally:
        for _, q in aqs:
            q.observer = None
        set_quant_state(model, weight=True, act=True)
