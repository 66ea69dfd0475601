"""Demo-domain metrics for the digits zoo: FID-digits and the classifier IS analog.

The feature extractor is the shipped digits classifier (penultimate layer, 64-d); the
reference statistics are those of all 1797 bundled digits, cached beside the classifier.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from ..errors import EdadmError
from ..utils import atomic_file
from ..zoo import zoo_path
from ..zoo.data import digits_images
from ..zoo.models import DigitsClassifier
from .metrics import frechet_distance, gaussian_stats, inception_score

STATS_FILE = "fid_stats.npz"


@functools.lru_cache(maxsize=1)
def load_classifier() -> DigitsClassifier:
    from safetensors.torch import load_file

    path = zoo_path("digits-classifier")
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()


@torch.no_grad()
def classify(images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, 64], class probabilities [N, 10]) for images [N, 1, 32, 32] in [0, 1]."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 32, 32):
        raise EdadmError(f"digits metrics need [N, 1, 32, 32] images, got {tuple(images.shape)}")
    model = load_classifier()
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f, logits = model.embed(images[i:i + batch_size].float().cpu())
        feats.append(f)
        probs.append(logits.softmax(-1))
    return torch.cat(feats), torch.cat(probs)


def reference_stats() -> tuple[np.ndarray, np.ndarray]:
    """Feature mean / covariance of the real digits, computed once and cached on disk."""
    path = zoo_path("digits-classifier")
    cache = path / STATS_FILE
    key = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
    if cache.is_file():
        d = np.load(cache)
        if str(d["key"]) == key:
            return d["mu"], d["sigma"]
    x, _ = digits_images()
    mu, sigma = gaussian_stats(classify(x)[0])
    try:
        with atomic_file(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=mu, sigma=sigma, key=np.array(key))
    except (OSError, EdadmError):  # read-only install: fine, just not cached
        pass
    return mu, sigma


def digits_metrics(images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """FID-digits against the real digits, IS analog, and the predicted class histogram;
    with the requested `labels` of a class-conditional model, how often the classifier
    agrees with them (the analog of CLIP score for text-to-image)."""
    feats, probs = classify(images)
    extra = {}
    if labels is not None:
        extra["class_agreement"] = float((probs.argmax(1) == torch.as_tensor(labels).cpu()).float().mean())
    mu, sigma = gaussian_stats(feats)
    rmu, rsigma = reference_stats()
    is_mean, _ = inception_score(probs)
    hist = torch.bincount(probs.argmax(1), minlength=10).tolist()
    return {"fid_digits": frechet_distance(mu, sigma, rmu, rsigma), "is_digits": is_mean,
            "confidence": float(probs.max(1).values.mean()), "class_histogram": hist, "num_samples": len(images),
            **extra}


@functools.lru_cache(maxsize=1)
def digits_reference():
    """The real digits as the yardstick metrics compare with them (eval.yardstick.Reference):
    classifier features of all 1797, their labels' class shares."""
    from .yardstick import Reference

    x, y = digits_images()
    return Reference.of(classify(x)[0].double().numpy(), y.numpy(), num_classes=10)


def digits_features(images: torch.Tensor):
    """eval.yardstick.Features of digits images: classifier features and predicted classes."""
    from .yardstick import Features

    feats, probs = classify(images)
    return Features(feats.double().numpy(), probs.argmax(1).numpy(), images)


def digits_paired(images: torch.Tensor, fp_images: torch.Tensor, reps: int, seed: int = 0) -> dict:
    """eval.yardstick.measure of `images` against the real digits and, paired, against the FP
    model's images from the same noise: every metric and every difference with its bootstrap
    interval."""
    from .yardstick import measure

    return measure(digits_features(images), digits_reference(), digits_features(fp_images), reps=reps, seed=seed)
