"""UNet2DConditionModel: Stable Diffusion's text-conditioned UNet (encoder_hidden_states)."""
from __future__ import annotations

from . import register
from .unet2d import UNet2D


@register
class UNet2DCondition(UNet2D):
    name = "unet2d-condition"
    about = "UNet2DConditionModel (Stable Diffusion; cross-attention to text)"
    block_classes = ("ResnetBlock2D", "Attention", "BasicTransformerBlock")

    def matches(self, model):
        cfg = getattr(model, "config", None)
        return hasattr(cfg, "block_out_channels") and hasattr(cfg, "cross_attention_dim")

    def num_classes(self, model):
        return None
