"""TDAC: Temporal Distribution Alignment Calibration (EDA-DM).

Per denoising step i the feature map F_i (the mid-block attention input over all B
trajectories) is compared with every other step:

- density D_i: how many other steps j lie within radius r, mean((F_i - F_j)^2) <= r;
- variety V_i: sum over j != i and over positions (n, h, w) of 1 - cos(F_i[n,:,h,w], F_j[n,:,h,w]).

Both reduce to Gram matrices over steps, which are sums over trajectories: they are
accumulated batch by batch while trajectories are collected, so the S x B x C x H x W
feature tensor never exists at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .counts import fix_rounding

DEFAULT_RADIUS_QUANTILE = 0.2


class TdacAccumulator:
    """Streams per-batch features ([S] tensors of [b, C, H, W] or [b, L, C]) into Gram matrices."""

    def __init__(self):
        self.gram: torch.Tensor | None = None      # sum over elements of F_i * F_j
        self.cos_gram: torch.Tensor | None = None  # sum over positions of cos(F_i, F_j)
        self.elements = 0   # elements per step (B * C * H * W)
        self.positions = 0  # positions per step (B * H * W)

    @torch.no_grad()
    def add(self, feats: list[torch.Tensor]) -> None:
        f = torch.stack([x.detach().double().cpu() for x in feats])  # [S, b, ...]
        chan_dim = 2 if f.dim() == 5 else f.dim() - 1  # conv maps: channels first; tokens: last
        unit = f / f.norm(dim=chan_dim, keepdim=True).clamp_min(1e-12)
        flat, uflat = f.reshape(f.shape[0], -1), unit.reshape(f.shape[0], -1)
        g, gc = flat @ flat.T, uflat @ uflat.T
        self.gram = g if self.gram is None else self.gram + g
        self.cos_gram = gc if self.cos_gram is None else self.cos_gram + gc
        self.elements += flat.shape[1]
        self.positions += uflat.shape[1] // f.shape[chan_dim]

    def distances(self) -> torch.Tensor:
        """[S, S] mean squared distance between step feature maps."""
        d = self.gram.diagonal()
        return ((d[:, None] + d[None, :] - 2 * self.gram) / self.elements).clamp_min(0)

    def variety_pairs(self) -> torch.Tensor:
        """[S, S] sum over positions of (1 - cosine similarity)."""
        return self.positions - self.cos_gram


def _minmax(v: torch.Tensor) -> torch.Tensor:
    """Min-max normalise to [0, 1]; a constant vector carries no information and maps to 0."""
    lo, hi = v.min(), v.max()
    if hi - lo <= 1e-12 * max(1.0, float(hi.abs())):
        return torch.zeros_like(v)
    return (v - lo) / (hi - lo)


@dataclass
class TdacResult:
    counts: torch.Tensor
    density: torch.Tensor
    variety: torch.Tensor
    weights: torch.Tensor
    radius: float
    radius_quantile: float | None


def auto_radius(dist: torch.Tensor, quantile: float = DEFAULT_RADIUS_QUANTILE) -> float:
    """Scale-free radius: the `quantile` of all pairwise step distances (off-diagonal).

    The reference code hard-codes r per dataset (3.0 / 0.3), which depends on each model's
    feature scale; a quantile means "on average a step has `quantile` of the other steps
    within reach", whatever the scale.
    """
    s = dist.shape[0]
    off = dist[~torch.eye(s, dtype=torch.bool)]
    return float(torch.quantile(off.float(), quantile)) if off.numel() else 0.0


def tdac_allocation(dist: torch.Tensor, variety_pairs: torch.Tensor, num_samples: int, lam: float = 1.2,
                    radius: float | str = "auto", radius_quantile: float = DEFAULT_RADIUS_QUANTILE) -> TdacResult:
    """Per-step sample counts: round(N * w_i / sum w), w = minmax(D) + lambda * minmax(V), summing to N."""
    s = dist.shape[0]
    off = ~torch.eye(s, dtype=torch.bool)
    q = None
    if radius == "auto":
        q = radius_quantile
        r = auto_radius(dist, radius_quantile)
    else:
        r = float(radius)
    density = ((dist <= r) & off).sum(1).double()
    variety = (variety_pairs * off).sum(1).double()
    weights = _minmax(density) + lam * _minmax(variety)
    counts = fix_rounding(weights, num_samples)
    return TdacResult(counts=counts, density=density, variety=variety, weights=weights, radius=r, radius_quantile=q)
