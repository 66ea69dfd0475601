"""The demo domain: scikit-learn's bundled 8x8 handwritten digits, upscaled to 32x32.

The data ships inside scikit-learn, so nothing is downloaded.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

RESOLUTION = 32


@functools.lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0).contiguous(), torch.tensor(d.target, dtype=torch.long)


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ([N,1,32,32] float in [0,1], [N] labels)."""
    x, y = _load()
    return x.clone(), y.clone()


def split_indices(n: int, holdout: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed train / held-out split of n items."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * holdout))
    return perm[k:], perm[:k]
