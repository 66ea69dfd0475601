"""UNet2DConditionModel: Stable Diffusion's text-conditioned UNet (encoder_hidden_states)."""
from __future__ import annotations

import torch

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

    def example_inputs(self, model, batch=2):
        """Adds encoder_hidden_states: 77 text tokens (CLIP's length; 8 for models under 32x32)."""
        names, args = super().example_inputs(model, batch)
        g = torch.Generator().manual_seed(0)
        torch.randn(args[0].shape, generator=g)  # the base drew the sample from this stream; the text follows it
        size = self.sample_shape(model)[1]
        text = torch.randn(batch, 77 if size >= 32 else 8, model.config.cross_attention_dim, generator=g)
        return names[:2] + ["encoder_hidden_states"] + names[2:], args[:2] + (text,) + args[2:]

