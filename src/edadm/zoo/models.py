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


def digits_scheduler_config() -> dict:
    """DDPM training noise schedule (linear betas, 1000 steps), as for CIFAR-10 DDPM."""
    return dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon", clip_sample=True)


class DigitsClassifier(nn.Module):
    """A small CNN on 32x32 digits; its penultimate features define FID-digits."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4
            nn.Flatten(), nn.Linear(64 * 16, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1], shape [N, 1, 32, 32]."""
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits)."""
        f = self.features(x)
        return f, self.head(f)
