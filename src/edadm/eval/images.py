"""Writing samples: grids and per-image files (PNG via Pillow, which diffusers already needs)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils import atomic_dir, atomic_file


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> [N, H, W, C] uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one uint8 array [H, W, C] with `nrow` per row."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = arr[i]
    return grid


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int = 1) -> Path:
    img = _pil(make_grid(images, nrow))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def save_images(images: torch.Tensor, out_dir: str | Path, start: int = 0) -> Path:
    """One PNG per image, named by its index in the run: 000000.png, ..."""
    with atomic_dir(out_dir) as tmp:
        for i, arr in enumerate(to_uint8(images)):
            _pil(arr).save(tmp / f"{start + i:06d}.png")
    return Path(out_dir)
