"""Calibration-set selection: how many samples come from each denoising step.

Every strategy returns per-step counts summing to N; :func:`assemble` turns counts into
(step, trajectory) pairs the same way for all strategies, so they differ only in the
allocation over steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import EdadmError
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trajectories import Trajectories


def uniform_counts(num_steps: int, num_samples: int, every: int | None = None, num_used: int | None = None) -> torch.Tensor:
    """Q-Diffusion: evenly spaced steps, the same number of samples at each.

    `num_used` steps spread over the trajectory (x_T first); counts are balanced so they
    sum to `num_samples` exactly.
    """
    if num_used is None:
        num_used = len(range(0, num_steps, every or 1))
    num_used = max(1, min(num_used, num_steps, num_samples))
    idx = torch.linspace(0, num_steps - 1, num_used).round().long().unique()
    counts = torch.zeros(num_steps, dtype=torch.long)
    base, extra = divmod(num_samples, len(idx))
    counts[idx] = base
    counts[idx[:extra]] += 1
    return counts


def ptq4dm_counts(timesteps: torch.Tensor, num_samples: int, num_train_timesteps: int, mean: float = 0.4,
                  std: float = 0.4, seed: int = 0) -> torch.Tensor:
    """PTQ4DM: N timestep values drawn from a normal distribution N(mean*T, std*T) (clipped to
    [0, T-1]; T the training timesteps, 0 = clean, so mean 0.4 leans toward the end of
    denoising), each mapped to the sampler step with the nearest timestep value."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(num_samples, generator=g, dtype=torch.float64) * std + mean) * num_train_timesteps
    t = t.clamp(0, num_train_timesteps - 1)
    step = (timesteps.double()[None, :] - t[:, None]).abs().argmin(dim=1)
    return torch.bincount(step, minlength=timesteps.numel())


def random_counts(num_steps: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """Each sample from a uniformly random step."""
    g = torch.Generator().manual_seed(seed)
    return torch.bincount(torch.randint(0, num_steps, (num_samples,), generator=g), minlength=num_steps)


@dataclass
class CalibrationSet:
    """The selected samples: x_t, t, and where each came from."""

    x: torch.Tensor          # [N, C, H, W]
    t: torch.Tensor          # [N]
    step: torch.Tensor       # [N] step index
    trajectory: torch.Tensor  # [N] trajectory index
    counts: torch.Tensor     # [S] samples per step
    cond: dict = field(default_factory=dict)    # per-sample denoiser kwargs (class_labels [N])
    uncond: dict = field(default_factory=dict)  # the same under classifier-free guidance (null class)
    guidance_scale: float = 1.0

    def __len__(self) -> int:
        return self.x.shape[0]

    def head(self, n: int) -> "CalibrationSet":
        """The first n samples (the set is shuffled: they spread over the steps)."""
        return CalibrationSet(x=self.x[:n], t=self.t[:n], step=self.step[:n], trajectory=self.trajectory[:n],
                              counts=self.counts, cond={k: v[:n] for k, v in self.cond.items()},
                              uncond={k: v[:n] for k, v in self.uncond.items()}, guidance_scale=self.guidance_scale)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.x[i:i + batch_size], self.t[i:i + batch_size]

    def input_rows(self, values: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Per-sample `values` [N] laid out as the rows of the denoiser batches `model_inputs`
        yields: doubled batch by batch under classifier-free guidance (unconditional half, then
        conditional), so row i of the result goes with row i of the denoiser's outputs."""
        cfg = bool(self.uncond) and self.guidance_scale != 1.0
        return torch.cat([torch.cat([v, v]) if cfg else v for v in values.split(batch_size)])

    def model_inputs(self, batch_size: int, device):
        """(args, kwargs) for the denoiser, batch by batch, on `device`. Under classifier-free
        guidance each batch holds what the denoiser sees while sampling: the unconditional
        half, then the conditional half (METHOD.md: calibration keeps both)."""
        for i in range(0, len(self), batch_size):
            x, t = self.x[i:i + batch_size].to(device), self.t[i:i + batch_size].to(device)
            kw = {k: v[i:i + batch_size].to(device) for k, v in self.cond.items()}
            if self.uncond and self.guidance_scale != 1.0:
                ukw = {k: v[i:i + batch_size].to(device) for k, v in self.uncond.items()}
                yield (torch.cat([x, x]), torch.cat([t, t])), {k: torch.cat([ukw[k], kw[k]]) for k in kw}
            else:
                yield (x, t), kw


def assemble(traj: "Trajectories", counts: torch.Tensor, seed: int = 0, stored: int | None = None) -> CalibrationSet:
    """Repeat each step index count times, shuffle, and take each sample from its own trajectory.

    With at least as many trajectories as samples, every sample comes from a different
    trajectory: the trajectories stored whole (traj.stored, TDAC's statistics trajectories)
    take the samples of the latest steps and the others the rest, each in random order. The
    trajectories are independent draws, so which index serves which step changes nothing in
    distribution, and a trajectory not stored is sampled only up to its own step (issue 34):
    this order spares those runs the longest stretches (`stored` overrides traj.stored, e.g.
    to rebuild from whole trajectories the set a partly stored run gave). With fewer (Q-Diffusion's recipe: 256 trajectories at each of 20 steps),
    trajectories are reused, but within one step each trajectory appears at most once as long
    as the step's count does not exceed the trajectories: step by step, a cursor walks
    round-robin over the trajectories, and the samples are shuffled afterwards.
    """
    counts = counts.long()
    if counts.numel() != traj.num_steps:
        raise EdadmError(f"allocation has {counts.numel()} steps, trajectories have {traj.num_steps}")
    n = int(counts.sum())
    g = torch.Generator().manual_seed(seed)
    steps = torch.repeat_interleave(torch.arange(traj.num_steps), counts)
    if n <= traj.num_trajectories:
        steps = steps[torch.randperm(n, generator=g)]
        trajs = torch.arange(n)
        k = traj.stored if stored is None else stored
        if 0 < k < n:  # the k latest-step samples (ties in shuffled order) to the k stored trajectories
            late = torch.argsort(steps, descending=True, stable=True)
            trajs[late[:k]] = torch.randperm(k, generator=g)
            trajs[late[k:]] = k + torch.randperm(n - k, generator=g)
    else:
        trajs = torch.arange(n) % traj.num_trajectories  # consecutive within each step (steps sorted)
        perm = torch.randperm(n, generator=g)
        steps, trajs = steps[perm], trajs[perm]
    return CalibrationSet(x=traj.states(steps, trajs), t=traj.ts[steps].clone(), step=steps, trajectory=trajs,
                          counts=counts, cond={k: v[trajs].clone() for k, v in traj.cond.items()},
                          uncond={k: v[trajs].clone() for k, v in traj.uncond.items()},
                          guidance_scale=traj.guidance_scale)
