"""Structure of diffusers denoisers: skip concatenations, reconstruction units, feature points."""
from __future__ import annotations

import torch
from torch import nn

# Module classes reconstructed as one unit (BRECQ "blocks"); every other quantized layer
# outside them is reconstructed alone.
BLOCK_CLASS_NAMES = ("ResnetBlock2D", "Attention", "BasicTransformerBlock")


def split_points(unet: nn.Module) -> dict[str, int]:
    """{conv name: k} for convs fed by torch.cat([h, skip]) in UNet up blocks.

    The skip tensors are the ones the down path pushed (conv_in, each down resnet, each
    downsampler); up resnets pop them in reverse order, so k = in_channels - skip channels.
    """
    if not all(hasattr(unet, a) for a in ("conv_in", "down_blocks", "up_blocks")):
        return {}
    stack = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        for r in block.resnets:
            stack.append(r.out_channels)
        for d in getattr(block, "downsamplers", None) or []:
            stack.append(d.out_channels)
    out: dict[str, int] = {}
    for i, block in enumerate(unet.up_blocks):
        for j, r in enumerate(block.resnets):
            if not stack:
                return out
            k = r.in_channels - stack.pop()
            if 0 < k < r.in_channels:
                out[f"up_blocks.{i}.resnets.{j}.conv1"] = k
                if getattr(r, "conv_shortcut", None) is not None:
                    out[f"up_blocks.{i}.resnets.{j}.conv_shortcut"] = k
    return out


def is_block(mod: nn.Module) -> bool:
    return type(mod).__name__ in BLOCK_CLASS_NAMES


def feature_module(unet: nn.Module) -> tuple[str, nn.Module]:
    """The TDAC feature point: the mid-block attention (its input is the feature map);
    for transformer denoisers without a mid block, the middle transformer block."""
    mid = getattr(unet, "mid_block", None)
    attns = getattr(mid, "attentions", None) if mid is not None else None
    if attns:
        return "mid_block.attentions.0", attns[0]
    blocks = getattr(unet, "transformer_blocks", None)
    if blocks:
        k = len(blocks) // 2
        return f"transformer_blocks.{k}", blocks[k]
    raise ValueError(f"{type(unet).__name__} has no mid-block attention or transformer blocks for TDAC features")


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
    for name, mod in unet.named_modules():
        if any(name.startswith(b + ".") for b in inside):
            continue
        if is_block(mod) and any(is_quant(m) for m in mod.modules()):
            units.append((name, "block"))
            inside.append(name)
        elif is_quant(mod):
            units.append((name, "layer"))
    return units
