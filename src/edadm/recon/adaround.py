"""AdaRound: learned up / down rounding of weights (Nagel et al. 2020), as BRECQ uses it.

w_q = (clamp(floor(w / s) + h(alpha) + z, qmin, qmax) - z) * s, with the rectified
sigmoid h(alpha) = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1); after
optimisation h is replaced by the hard decision alpha >= 0.
"""
from __future__ import annotations

import torch
from torch import nn

from ..quant.quantizer import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1


class AdaRoundQuantizer(nn.Module):
    """Wraps a calibrated per-channel weight quantizer; scale and zero point stay fixed."""

    def __init__(self, base: UniformQuantizer, weight: torch.Tensor):
        super().__init__()
        self.base = base
        s = base._view(base.scale.detach(), weight)
        x = weight.detach() / s
        self.register_buffer("w_floor", torch.floor(x))
        rest = (x - self.w_floor).clamp(1e-4, 1 - 1e-4)
        # alpha such that h(alpha) equals the fractional part: starts at the FP weight
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.hard = False

    def h(self) -> torch.Tensor:
        if self.hard:
            return (self.alpha >= 0).to(self.alpha.dtype)
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        b = self.base
        s, z = b._view(b.scale.detach(), w), b._view(b.zero_point, w)
        q = torch.clamp(self.w_floor + self.h() + z, b.qmin, b.qmax)
        return (q - z) * s

    def round_loss(self, beta: float) -> torch.Tensor:
        """Pushes h toward 0 or 1: sum(1 - |2h - 1|^beta)."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()
