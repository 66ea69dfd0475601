"""Swap a denoiser's Conv2d / Linear layers for fake-quant ones, and switch quantization."""
from __future__ import annotations

import fnmatch
from typing import Iterator

from torch import nn

from ..config import QuantConfig
from .modules import QUANT_CLASSES, LayerSpec, QuantMixin


def _match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def layer_plan(model: nn.Module, config: QuantConfig) -> dict[str, LayerSpec | str]:
    """For each Conv2d / Linear: its LayerSpec, or the reason it stays in float."""
    plan: dict[str, LayerSpec | str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantMixin):
            plan[name] = mod.spec
            continue
        if type(mod) not in QUANT_CLASSES:
            continue
        if _match(name, config.keep_fp):
            plan[name] = "kept in float by keep_fp pattern"
            continue
        w8 = _match(name, config.keep_8bit)
        wbits = 8 if w8 else config.weight_bits
        abits = None if _match(name, config.no_act_quant) else (8 if w8 else config.act_bits)
        # 8-bit weights symmetric (int8 kernels want zero point 0); lower bits asymmetric,
        # whose codes minus zero point still fit int8, so the same kernels run them.
        wsym = config.weight_symmetric if config.weight_symmetric is not None else wbits == 8
        plan[name] = LayerSpec(weight_bits=wbits, act_bits=abits, weight_symmetric=wsym,
                               act_symmetric=config.act_symmetric)
    return plan


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def wrap_model(model: nn.Module, config: QuantConfig | None = None,
               plan: dict[str, LayerSpec | str] | None = None) -> dict[str, LayerSpec | str]:
    """Replace, in place, every Conv2d / Linear the plan quantizes; return the plan."""
    plan = plan if plan is not None else layer_plan(model, config or QuantConfig())
    for name, spec in plan.items():
        if not isinstance(spec, LayerSpec):
            continue
        mod = model.get_submodule(name)
        if isinstance(mod, QuantMixin):
            continue
        _set_submodule(model, name, QUANT_CLASSES[type(mod)].from_float(mod, spec))
    return plan


def quant_modules(model: nn.Module) -> Iterator[tuple[str, QuantMixin]]:
    for name, mod in model.named_modules():
        if isinstance(mod, QuantMixin):
            yield name, mod


def set_quant_state(model: nn.Module, weight: bool = True, act: bool = True) -> None:
    """Turn weight and activation fake quantization on or off for the whole model."""
    for _, mod in quant_modules(model):
        mod.set_quant_state(weight, act)
