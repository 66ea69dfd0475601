"""Sensitivity-based mixed precision (issue 36 item 5): keep the few low-bit layers whose
weight quantization moves the denoiser's output most at 8 bits, within a stated size budget.

EDA-DM's code quantizes every layer but the family's first and last at the same bits. Here,
before the layers are wrapped, each layer the plan puts below 8 weight bits is quantized
alone (weights only, per output channel, the run's range search; every other layer in
float) and the denoiser's output on a fixed slice of the calibration set compared with the
FP output: the relative MSE is the layer's sensitivity. Layers are then taken greedily by
sensitivity per extra byte (a layer of n weights costs n * (8 - bits) / 8 more bytes at 8
bits) while the extra bytes stay within `budget` x the quantized weights' size (codes only,
as packed on disk), the usual greedy answer to this knapsack (HAWQ-style selection, with a
measured output error standing in for the Hessian trace).

Cost: one denoiser forward pass over the slice per candidate layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..model.families import call_denoiser
from .modules import LayerSpec
from .quantizer import UniformQuantizer


@dataclass
class MixedChoice:
    """What the selection saw and chose."""

    sensitivity: dict[str, float]   # relative output MSE with only this layer's weights quantized
    extra_bytes: dict[str, float]   # bytes added by keeping this layer at 8 bits
    base_bytes: float               # weight-code bytes of the plan before the selection
    budget: float
    kept: list[str]                 # chosen, in the order taken

    @property
    def used_bytes(self) -> float:
        return sum(self.extra_bytes[n] for n in self.kept)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "base_bytes": self.base_bytes, "used_bytes": self.used_bytes,
                "kept": list(self.kept), "sensitivity": dict(self.sensitivity),
                "extra_bytes": dict(self.extra_bytes)}


def weight_bytes(plan: dict, model: nn.Module) -> float:
    """Bytes of the weight codes of every quantized layer in `plan` (bits / 8 per weight)."""
    return sum(model.get_submodule(n).weight.numel() * s.weight_bits / 8
               for n, s in plan.items() if isinstance(s, LayerSpec))


def _splits(spec: LayerSpec, w: torch.Tensor) -> list[slice]:
    return [slice(None)] if not spec.split else [slice(0, spec.split), slice(spec.split, None)]


@torch.no_grad()
def _quantized_weight(w: torch.Tensor, spec: LayerSpec, method: str, p: float) -> torch.Tensor:
    parts = []
    for sl in _splits(spec, w):
        q = UniformQuantizer(spec.weight_bits, spec.weight_symmetric, per_channel=True, channels=w.shape[0],
                             role="weight").to(w.device)
        q.init_from_weight(w[:, sl], method=method, p=p)
        parts.append(q(w[:, sl]))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


@torch.no_grad()
def layer_sensitivity(model: nn.Module, plan: dict, batches: list, method: str = "mse", p: float = 2.4,
                      progress: bool = True) -> dict[str, float]:
    """Relative output MSE of `model` (still in float) with only one layer's weights
    quantized as `plan` says, for every planned layer below 8 weight bits. `batches`:
    (args, kwargs) denoiser inputs."""
    fp = [call_denoiser(model, *a, **kw).float() for a, kw in batches]
    power = sum(float(o.pow(2).sum()) for o in fp) or 1.0
    names = [n for n, s in plan.items() if isinstance(s, LayerSpec) and s.weight_bits < 8]
    out = {}
    for name in tqdm(names, desc="layer sensitivity", unit="layer", disable=not progress):
        mod = model.get_submodule(name)
        w = mod.weight.data
        mod.weight.data = _quantized_weight(w, plan[name], method, p)
        try:
            err = sum(float((call_denoiser(model, *a, **kw).float() - f).pow(2).sum())
                      for (a, kw), f in zip(batches, fp))
        finally:
            mod.weight.data = w
        out[name] = err / power
    return out


def choose(sensitivity: dict[str, float], extra_bytes: dict[str, float], base_bytes: float,
           budget: float) -> list[str]:
    """Greedy: most sensitivity per extra byte first, each layer taken if it still fits."""
    left = budget * base_bytes
    kept = []
    for name in sorted(sensitivity, key=lambda n: (-sensitivity[n] / max(extra_bytes[n], 1e-9), n)):
        if sensitivity[name] > 0 and extra_bytes[name] <= left:
            kept.append(name)
            left -= extra_bytes[name]
    return kept


def select_8bit(model: nn.Module, plan: dict, batches: list, budget: float, method: str = "mse",
                p: float = 2.4, progress: bool = True) -> MixedChoice:
    """Measure every low-bit layer's sensitivity and choose those kept at 8 bits."""
    sens = layer_sensitivity(model, plan, batches, method, p, progress)
    extra = {n: model.get_submodule(n).weight.numel() * (8 - plan[n].weight_bits) / 8 for n in sens}
    base = weight_bytes(plan, model)
    return MixedChoice(sens, extra, base, budget, choose(sens, extra, base, budget))
