"""Swap a denoiser's Conv2d / Linear layers for fake-quant ones, add attention quantizers,
and switch quantization on and off."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import asdict, dataclass
from typing import Iterator

from torch import nn

from ..config import QuantConfig
from ..errors import EdadmError
from ..model.structure import split_points
from ..recipes import resolve
from .attention import add_attention_quantizers, has_attention_quantizers
from .modules import QUANT_CLASSES, LayerSpec, QuantMixin, int_kernel_problem
from .quantizer import UniformQuantizer

log = logging.getLogger("edadm")


@dataclass(frozen=True)
class AttnSpec:
    """Quantizers on q, k, v and the softmax probabilities of one Attention module."""

    bits: int
    symmetric: bool = False

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": "attention"}


# Layers with weights that a denoiser may contain but edadm cannot quantize.
UNSUPPORTED_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                             nn.ConvTranspose3d, nn.Linear)


def _match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def keep_patterns(model: nn.Module, config: QuantConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(layers kept at 8 bits, layers whose input stays float): the config's patterns, else the
    denoiser family's; a module outside the families (a test's toy model) gets every family's."""
    config = resolve(config)
    from ..model.families import FAMILIES, family_of

    try:
        fams = [family_of(model)]
    except EdadmError:
        fams = list(FAMILIES.values())
    keep = config.keep_8bit if config.keep_8bit is not None else [p for f in fams for p in f.keep_8bit]
    no_act = config.no_act_quant if config.no_act_quant is not None else [p for f in fams for p in f.no_act_quant]
    return tuple(keep), tuple(no_act)


def layer_plan(model: nn.Module, config: QuantConfig,
               also_8bit: tuple[str, ...] = ()) -> dict[str, LayerSpec | AttnSpec | str]:
    """For each Conv2d / Linear: its LayerSpec, or the reason it stays in float; for each
    diffusers Attention: its AttnSpec when attention quantization is on. also_8bit: layer
    names kept at 8 bits beside the config's patterns (mixed precision's choice)."""
    config = resolve(config)
    plan: dict[str, LayerSpec | AttnSpec | str] = {}
    splits = split_points(model) if config.split_shortcut else {}
    keep_8bit, no_act_quant = keep_patterns(model, config)
    no_int: list[str] = []
    unsupported = []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantMixin):
            plan[name] = mod.spec
            continue
        if isinstance(mod, UNSUPPORTED_WEIGHT_LAYERS) and type(mod) not in QUANT_CLASSES:
            # a weight layer edadm has no quantized twin for (subclasses included: their
            # forward may differ from the plain layer's)
            if _match(name, config.keep_fp):
                plan[name] = f"kept in float by keep_fp pattern (unsupported type {type(mod).__name__})"
            else:
                unsupported.append(f"{name} ({type(mod).__name__})")
            continue
        if type(mod).__name__ == "Attention" and config.attn_bits and not _match(name, config.keep_fp):
            plan[name] = AttnSpec(bits=config.attn_bits, symmetric=config.act_symmetric)
            continue
        if type(mod) not in QUANT_CLASSES:
            continue
        if _match(name, config.keep_fp):
            plan[name] = "kept in float by keep_fp pattern"
            continue
        w8 = _match(name, keep_8bit) or name in also_8bit
        wbits = 8 if w8 else config.weight_bits
        abits = None if _match(name, no_act_quant) else (8 if w8 else config.act_bits)
        # 8-bit weights symmetric (int8 kernels want zero point 0); lower bits asymmetric,
        # whose codes minus zero point still fit int8, so the same kernels run them.
        wsym = config.weight_symmetric if config.weight_symmetric is not None else wbits == 8
        plan[name] = LayerSpec(weight_bits=wbits, act_bits=abits, weight_symmetric=wsym,
                               act_symmetric=config.act_symmetric, split=splits.get(name, 0))
        why = int_kernel_problem(plan[name])
        if why:
            no_int.append(name)
    if no_int:
        log.warning("%d layer(s) (for example %s) will run in float on the integer engine: %s", len(no_int),
                    no_int[0], int_kernel_problem(plan[no_int[0]]))
    if unsupported:
        more = f" and {len(unsupported) - 5} more" if len(unsupported) > 5 else ""
        raise EdadmError(f"unsupported layer(s) {', '.join(unsupported[:5])}{more}: edadm quantizes Conv2d and Linear; "
                         "list them in keep_fp (config file) to leave them in float")
    return plan


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def wrap_model(model: nn.Module, config: QuantConfig | None = None,
               plan: dict[str, LayerSpec | AttnSpec | str] | None = None) -> dict[str, LayerSpec | AttnSpec | str]:
    """Replace, in place, every Conv2d / Linear the plan quantizes and attach attention
    quantizers; return the plan."""
    plan = plan if plan is not None else layer_plan(model, resolve(config or QuantConfig()))
    for name, spec in plan.items():
        mod = model.get_submodule(name)
        if isinstance(spec, AttnSpec):
            if not has_attention_quantizers(mod):
                add_attention_quantizers(mod, spec.bits, spec.symmetric)
                for q in (mod.q_quantizer, mod.k_quantizer, mod.v_quantizer, mod.probs_quantizer):
                    q.to(next(mod.parameters()).device)
        elif isinstance(spec, LayerSpec) and not isinstance(mod, QuantMixin):
            set_submodule(model, name, QUANT_CLASSES[type(mod)].from_float(mod, spec))
    return plan


def spec_from_dict(d: dict) -> LayerSpec | AttnSpec:
    d = dict(d)
    if d.pop("kind", None) == "attention":
        return AttnSpec(**d)
    return LayerSpec(**d)


def quant_modules(model: nn.Module) -> Iterator[tuple[str, QuantMixin]]:
    for name, mod in model.named_modules():
        if isinstance(mod, QuantMixin):
            yield name, mod


def act_quantizers(model: nn.Module) -> Iterator[tuple[str, UniformQuantizer]]:
    """Every activation quantizer: layer inputs and attention q / k / v / probabilities."""
    for name, mod in model.named_modules():
        if isinstance(mod, UniformQuantizer) and mod.role == "act":
            yield name, mod


def set_quant_state(model: nn.Module, weight: bool = True, act: bool = True) -> None:
    """Turn weight and activation fake quantization on or off for the whole model."""
    for mod in model.modules():
        if isinstance(mod, UniformQuantizer):
            mod.enabled = weight if mod.role == "weight" else act
