"""DiT (DiTTransformer2DModel / Transformer2DModel with patches): class-conditional transformers."""
from __future__ import annotations

import torch

from . import DenoiserFamily, register


@register
class DiT(DenoiserFamily):
    name = "dit"
    about = "DiT transformer (per-sample timestep, learned sigma, class labels)"
    component = "transformer"
    block_classes = ("BasicTransformerBlock", "Attention")
    keep_8bit = ("pos_embed.proj", "proj_out_2")  # patch embedding and output projection
    no_act_quant = ("proj_out_2",)

    def matches(self, model):
        return not hasattr(getattr(model, "config", None), "block_out_channels") and hasattr(model, "transformer_blocks")

    def forward(self, model, x, t, **kw):
        tt = torch.as_tensor(t, device=x.device).reshape(-1)
        return model(x, timestep=tt.expand(x.shape[0]) if tt.numel() == 1 else tt, **kw).sample

    def feature_module(self, model):
        """The middle transformer block (DiT has no mid block)."""
        k = len(model.transformer_blocks) // 2
        return f"transformer_blocks.{k}", model.transformer_blocks[k]

    def example_inputs(self, model, batch=2):
        from ...errors import EdadmError

        raise EdadmError(f"ONNX export does not cover {type(model).__name__} (DiT) yet; UNet2DModel and "
                         "UNet2DConditionModel denoisers are covered")

    def num_classes(self, model):
        """num_embeds_ada_norm real classes; the label embedding holds one more row, the null class."""
        n = getattr(model.config, "num_embeds_ada_norm", None)
        return int(n) if n and getattr(model.config, "norm_type", None) == "ada_norm_zero" else None
