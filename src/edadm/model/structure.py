"""Structure of diffusers denoisers: reconstruction units and their execution order; split and
feature points come from the denoiser's family (model/families)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EdadmError
from .families import block_class_names, family_of


def split_points(model: nn.Module) -> dict[str, int]:
    """{conv name: k} for convs fed by torch.cat([h, skip]): the denoiser family's."""
    return family_of(model).split_points(model)


def feature_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The TDAC feature point of the denoiser's family."""
    return family_of(model).feature_module(model)


def _block_classes(model: nn.Module) -> tuple[str, ...]:
    try:
        return family_of(model).block_classes
    except EdadmError:  # a module outside the families (tests' toy models): every family's
        return block_class_names()


class _Stop(Exception):
    pass


def forward_order(unet: nn.Module, names: list[str], example_args: tuple, example_kwargs: dict | None = None) -> list[str]:
    """`names` sorted by the order of their first call in one forward pass."""
    order: list[str] = []
    hooks = []
    for n in names:
        def hook(mod, args, n=n):
            if n not in order:
                order.append(n)
        hooks.append(unet.get_submodule(n).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            unet(*example_args, **(example_kwargs or {}))
    finally:
        for h in hooks:
            h.remove()
    return order + [n for n in names if n not in order]


def reconstruction_units(unet: nn.Module, is_quant) -> list[tuple[str, str]]:
    """(name, "block" | "layer") for every block holding quantized layers and every quantized
    layer outside blocks, in module order (sort by :func:`forward_order` for execution order)."""
    units: list[tuple[str, str]] = []
    inside: list[str] = []
    blocks = _block_classes(unet)
    for name, mod in unet.named_modules():
        if any(name.startswith(b + ".") for b in inside):
            continue
        if type(mod).__name__ in blocks and any(is_quant(m) for m in mod.modules()):
            units.append((name, "block"))
            inside.append(name)
        elif is_quant(mod):
            units.append((name, "layer"))
    return units
