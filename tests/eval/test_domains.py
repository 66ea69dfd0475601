import pytest
import torch

from edadm.eval.domains import classify, digits_metrics, load_classifier
from edadm.zoo.data import digits_images


def test_classifier_is_accurate_on_digits():
    x, y = digits_images()
    _, probs = classify(x)
    assert (probs.argmax(1) == y).float().mean() > 0.97
    assert load_classifier().training is False


def test_fid_digits_real_vs_real_small_and_noise_large():
    x, _ = digits_images()
    real = digits_metrics(x)
    assert real["fid_digits"] < 1e-6 * max(1.0, real["fid_digits"]) + 1e-3  # the reference set itself
    half = digits_metrics(x[::2])
    noise = digits_metrics(torch.rand(500, 1, 32, 32))
    blurred = digits_metrics((x[::2] * 0.5 + 0.25))
    assert half["fid_digits"] < blurred["fid_digits"] < noise["fid_digits"]
    assert real["is_digits"] > 8.0 and noise["is_digits"] < real["is_digits"]


def test_wrong_image_shape_is_a_user_error():
    from edadm.errors import EdadmError

    with pytest.raises(EdadmError, match="domain metrics need"):
        classify(torch.rand(4, 3, 48, 48))
    with pytest.raises(EdadmError, match=r"digits metrics need \[N, 1, 32, 32\]"):
        classify(torch.rand(4, 3, 32, 32), domain="digits")
