"""The shipped demo models (trained by :mod:`edadm.zoo.train`, weights in ``zoo/weights``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import EdadmError
from .models import digit_prompt

WEIGHTS_DIR = Path(__file__).parent / "weights"

# name -> one-line description; the pipelines are diffusers directories under WEIGHTS_DIR.
PIPELINES = {
    "digits-ddpm": "unconditional UNet2DModel (mid-block attention), 32x32 digits, DDIM 100 steps eta 0",
    "digits-cond": "class-conditional UNet2DModel (10 digits + null class), DDIM 20 steps, guidance 1.5",
    "digits-ldm": "LDMPipeline: VQModel (32x32 -> 8x8x3) + UNet2DModel on latents, DDIM 200 steps eta 1",
    "digits-t2i": "StableDiffusionPipeline: AutoencoderKL + UNet2DConditionModel (cross-attention) + small CLIP "
                  "text encoder, prompts 'a handwritten seven', PLMS 50 steps, guidance 1.5",
    "photos-ddpm": "unconditional UNet2DModel (digits-ddpm's, 3 channels), 32x32 crops of scikit-image's bundled "
                   "colour photos, DDIM 100 steps eta 0",
}
CLASSIFIERS = {
    "digits-classifier": "small CNN on 32x32 digits; features for FID-digits and the IS analog",
    "photos-classifier": "the same CNN on 32x32 RGB photo crops (which of 8 photos); features for FID-photos",
}
DEFAULT_MODEL = "digits-ddpm"

# Sampling defaults per zoo pipeline (the paper's CIFAR-10 setting for digits-ddpm).
SAMPLING_DEFAULTS = {
    "digits-ddpm": dict(steps=100, eta=0.0),
    # the paper's ImageNet LDM-4 sampler (DDIM 20, eta 0) at guidance 1.5, not its 3.0: on
    # 10 digit classes 3.0 collapses each class to one prototype (FP FID-digits 376 vs 85 at
    # 1.5, classifier agreement 1.0 vs 0.996; `bench/diag/digits_cond_guidance.log` (removed; `git show 2979311:bench/diag/digits_cond_guidance.log`)), which
    # would leave FID measuring the guidance rather than the quantization
    "digits-cond": dict(steps=20, eta=0.0, guidance_scale=1.5),
    "digits-ldm": dict(steps=200, eta=1.0),  # the paper's LSUN-Bedroom LDM-4 sampler
    # the paper's MS-COCO Stable Diffusion sampler (PLMS 50) at guidance 1.5, not its 7.5,
    # for the same reason (FP FID-digits 636 at 7.5, 98 at 1.5, 59 at 1.0; agreement 1.0,
    # 0.992, 0.964; `bench/diag/digits_t2i_guidance.log` (removed; `git show 2979311:bench/diag/digits_t2i_guidance.log`)); image i asks for digit i mod 10
    "photos-ddpm": dict(steps=100, eta=0.0),  # as digits-ddpm
    "digits-t2i": dict(steps=50, eta=0.0, guidance_scale=1.5,
                       prompts=[digit_prompt(d) for d in range(10)]),
}


def zoo_path(name: str) -> Path:
    """Directory of a shipped model; a clear error when the name is unknown or not trained."""
    if name not in PIPELINES and name not in CLASSIFIERS:
        known = ", ".join(sorted([*PIPELINES, *CLASSIFIERS]))
        raise EdadmError(f"unknown zoo model {name!r}; known: {known}")
    path = WEIGHTS_DIR / name
    if not path.is_dir():
        raise EdadmError(f"zoo model {name!r} has no weights at {path}; train it with `edadm zoo train {name}`")
    return path
