import numpy as np
import pytest
import torch

from edadm.eval.metrics import frechet_distance, gaussian_stats, inception_score, psnr


def test_frechet_closed_form_on_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    s1 = a @ a.T + np.eye(5)
    s2 = np.diag(rng.uniform(0.5, 2.0, size=5))
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # commuting case: both diagonal -> sum of (sqrt(d1) - sqrt(d2))^2
    d1 = np.diag(rng.uniform(0.5, 2.0, size=5))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(d1)) - np.sqrt(np.diag(s2))) ** 2)
    assert frechet_distance(mu1, d1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # same distribution -> 0; symmetric in its arguments
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_of_sample_sets():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 8))
    y = rng.normal(size=(4000, 8))
    same = frechet_distance(*gaussian_stats(x), *gaussian_stats(x))
    iid = frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    shifted = frechet_distance(*gaussian_stats(x), *gaussian_stats(y + 1.0))
    assert same == pytest.approx(0.0, abs=1e-8)
    assert iid < 0.05
    assert shifted == pytest.approx(8.0, rel=0.05)  # ||shift||^2 = 8


def test_inception_score_bounds():
    k = 10
    onehot = np.eye(k)[np.arange(1000) % k]
    assert inception_score(onehot)[0] == pytest.approx(k, rel=1e-6)  # confident and diverse: k
    uniform = np.full((1000, k), 1.0 / k)
    assert inception_score(uniform)[0] == pytest.approx(1.0, rel=1e-6)  # no information: 1
    collapsed = np.eye(k)[np.zeros(1000, dtype=int)]
    assert inception_score(collapsed)[0] == pytest.approx(1.0, rel=1e-6)


def test_psnr():
    a = torch.zeros(2, 1, 4, 4)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0, rel=1e-6)
