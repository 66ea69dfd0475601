"""Denoiser configs of the full-size public models the paper uses, for structure tests and
speed benchmarks with random weights (nothing is downloaded). Values as in the models'
published config.json files.
"""

DDPM_CIFAR10_UNET = {  # google/ddpm-cifar10-32, 35.7M parameters
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

SD_V1_4_UNET = {  # CompVis/stable-diffusion-v1-4, unet/config.json, 860M parameters
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

LDM_CELEBAHQ_256_UNET = {  # CompVis/ldm-celebahq-256, unet/config.json, 274.1M parameters (64x64x3 latents)
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": 32,
    "block_out_channels": [224, 448, 672, 896],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 64,
    "time_embedding_type": "positional",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

# facebook/DiT-XL-2-256, transformer/config.json. 749.8M parameters as diffusers builds it:
# the paper's 675M share one timestep / class embedder, which diffusers copies into each of
# the 28 blocks.
DIT_XL_2_256 = {
    "_class_name": "DiTTransformer2DModel",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "dropout": 0.0,
    "in_channels": 4,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_zero",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 32,
    "upcast_attention": False,
}

REFERENCE_CONFIGS = {"ddpm-cifar10": DDPM_CIFAR10_UNET, "ldm-celebahq-256": LDM_CELEBAHQ_256_UNET,
                     "sd-v1-4": SD_V1_4_UNET, "dit-xl-2-256": DIT_XL_2_256}


def build(name: str, device: str = "cpu"):
    """Instantiate a reference denoiser with random weights (device="meta" for structure only)."""
    import diffusers
    import torch

    cfg = dict(REFERENCE_CONFIGS[name])
    cls = getattr(diffusers, cfg.pop("_class_name"))
    with torch.device(device):
        return cls.from_config(cfg)
