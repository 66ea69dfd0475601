"""The RGB photos domain: crops of scikit-image's bundled photos, its trainers and its metric."""
from __future__ import annotations

import json

import pytest
import torch

from edadm import zoo

pytest.importorskip("skimage", reason="the photos domain's data needs scikit-image (the dev / train extras)")

SHIPPED = (zoo.WEIGHTS_DIR / "photos-classifier").is_dir()


def test_photo_crops_are_seeded_in_range_and_labelled_by_photo():
    from edadm.zoo.photos import PHOTOS, photo_crops

    x, y = photo_crops(3, seed=5)
    x2, y2 = photo_crops(3, seed=5)
    assert x.shape == (3 * len(PHOTOS), 3, 32, 32) and torch.equal(x, x2) and torch.equal(y, y2)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.tolist() == [k for k in range(len(PHOTOS)) for _ in range(3)]
    assert not torch.equal(photo_crops(3, seed=6)[0], x)
    # every crop is a piece of its photo (or its mirror image)
    from edadm.zoo.photos import photos

    im = photos()[int(y[0])]
    wins = im.unfold(1, 32, 1).unfold(2, 32, 1)  # [3, H-31, W-31, 32, 32]
    found = [(wins - c[:, None, None]).abs().amax(dim=(0, 3, 4)).min() < 1e-6 or
             (wins - c.flip(-1)[:, None, None]).abs().amax(dim=(0, 3, 4)).min() < 1e-6 for c in x[:3]]
    assert all(found)


def test_photos_trainers_write_a_pipeline_and_a_classifier_with_reference_features(tmp_path):
    import numpy as np

    from edadm import load
    from edadm.sampling import generate, sampling_defaults
    from edadm.zoo.train import train

    info = train("photos-ddpm", out=tmp_path / "ddpm", device="cpu", steps=2, batch_size=4)
    assert info["steps"] == 2 and info["crops"] == 8000
    pipe = load(tmp_path / "ddpm", device="cpu")
    assert sampling_defaults(pipe).steps == 100
    imgs = generate(pipe, 2, seed=0, steps=2, progress=False)
    assert imgs.shape == (2, 3, 32, 32) and torch.isfinite(imgs).all()

    info = train("photos-classifier", out=tmp_path / "cls", device="cpu", steps=2, batch_size=8)
    ref = np.load(tmp_path / "cls" / "reference.npz")
    assert ref["features"].shape == (2000, 64) and sorted(set(ref["labels"].tolist())) == list(range(8))
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["num_classes"] == 8


@pytest.mark.skipif(not SHIPPED, reason="photos-classifier not shipped")
def test_photos_classifier_tells_the_photos_apart_and_fid_photos_ranks_real_over_noise():
    from edadm.eval.domains import classify, domain_metrics
    from edadm.zoo.photos import REFERENCE_PER_PHOTO, REFERENCE_SEED, photo_crops

    x, y = photo_crops(REFERENCE_PER_PHOTO, REFERENCE_SEED)
    _, probs = classify(x)
    assert (probs.argmax(1) == y).float().mean() > 0.9
    real = domain_metrics(x)
    assert real["fid_photos"] < 1e-3  # the reference crops themselves
    other = domain_metrics(photo_crops(125, seed=7)[0])
    blurred = domain_metrics(torch.nn.functional.avg_pool2d(photo_crops(125, seed=7)[0], 3, 1, 1))
    noise = domain_metrics(torch.rand(1000, 3, 32, 32))
    assert other["fid_photos"] < blurred["fid_photos"] < noise["fid_photos"]
    assert len(real["class_histogram"]) == 8 and real["is_photos"] > 6.0
