"""Metric arithmetic independent of any feature extractor."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N>=2, D] features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the FID formula.

    Like pytorch-fid, a singular product gets eps added to the diagonals, and a tiny
    imaginary part from sqrtm's numerical error is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are handled just below
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))): mean and std over `splits` equal parts."""
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio (dB) between two image sets in [0, data_range], over all pixels."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.mean((a.double() - b.double()) ** 2).item()


def mean_std(values) -> dict:
    v = np.asarray(list(values), dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size),
            "values": [float(x) for x in v]}
