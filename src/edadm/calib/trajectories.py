"""Full-precision sampling trajectories: every x_t of the evaluation sampler."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..sampling import conditioning, generate, sampling_defaults
from .tdac import TdacAccumulator


@dataclass
class Trajectories:
    """xs[s, b]: the denoiser input x_t at step s of trajectory b (x_T included, x_0 not).

    ts[s]: the timestep value of step s. Stored on CPU. `features`: TDAC statistics of the
    feature map at every step, when a feature module was given.

    Trajectories need not all be stored whole: with `total` > xs.shape[1] the first
    xs.shape[1] are, and `states` asks `sampler(indices, steps)` for the others' states at the
    steps a calibration set takes from them (each run only up to that step, issue 34), keeping
    what it returned.
    """

    xs: torch.Tensor
    ts: torch.Tensor
    features: TdacAccumulator | None = None
    cond: dict = field(default_factory=dict)    # per-trajectory denoiser kwargs (class_labels [B])
    uncond: dict = field(default_factory=dict)  # their classifier-free-guidance counterpart (null class)
    guidance_scale: float = 1.0
    total: int | None = None       # trajectories in all (None: xs.shape[1], every one stored)
    sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    _sampled: dict = field(default_factory=dict, repr=False)  # (trajectory, step) -> x_t from sampler
    sampler_seconds: float = 0.0   # wall time spent in `sampler` so far (part of the trajectories stage)

    @property
    def num_steps(self) -> int:
        return self.xs.shape[0]

    @property
    def num_trajectories(self) -> int:
        return self.xs.shape[1] if self.total is None else self.total

    @property
    def stored(self) -> int:
        """How many trajectories are stored whole (the first ones)."""
        return self.xs.shape[1]

    def states(self, steps: torch.Tensor, trajs: torch.Tensor) -> torch.Tensor:
        """x_t of trajectory trajs[k] at step steps[k], [K, ...]."""
        steps, trajs = steps.long(), trajs.long()
        out = torch.empty((steps.numel(), *self.xs.shape[2:]), dtype=self.xs.dtype)
        inside = trajs < self.stored
        out[inside] = self.xs[steps[inside], trajs[inside]]
        rest = (~inside).nonzero().flatten().tolist()
        if not rest:
            return out
        if self.sampler is None:
            raise ValueError(f"trajectories {self.stored}.. are not stored and there is no sampler for them")
        key = lambda r: (int(trajs[r]), int(steps[r]))  # noqa: E731
        missing = [r for r in rest if key(r) not in self._sampled]
        if missing:
            t0 = time.time()
            got = self.sampler(trajs[missing], steps[missing])
            self.sampler_seconds += time.time() - t0
            self._sampled.update({key(r): x for r, x in zip(missing, got)})
        out[rest] = torch.stack([self._sampled[key(r)] for r in rest])
        return out


@torch.no_grad()
def collect_trajectories(pipe, num: int, seed: int, steps: int | None = None, eta: float | None = None,
                         batch_size: int = 64, progress: bool = True,
                         feature_module: nn.Module | None = None, guidance_scale: float | None = None,
                         dist_info=None) -> Trajectories:
    """Sample `num` trajectories with the pipeline's FP denoiser and keep every x_t.

    With `feature_module`, its input at every step is folded into TDAC statistics batch by
    batch (the features themselves are not kept).

    dist_info (edadm.dist.DistInfo, under torchrun): each process samples the batches it
    owns (batch b to rank b mod N, the same batches as one process samples), then every
    process receives all of them and the summed TDAC statistics.
    """
    if dist_info is not None and dist_info.world_size > 1:
        return _collect_distributed(pipe, num, seed, steps, eta, batch_size, progress, feature_module,
                                    guidance_scale, dist_info)
    chunks: dict[int, list[torch.Tensor]] = {}
    ts: list[int] = []
    acc = TdacAccumulator() if feature_module is not None else None
    pending: list[torch.Tensor] = []
    last: list[torch.Tensor] = []
    hook = None
    if feature_module is not None:
        hook = feature_module.register_forward_pre_hook(lambda m, args: last.append(args[0].detach()))

    def record(b0, i, t, xt, out):
        chunks.setdefault(b0, []).append(xt.detach().float().cpu())
        if b0 == min(chunks):
            ts.append(int(t))
        if acc is not None:
            if i == 0 and pending:
                acc.add(pending)
                pending.clear()
            pending.append(last.pop())
            last.clear()

    try:
        generate(pipe, num, seed=seed, steps=steps, eta=eta, batch_size=batch_size, progress=progress,
                 callback=record, guidance_scale=guidance_scale)
    finally:
        if hook is not None:
            hook.remove()
    if acc is not None and pending:
        acc.add(pending)
    xs = torch.cat([torch.stack(chunks[b]) for b in sorted(chunks)], dim=1)  # [S, B, C, H, W]
    guidance = sampling_defaults(pipe).guidance_scale if guidance_scale is None else float(guidance_scale)
    cond, uncond = conditioning(pipe, 0, num, guidance_scale=guidance)  # what generate() used
    return Trajectories(xs=xs, ts=torch.tensor(ts, dtype=torch.long), features=acc, cond=cond, uncond=uncond or {},
                        guidance_scale=guidance if uncond else 1.0)


def trajectory_conditioning(pipe, num: int, guidance_scale: float | None) -> tuple[dict, dict, float]:
    """(cond, uncond, guidance) of trajectories 0..num-1, as collect_trajectories records them."""
    guidance = sampling_defaults(pipe).guidance_scale if guidance_scale is None else float(guidance_scale)
    cond, uncond = conditioning(pipe, 0, num, guidance_scale=guidance)
    return cond, uncond or {}, guidance if uncond else 1.0


def empty_trajectories(pipe, steps: int, guidance_scale: float | None = None) -> Trajectories:
    """No trajectory stored: the sampler's step count and timestep values only (what the
    allocation strategies without features need), for trajectories sampled on demand."""
    import copy

    from ..model.families import get_denoiser, sample_shape

    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    ts = sched.timesteps.long().cpu()
    # conditioning of the trajectories sampled on demand: set by the caller, which knows how many
    return Trajectories(xs=torch.empty((ts.numel(), 0, *sample_shape(get_denoiser(pipe)))), ts=ts)


def _collect_distributed(pipe, num, seed, steps, eta, batch_size, progress, feature_module, guidance_scale,
                         info) -> Trajectories:
    import torch.distributed as dist

    from ..dist import my_batches

    parts = {}
    acc = TdacAccumulator() if feature_module is not None else None
    for k, (start, n) in enumerate(my_batches(num, batch_size, info)):
        # one batch at a time through the single-process path; its TDAC sums are additive
        part = _collect_batch(pipe, start, n, seed, steps, eta, feature_module, guidance_scale,
                              progress and info.is_main and k == 0)
        parts[start] = part.xs
        ts = part.ts
        if acc is not None:
            _merge(acc, part.features)
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, (parts, acc))
    xs_by_start, total = {}, TdacAccumulator() if feature_module is not None else None
    for p, a in gathered:
        xs_by_start.update(p)
        if total is not None and a is not None and a.gram is not None:
            _merge(total, a)
    xs = torch.cat([xs_by_start[b] for b in sorted(xs_by_start)], dim=1)
    guidance = sampling_defaults(pipe).guidance_scale if guidance_scale is None else float(guidance_scale)
    cond, uncond = conditioning(pipe, 0, num, guidance_scale=guidance)
    return Trajectories(xs=xs, ts=ts, features=total, cond=cond, uncond=uncond or {},
                        guidance_scale=guidance if uncond else 1.0)


def _collect_batch(pipe, start, n, seed, steps, eta, feature_module, guidance_scale, progress) -> Trajectories:
    """Trajectories of images start..start+n-1 (one batch)."""
    chunks: list[torch.Tensor] = []
    ts: list[int] = []
    acc = TdacAccumulator() if feature_module is not None else None
    feats: list[torch.Tensor] = []
    hook = (feature_module.register_forward_pre_hook(lambda m, args: feats.append(args[0].detach()))
            if feature_module is not None else None)

    def record(b0, i, t, xt, out):
        chunks.append(xt.detach().float().cpu())
        ts.append(int(t))

    try:
        generate(pipe, n, seed=seed, steps=steps, eta=eta, batch_size=n, start=start, progress=progress,
                 callback=record, guidance_scale=guidance_scale)
    finally:
        if hook is not None:
            hook.remove()
    if acc is not None:
        acc.add(feats)
    return Trajectories(xs=torch.stack(chunks), ts=torch.tensor(ts, dtype=torch.long), features=acc)


def _merge(into: TdacAccumulator, other: TdacAccumulator) -> None:
    into.gram = other.gram.clone() if into.gram is None else into.gram + other.gram
    into.cos_gram = other.cos_gram.clone() if into.cos_gram is None else into.cos_gram + other.cos_gram
    into.elements += other.elements
    into.positions += other.positions
