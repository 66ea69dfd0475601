"""UNet2DModel: DDPM / DDIM pixel-space and latent (LDM) denoisers, optionally class-conditional."""
from __future__ import annotations

from torch import nn

from . import DenoiserFamily, register


def unet_split_points(unet: nn.Module) -> dict[str, int]:
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


@register
class UNet2D(DenoiserFamily):
    name = "unet2d"
    about = "UNet2DModel (DDPM, DDIM, LDM; class labels optional)"
    block_classes = ("ResnetBlock2D", "Attention")
    keep_8bit = ("time_embedding.linear_1", "conv_out")
    no_act_quant = ("conv_out",)

    def matches(self, model):
        cfg = getattr(model, "config", None)
        return hasattr(cfg, "block_out_channels") and not hasattr(cfg, "cross_attention_dim")

    def feature_module(self, model):
        """The mid-block attention: its input is the feature map."""
        attns = getattr(getattr(model, "mid_block", None), "attentions", None)
        if attns:
            return "mid_block.attentions.0", attns[0]
        raise ValueError(f"{type(model).__name__} has no mid-block attention for TDAC features")

    def split_points(self, model):
        return unet_split_points(model)

    def num_classes(self, model):
        """The zoo's convention: config num_class_embeds = classes + 1 (the null class)."""
        n = getattr(model.config, "num_class_embeds", None)
        return int(n) - 1 if n else None
