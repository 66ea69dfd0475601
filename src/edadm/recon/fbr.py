"""The reconstruction losses: EDA-DM's FBR (block output error plus the inner layers'),
BRECQ's block loss as its add_loss = 0 case, the reference codes' Lp form, and the
timestep-balanced weights (ReconConfig.step_balance)."""
from __future__ import annotations

import torch


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """channel_mse of each sample of batch-first tensors: [N]."""
    d = (pred - target).pow(2)
    if d.dim() <= 1:
        return d
    ch = 1 if d.dim() == 4 else d.dim() - 1
    return d.sum(ch).reshape(d.shape[0], -1).mean(1)


def channel_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                p: float = 2.0) -> torch.Tensor:
    """|error|^p (p = 2: squared error) summed over channels, averaged over everything else (the
    reference lp_loss). weight [N]: per-sample weights of a batch-first tensor (mean over samples
    of weight * error; p = 2 only)."""
    if weight is not None:
        return (per_sample_mse(pred, target) * weight).mean()
    if p == 2 and pred.dim() >= 2:
        # sum over channels, mean over the rest = total sum / (elements per channel); mse_loss
        # is one fused op forward and backward (pow, sum and mean were three, issue 34)
        return torch.nn.functional.mse_loss(pred, target, reduction="sum") / (pred.numel() / pred.shape[
            1 if pred.dim() == 4 else pred.dim() - 1])
    d = (pred - target).pow(2) if p == 2 else (pred - target).abs().pow(p)
    if d.dim() <= 1:
        return d.mean()
    ch = 1 if d.dim() == 4 else d.dim() - 1
    return d.sum(ch).mean()


def fbr_loss(out: torch.Tensor, target: torch.Tensor, inner_out: list[torch.Tensor],
             inner_target: list[torch.Tensor], add_loss: float,
             weight: torch.Tensor | None = None, p: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, block term, inner term): block Lp error (p = 2: MSE) + add_loss * sum of
    inner-layer MSEs, each optionally weighted per sample (`weight`, see step_balance_weights)."""
    block = channel_mse(out, target, weight, p=p)
    inner = sum((channel_mse(o, t, weight) for o, t in zip(inner_out, inner_target)),
                torch.zeros((), device=out.device))
    return block + add_loss * inner if add_loss else block, block, inner


def step_balance_weights(err: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights that give every timestep the same say (ReconConfig.step_balance
    "relative"): w_i = mean error / mean error of sample i's timestep, from the errors `err`
    [N] before reconstruction. The weighted loss then averages each timestep's error relative
    to where it started, so reconstruction cannot buy a large absolute gain at the noisy
    middle steps with a relative loss at the few low-noise last steps (docs/findings.md, W8A8). Mean weight ~1: the loss keeps its scale against the rounding term."""
    w = torch.empty_like(err)
    for v in t.unique():
        sel = t == v
        w[sel] = err.mean() / err[sel].mean().clamp_min(1e-30)
    return w


def trajectory_bins(calib, bins: int) -> torch.Tensor:
    """For each calibration sample, which of `bins` equal stretches of the sampler steps it
    comes from (0 = the first, x_T end): the groups step_balance_weights averages over when
    ReconConfig.step_balance_bins is set."""
    return calib.step.long() * bins // calib.counts.numel()
