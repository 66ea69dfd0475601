"""Integer sample counts from weights: the one rounding rule every calibration allocation
(uniform, PTQ4DM, TDAC) uses, in a module of its own so that select and tdac both import it
without importing each other."""
from __future__ import annotations

import torch


def fix_rounding(weights: torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts proportional to weights that sum to `total` exactly (largest remainders)."""
    w = weights.double().clamp_min(0)
    if w.sum() <= 0:
        w = torch.ones_like(w)
    exact = w / w.sum() * total
    counts = exact.floor().long()
    short = total - int(counts.sum())
    if short > 0:
        order = torch.argsort(exact - counts, descending=True, stable=True)
        counts[order[:short]] += 1
    return counts
