"""Metrics with intervals: distribution metrics of one image set against a reference set, and
paired differences between two image sets sampled from the same noise (a quantized model and
its FP model), each with a bootstrap confidence interval over images.

Extractor-independent: every function takes features ([N, D]) and class predictions computed
once (eval.domains.classify for the digits and photos models). Why paired: two runs from the same noise
share most of their sampling noise, so their difference is far less noisy than either number
(docs/evaluation.md, "Which metric ranks methods"). The bootstrap resamples image indices,
jointly for both sets when paired, which is the finite-sample noise a new sampling seed
brings; the study in bench/yardstick.py checks it against the spread over real sampling seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from .metrics import frechet_distance, gaussian_stats, psnr

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 500


@dataclass
class Features:
    """One image set as the metrics see it: features [N, D] (float64) and predicted class [N]
    (or None), plus the images for pixel metrics (optional)."""

    feats: np.ndarray
    pred: np.ndarray | None = None
    images: torch.Tensor | None = None
    src: np.ndarray | None = None  # a resampled set: each row's index in the original set

    def __len__(self) -> int:
        return self.feats.shape[0]

    def take(self, idx: np.ndarray) -> "Features":
        return Features(self.feats[idx], None if self.pred is None else self.pred[idx],
                        None if self.images is None else self.images[torch.as_tensor(idx)],
                        idx if self.src is None else self.src[idx])


@dataclass
class Reference:
    """The real data a set is compared with: its features, Gaussian statistics and class
    histogram (shares summing to 1)."""

    feats: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    class_share: np.ndarray | None = None
    k: int = 3

    def __post_init__(self):
        # KID's kernel expects features of order 1 (Inception pool features); a classifier's
        # penultimate features can be far larger, and (x.y / d + 1)^3 then grows with their
        # scale cubed. One constant for the whole space, the real features' RMS value, brings
        # them to order 1 without changing their geometry.
        self.kid_scale = float(np.sqrt(np.mean(self.feats ** 2)))
        # computed once: every bootstrap draw compares with the same reference
        y, n = self.feats / self.kid_scale, len(self.feats)
        kyy = _poly_kernel(y, y)
        self.kyy_term = float((kyy.sum() - np.trace(kyy)) / (n * (n - 1)))
        self.radii = torch.as_tensor(_kth_radius(self.feats, self.k))

    @classmethod
    def of(cls, feats, labels=None, num_classes: int | None = None) -> "Reference":
        f = np.asarray(feats, dtype=np.float64)
        mu, sigma = gaussian_stats(f)
        share = None
        if labels is not None:
            counts = np.bincount(np.asarray(labels), minlength=num_classes or 0).astype(np.float64)
            share = counts / counts.sum()
        return cls(f, mu, sigma, share)


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel (Bińkowski et al. 2018): (a.b / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(feats: np.ndarray, ref: Reference, src: np.ndarray | None = None) -> float:
    """Unbiased squared MMD with KID's polynomial kernel between a set and the reference, on
    all images of both (no subsets: the sets here are small enough for whole kernel matrices).
    `src` (a bootstrap resample's original indices): pairs of copies of one image are left out
    like the diagonal, so the resampled estimate stays unbiased."""
    x = np.asarray(feats, dtype=np.float64) / ref.kid_scale
    kxx = _poly_kernel(x, x)
    if src is None:
        m = len(x)
        within = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    else:
        other = src[:, None] != src[None, :]
        within = kxx[other].mean()
    return float(within + ref.kyy_term - 2 * _poly_kernel(x, ref.feats / ref.kid_scale).mean())


def _kth_radius(feats: np.ndarray, k: int) -> np.ndarray:
    d = torch.cdist(torch.as_tensor(feats), torch.as_tensor(feats))
    return d.kthvalue(k + 1, dim=1).values.numpy()  # k+1: the point itself is at distance 0


def precision_recall(feats: np.ndarray, ref: Reference, recall: bool = True) -> tuple[float, float | None]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, k = ref.k): the share of
    generated images inside the real manifold (union of k-NN balls around real features), and
    the share of real images inside the generated one."""
    x, y = torch.as_tensor(np.asarray(feats, dtype=np.float64)), torch.as_tensor(ref.feats)
    d = torch.cdist(x, y)  # [gen, real]
    precision = (d <= ref.radii[None, :]).any(dim=1).double().mean().item()
    if not recall:
        return precision, None
    rx = torch.as_tensor(_kth_radius(x.numpy(), ref.k))
    return precision, (d.T <= rx[None, :]).any(dim=1).double().mean().item()


def class_tv(pred: np.ndarray, ref: Reference) -> float:
    """Total-variation distance between the predicted-class histogram and the reference's
    class shares: 0 = the same class proportions, 1 = disjoint."""
    k = len(ref.class_share)
    share = np.bincount(pred, minlength=k)[:k] / len(pred)
    return float(0.5 * np.abs(share - ref.class_share).sum())


def set_metrics(s: Features, ref: Reference, with_recall: bool = True) -> dict:
    """FID, KID (x 10^3), class-histogram TV, precision (and recall) of a set vs the reference."""
    mu, sigma = gaussian_stats(s.feats)
    out = {"fid": frechet_distance(mu, sigma, ref.mu, ref.sigma), "kid_x1e3": 1e3 * kid(s.feats, ref, s.src)}
    if s.pred is not None and ref.class_share is not None:
        out["class_tv"] = class_tv(s.pred, ref)
    p, r = precision_recall(s.feats, ref, recall=with_recall)
    out["precision"] = p
    if with_recall:
        out["recall"] = r
    return out


def pair_metrics(a: Features, b: Features) -> dict:
    """Image-by-image agreement of two sets from the same noise (row i of each from the same
    initial noise): PSNR (pixels), the class flip rate, and the mean squared feature distance
    relative to the mean squared distance between two unrelated images of `b`."""
    out = {}
    if a.images is not None and b.images is not None:
        out["psnr"] = psnr(a.images, b.images)
    if a.pred is not None and b.pred is not None:
        out["class_flip"] = float(np.mean(a.pred != b.pred))
    d_pair = np.mean(np.sum((a.feats - b.feats) ** 2, axis=1))
    # mean over i != j of ||b_i - b_j||^2 = 2 * (sum of per-dimension variances), unbiased
    d_any = 2.0 * np.sum(np.var(b.feats, axis=0, ddof=1))
    out["feat_dist"] = float(d_pair / d_any)
    return out


def with_intervals(values: dict, boot: list[dict], confidence: float = CONFIDENCE) -> dict:
    """{name: {"value", "ci": [lo, hi], "se"}} from the point values and their bootstrap
    replicas: the normal interval value ± z se, se the replicas' standard deviation. Not the
    replicas' percentiles: a resample holds about 63 % distinct images, which moves FID
    (fewer distinct images, smaller covariance) by more than its spread, so percentile
    intervals of FID need not even contain the estimate."""
    z = float(scipy.stats.norm.ppf(0.5 + confidence / 2))
    out = {}
    for k, v in values.items():
        reps = np.array([b[k] for b in boot if k in b and np.isfinite(b[k])])
        se = float(reps.std(ddof=1)) if len(reps) > 1 else None
        out[k] = {"value": v, "ci": None if se is None or not np.isfinite(v) else [v - z * se, v + z * se], "se": se}
    return out


def measure(a: Features, ref: Reference, fp: Features | None = None, reps: int = BOOTSTRAP_REPS,
            seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Everything for set `a` with bootstrap intervals: its metrics vs the reference
    ("set"), and when `fp` (same noise) is given, the paired differences a - fp of those
    metrics ("delta") and the image-by-image agreement ("pair"). One bootstrap draw resamples
    image indices jointly for a and fp, so every interval is the one of a paired comparison.
    Recall is not bootstrapped (duplicates shrink the k-NN radii of the generated manifold)."""
    if fp is not None and len(fp) != len(a):
        raise ValueError(f"paired sets differ in size: {len(a)} vs {len(fp)}")
    rng = np.random.default_rng(seed)
    point_a = set_metrics(a, ref)
    point_fp = set_metrics(fp, ref) if fp is not None else None
    boot_set, boot_delta, boot_pair = [], [], []
    for _ in range(reps):
        idx = rng.integers(0, len(a), len(a))
        ra = a.take(idx)
        ma = set_metrics(ra, ref, with_recall=False)
        boot_set.append(ma)
        if fp is not None:
            rf = fp.take(idx)
            mf = set_metrics(rf, ref, with_recall=False)
            boot_delta.append({k: ma[k] - mf[k] for k in ma})
            boot_pair.append(pair_metrics(ra, rf))
    out = {"num": len(a), "reps": reps, "confidence": confidence,
           "set": with_intervals(point_a, boot_set, confidence)}
    if fp is not None:
        out["delta"] = with_intervals({k: point_a[k] - point_fp[k] for k in point_a}, boot_delta, confidence)
        out["pair"] = with_intervals(pair_metrics(a, fp), boot_pair, confidence)
    return out
