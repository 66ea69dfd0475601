"""The RGB demo domain: 32x32 crops of the colour photos bundled inside scikit-image's wheel.

Eight photos, one class each (which photo a crop comes from is what the photos classifier
learns, as the digits classifier learns the digit). Each photo is first scaled so that its
shorter side is `SHORT_SIDE` pixels, so a 32x32 crop shows objects and edges rather than
single textures at the photo's full resolution. Nothing is downloaded: the photos ship in
scikit-image's wheel, which is needed only to train the photos models and to build their
reference features (``pip install 'edadm[train]'``); the trained weights and the reference
features ship with edadm, so sampling, quantizing and evaluating need no scikit-image.
"""
from __future__ import annotations

import functools

import torch

from ..errors import EdadmError

RESOLUTION = 32
SHORT_SIDE = 96
# name -> how to get it from skimage.data (the photos that ship inside the wheel; no pooch download)
PHOTOS = {
    "astronaut": lambda d: d.astronaut(),
    "chelsea": lambda d: d.chelsea(),
    "coffee": lambda d: d.coffee(),
    "rocket": lambda d: d.rocket(),
    "motorcycle": lambda d: d.stereo_motorcycle()[0],
    "hubble_deep_field": lambda d: d.hubble_deep_field(),
    "immunohistochemistry": lambda d: d.immunohistochemistry(),
    "retina": lambda d: d.retina(),
}


def _skimage_data():
    try:
        from skimage import data
    except ImportError as exc:
        raise EdadmError("the photos domain is built from scikit-image's bundled photos: "
                         "pip install 'edadm[train]' (scikit-image) to train the photos models") from exc
    return data


@functools.lru_cache(maxsize=1)
def photos() -> tuple[torch.Tensor, ...]:
    """The eight photos as float [3, H, W] in [0, 1], shorter side SHORT_SIDE (area-averaged
    downscale: each output pixel is the mean of the input pixels it covers, no aliasing)."""
    d = _skimage_data()
    out = []
    for name, get in PHOTOS.items():
        im = torch.as_tensor(get(d)[..., :3].copy()).permute(2, 0, 1).float().div(255.0)
        h, w = im.shape[1:]
        scale = SHORT_SIDE / min(h, w)
        size = (max(RESOLUTION, round(h * scale)), max(RESOLUTION, round(w * scale)))
        out.append(torch.nn.functional.interpolate(im[None], size=size, mode="area")[0].clamp(0, 1).contiguous())
    return tuple(out)


def photo_crops(per_photo: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_photo` random 32x32 crops of every photo (uniform positions, horizontal flip with
    probability 1/2), seeded: ([8 * per_photo, 3, 32, 32] float in [0, 1], [8 * per_photo]
    photo index)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k, im in enumerate(photos()):
        h, w = im.shape[1:]
        top = torch.randint(0, h - RESOLUTION + 1, (per_photo,), generator=g)
        left = torch.randint(0, w - RESOLUTION + 1, (per_photo,), generator=g)
        flip = torch.rand(per_photo, generator=g) < 0.5
        for i in range(per_photo):
            c = im[:, top[i]:top[i] + RESOLUTION, left[i]:left[i] + RESOLUTION]
            xs.append(c.flip(-1) if flip[i] else c)
        ys.append(torch.full((per_photo,), k, dtype=torch.long))
    return torch.stack(xs).contiguous(), torch.cat(ys)


# Fixed crop sets: the denoiser and the classifier train on TRAIN_SEED's crops; the real-image
# reference of FID-photos (and the classifier's held-out accuracy) uses REFERENCE_SEED's.
TRAIN_SEED, REFERENCE_SEED = 0, 1
TRAIN_PER_PHOTO, REFERENCE_PER_PHOTO = 1000, 250
