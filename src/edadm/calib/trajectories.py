"""Full-precision sampling trajectories: every x_t of the evaluation sampler."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pipeline import generate


@dataclass
class Trajectories:
    """xs[s, b]: the denoiser input x_t at step s of trajectory b (x_T included, x_0 not).

    ts[s]: the timestep value of step s. Stored on CPU.
    """

    xs: torch.Tensor
    ts: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.xs.shape[0]

    @property
    def num_trajectories(self) -> int:
        return self.xs.shape[1]


@torch.no_grad()
def collect_trajectories(pipe, num: int, seed: int, steps: int | None = None, eta: float | None = None,
                         batch_size: int = 64, progress: bool = True) -> Trajectories:
    """Sample `num` trajectories with the pipeline's FP denoiser and keep every x_t."""
    chunks: dict[int, list[torch.Tensor]] = {}
    ts: list[int] = []

    def record(b0, i, t, xt, out):
        chunks.setdefault(b0, []).append(xt.detach().float().cpu())
        if b0 == 0:
            ts.append(int(t))

    generate(pipe, num, seed=seed, steps=steps, eta=eta, batch_size=batch_size, progress=progress, callback=record)
    xs = torch.cat([torch.stack(chunks[b]) for b in sorted(chunks)], dim=1)  # [S, B, C, H, W]
    return Trajectories(xs=xs, ts=torch.tensor(ts, dtype=torch.long))
