"""Architectures of the shipped demo models."""
from __future__ import annotations

import torch
from torch import nn


def digits_ddpm_unet_config() -> dict:
    """An unconditional UNet2DModel shaped like the CIFAR-10 DDPM family, scaled down.

    Residual blocks at three resolutions (32, 16, 8), self-attention at 8x8 and in the
    mid block (the TDAC feature point), epsilon prediction.
    """
    return dict(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=32,
    )


def digits_cond_unet_config() -> dict:
    """digits-ddpm's UNet with a class embedding: 10 digits + 1 null class (index 10) for
    classifier-free guidance (the stand-in for the paper's class-conditional ImageNet LDM)."""
    return {**digits_ddpm_unet_config(), "num_class_embeds": 11}


def photos_ddpm_unet_config() -> dict:
    """digits-ddpm's UNet with three colour channels in and out (the RGB photos domain, its
    stand-in for the paper's CIFAR-10 DDPM): same widths, so it trains in the same time."""
    return {**digits_ddpm_unet_config(), "in_channels": 3, "out_channels": 3}


def digits_vq_config() -> dict:
    """VQModel for digits-ldm: 32x32x1 -> 8x8x3 latents (f4, as LDM-4), 256 codes."""
    return dict(in_channels=1, out_channels=1, latent_channels=3, vq_embed_dim=3, num_vq_embeddings=256,
                block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=32,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def digits_kl_config() -> dict:
    """AutoencoderKL for digits-t2i: 32x32x1 -> 8x8x4 latents (Stable Diffusion's KL family)."""
    return dict(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32, 32),
                layers_per_block=1, norm_num_groups=8, sample_size=32,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def digits_ldm_unet_config(latent_channels: int = 3) -> dict:
    """UNet2DModel on 8x8 latents: resnets at 8 and 4, attention at 4x4 and in the mid block."""
    return dict(sample_size=8, in_channels=latent_channels, out_channels=latent_channels,
                block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=32)


def digits_t2i_unet_config(cross_attention_dim: int = 64) -> dict:
    """UNet2DConditionModel on 8x8x4 latents, shaped like Stable Diffusion's: cross-attention
    transformer blocks (self-attention, cross-attention, GEGLU feed-forward) in the down, mid
    and up paths."""
    return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                cross_attention_dim=cross_attention_dim, attention_head_dim=8)


def digits_text_config(vocab_size: int, bos: int, eos: int, pad: int) -> dict:
    """A small CLIP text encoder (CLIPTextModel) trained with digits-t2i on its prompts."""
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=24, projection_dim=64, bos_token_id=bos,
                eos_token_id=eos, pad_token_id=pad)


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# training prompts per digit d (one drawn at random per example); sampling uses the first
PROMPT_TEMPLATES = ("a handwritten {w}", "the digit {w}", "a {w}", "handwritten number {d}")


def digit_prompt(d: int, template: int = 0) -> str:
    return PROMPT_TEMPLATES[template].format(w=DIGIT_WORDS[d], d=d)


def prompt_digit(prompt: str) -> int | None:
    """The digit a prompt asks for ("a handwritten seven", "handwritten number 7"), or None
    when it names no digit or several."""
    tokens = prompt.lower().replace(",", " ").split()
    found = {DIGIT_WORDS.index(t) for t in tokens if t in DIGIT_WORDS} | {int(t) for t in tokens if t.isdigit()
                                                                          and len(t) == 1}
    return found.pop() if len(found) == 1 else None


def digits_scheduler_config() -> dict:
    """DDPM training noise schedule (linear betas, 1000 steps), as for CIFAR-10 DDPM."""
    return dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon", clip_sample=True)


class DigitsClassifier(nn.Module):
    """A small CNN on 32x32 images; its penultimate features define FID-digits (1 channel,
    10 digits) and FID-photos (3 channels, 8 photos: PhotosClassifier)."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4
            nn.Flatten(), nn.Linear(64 * 16, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1], shape [N, in_channels, 32, 32]."""
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits)."""
        f = self.features(x)
        return f, self.head(f)


class PhotosClassifier(DigitsClassifier):
    """The same CNN on 32x32 RGB crops: which of the eight bundled photos a crop comes from."""

    def __init__(self, num_classes: int = 8):
        super().__init__(num_classes=num_classes, in_channels=3)
