"""Demo-domain metrics: FID and the classifier IS analog on the features of a shipped classifier.

Two domains, told apart by image shape: the digits (1x32x32; the digits classifier, the real
images are all 1797 bundled digits) and the RGB photos (3x32x32; the photos classifier, the
real images are the fixed reference crops of zoo/photos.py, whose features ship beside the
classifier so evaluating needs no scikit-image). For each domain `fid_{name}` is the Fréchet
distance between the classifier's penultimate features (64-d) of the images and of the real
set, `is_{name}` the Inception-Score analog on its class probabilities.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import EdadmError
from ..zoo import zoo_path
from .metrics import frechet_distance, gaussian_stats, inception_score


@dataclass(frozen=True)
class Domain:
    name: str                    # metric names: fid-{name} on the CLI, fid_{name} / is_{name} in results
    shape: tuple[int, int, int]  # (C, H, W) of its images
    classifier: str              # zoo name of its feature network
    num_classes: int
    make: Callable[[], torch.nn.Module]   # the classifier's architecture
    about: str

    @property
    def metric(self) -> str:
        return f"fid-{self.name}"

    @property
    def key(self) -> str:
        return f"fid_{self.name}"


def _digits_net():
    from ..zoo.models import DigitsClassifier

    return DigitsClassifier()


def _photos_net():
    from ..zoo.models import PhotosClassifier

    return PhotosClassifier()


DOMAINS = {
    "digits": Domain("digits", (1, 32, 32), "digits-classifier", 10, _digits_net, "1x32x32 digits models"),
    "photos": Domain("photos", (3, 32, 32), "photos-classifier", 8, _photos_net, "3x32x32 photo-crop models"),
}


def domain_of(shape) -> Domain | None:
    """The domain whose images have shape (C, H, W), or None."""
    return next((d for d in DOMAINS.values() if d.shape == tuple(shape)), None)


def domain_problem(shape, name: str | None = None) -> str | None:
    """Why domain `name`'s metric (any domain's when None) does not apply to images of shape
    (C, H, W), or None: the one rule the metric chooser (before sampling) and image_metrics
    (on the sampled images) both follow."""
    d = domain_of(shape)
    if d is not None and (name is None or d.name == name):
        return None
    if name is None:
        return ("the domain metrics apply to " + " and ".join(f"{d.about} ({d.metric})" for d in DOMAINS.values())
                + f", not images of shape {tuple(shape)}")
    want = DOMAINS[name]
    return f"{want.metric} applies to {want.about}, not images of shape {tuple(shape)}"


@functools.lru_cache(maxsize=None)
def load_classifier(name: str = "digits") -> torch.nn.Module:
    from safetensors.torch import load_file

    model = DOMAINS[name].make()
    model.load_state_dict(load_file(str(zoo_path(DOMAINS[name].classifier) / "model.safetensors")))
    return model.eval()


def _domain(images: torch.Tensor, name: str | None) -> Domain:
    if images.dim() == 4:
        d = domain_of(images.shape[1:])
        if d is not None and (name is None or d.name == name):
            return d
    shape = tuple(images.shape)
    if name is not None:
        raise EdadmError(f"{name} metrics need [N, {', '.join(map(str, DOMAINS[name].shape))}] images, got {shape}")
    raise EdadmError(f"the domain metrics need [N, 1, 32, 32] (digits) or [N, 3, 32, 32] (photos) images, got {shape}")


@torch.no_grad()
def classify(images: torch.Tensor, batch_size: int = 500, domain: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, 64], class probabilities [N, classes]) for images [N, C, 32, 32] in [0, 1],
    by the classifier of their domain (from their shape, or `domain`)."""
    model = load_classifier(_domain(images, domain).name)
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f, logits = model.embed(images[i:i + batch_size].float().cpu())
        feats.append(f)
        probs.append(logits.softmax(-1))
    return torch.cat(feats), torch.cat(probs)


@functools.lru_cache(maxsize=None)
def reference_features(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(classifier features [N, 64] float64, labels [N]) of the domain's real images."""
    if name == "digits":
        from ..zoo.data import digits_images

        x, y = digits_images()
        return classify(x, domain="digits")[0].double().numpy(), y.numpy()
    path = zoo_path(DOMAINS[name].classifier) / "reference.npz"
    if not path.is_file():
        raise EdadmError(f"{path} is missing: retrain it with `edadm zoo train {DOMAINS[name].classifier}`")
    d = np.load(path)
    return d["features"].astype(np.float64), d["labels"]


@functools.lru_cache(maxsize=None)
def reference_stats(name: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    """Feature mean / covariance of the domain's real images."""
    return gaussian_stats(reference_features(name)[0])


def domain_metrics(images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """fid_{domain} against the real images, the IS analog and the predicted class histogram;
    with the requested `labels` of a class-conditional model, how often the classifier agrees
    with them (the analog of CLIP score for text-to-image)."""
    d = _domain(images, None)
    feats, probs = classify(images, domain=d.name)
    extra = {}
    if labels is not None:
        extra["class_agreement"] = float((probs.argmax(1) == torch.as_tensor(labels).cpu()).float().mean())
    mu, sigma = gaussian_stats(feats)
    rmu, rsigma = reference_stats(d.name)
    is_mean, _ = inception_score(probs)
    hist = torch.bincount(probs.argmax(1), minlength=d.num_classes).tolist()
    return {d.key: frechet_distance(mu, sigma, rmu, rsigma), f"is_{d.name}": is_mean,
            "confidence": float(probs.max(1).values.mean()), "class_histogram": hist, "num_samples": len(images),
            **extra}


def digits_metrics(images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """domain_metrics of digits images (an error for any other shape)."""
    _domain(images, "digits")
    return domain_metrics(images, labels)


@functools.lru_cache(maxsize=None)
def domain_reference(name: str = "digits"):
    """The real images as the yardstick metrics compare with them (eval.yardstick.Reference):
    classifier features and their labels' class shares."""
    from .yardstick import Reference

    feats, labels = reference_features(name)
    return Reference.of(feats, labels, num_classes=DOMAINS[name].num_classes)


def domain_features(images: torch.Tensor):
    """eval.yardstick.Features of domain images: classifier features and predicted classes."""
    from .yardstick import Features

    feats, probs = classify(images)
    return Features(feats.double().numpy(), probs.argmax(1).numpy(), images)


def domain_paired(images: torch.Tensor, fp_images: torch.Tensor, reps: int, seed: int = 0) -> dict:
    """eval.yardstick.measure of `images` against the domain's real images and, paired,
    against the FP model's images from the same noise: every metric and every difference
    with its bootstrap interval."""
    from .yardstick import measure

    d = _domain(images, None)
    return measure(domain_features(images), domain_reference(d.name), domain_features(fp_images), reps=reps, seed=seed)
