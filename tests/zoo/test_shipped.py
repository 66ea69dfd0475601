"""Every zoo model shipped in the package loads offline and samples images of its domain."""
from __future__ import annotations

import pytest
import torch

from edadm import zoo
from edadm.loading import load_pipeline
from edadm.sampling import generate

SHIPPED = [n for n in zoo.PIPELINES if (zoo.WEIGHTS_DIR / n).is_dir()]
DIGITS = [n for n in SHIPPED if n.startswith("digits")]


def test_the_default_model_is_shipped():
    assert zoo.DEFAULT_MODEL in SHIPPED


@pytest.mark.parametrize("name", DIGITS)
def test_shipped_zoo_model_samples_digit_like_images(name):
    from edadm.eval.domains import classify

    pipe = load_pipeline(name, device="cpu")
    imgs = generate(pipe, 8, seed=0, steps=10, progress=False)
    assert imgs.shape == (8, 1, 32, 32) and torch.isfinite(imgs).all()
    assert 0.0 <= float(imgs.min()) and float(imgs.max()) <= 1.0
    # trained, not random: digits are bright strokes on a dark background
    assert float(imgs.mean()) < 0.5 and float(imgs.amax(dim=(1, 2, 3)).mean()) > 0.6
    _, probs = classify(imgs)
    assert float(probs.amax(1).mean()) > 0.5, probs.amax(1)  # the digits classifier recognises them


@pytest.mark.skipif("photos-ddpm" not in SHIPPED, reason="photos-ddpm not shipped")
def test_shipped_photos_model_samples_photo_crops():
    """Trained, not random: colour crops with structure that the photos classifier assigns
    to a photo with some confidence (chance: 1/8)."""
    from edadm.eval.domains import classify

    pipe = load_pipeline("photos-ddpm", device="cpu")
    imgs = generate(pipe, 8, seed=0, steps=20, progress=False)
    assert imgs.shape == (8, 3, 32, 32) and torch.isfinite(imgs).all()
    assert 0.0 <= float(imgs.min()) and float(imgs.max()) <= 1.0
    assert float(imgs.std(dim=(2, 3)).mean()) > 0.05  # not flat colour
    _, probs = classify(imgs)
    assert float(probs.amax(1).mean()) > 0.5, probs.amax(1)


@pytest.mark.parametrize("name", [n for n in SHIPPED if n in ("digits-cond", "digits-t2i")])
def test_shipped_conditional_model_draws_the_requested_digit(name):
    """Conditioning is learned, not ignored: image i asks for digit i mod 10 (class label or
    prompt), and the digits classifier mostly reads that digit (chance would be 10 %)."""
    from edadm.eval.domains import classify

    pipe = load_pipeline(name, device="cpu")
    imgs = generate(pipe, 20, seed=0, steps=10, progress=False)
    _, probs = classify(imgs)
    agree = float((probs.argmax(1) == torch.arange(20) % 10).float().mean())
    assert agree >= 0.7, agree


@pytest.mark.skipif("digits-cond" not in SHIPPED, reason="digits-cond not shipped")
def test_class_guidance_does_not_lower_agreement_with_the_requested_digit():
    from edadm.eval.domains import classify

    pipe = load_pipeline("digits-cond", device="cpu")
    agree = {}
    for g in (1.0, 3.0):
        imgs = generate(pipe, 20, seed=0, steps=50, guidance_scale=g, progress=False)
        agree[g] = float((classify(imgs)[1].argmax(1) == torch.arange(20) % 10).float().mean())
    assert agree[3.0] >= agree[1.0] - 0.1, agree
