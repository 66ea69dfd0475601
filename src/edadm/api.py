"""The public Python surface: quantize a pipeline, save it, load it."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from .calib import assemble, collect_trajectories, uniform_counts
from .config import QuantConfig
from .errors import EdadmError
from .pipeline import sampling_defaults
from .quant.calibrate import init_act_ranges, init_weight_ranges
from .quant.wrap import wrap_model

log = logging.getLogger("edadm")


@dataclass
class QuantReport:
    """What quantization did and what it cost."""

    config: dict
    steps: int
    eta: float
    counts: list[int]
    timesteps: list[int]
    seconds: dict = field(default_factory=dict)
    peak_memory_mb: float | None = None
    plan: dict = field(default_factory=dict)


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return None


def quantize(pipe, config: QuantConfig | None = None, progress: bool = True):
    """Quantize `pipe.unet` in place (fake quantization) and return (pipe, QuantReport).

    Steps: FP trajectories of the evaluation sampler -> calibration set -> wrap layers ->
    weight ranges -> activation ranges (-> reconstruction, for methods that have it).
    """
    config = config or QuantConfig()
    config.validate()
    torch.manual_seed(config.seed)
    defaults = sampling_defaults(pipe)
    steps = config.steps or defaults.steps
    eta = defaults.eta if config.eta is None else config.eta
    c = config.calib
    if c.num_samples < 1:
        raise EdadmError("calibration needs at least one sample")
    seconds = {}
    t0 = time.time()
    traj = collect_trajectories(pipe, c.num_trajectories, seed=config.seed + 10_000, steps=steps, eta=eta,
                                batch_size=c.batch_size, progress=progress)
    if not torch.isfinite(traj.xs).all():
        raise EdadmError("full-precision trajectories contain NaN or Inf; check the model and sampler settings")
    seconds["trajectories"] = time.time() - t0
    counts = uniform_counts(traj.num_steps, c.num_samples, num_used=c.uniform_steps)
    calib = assemble(traj, counts, seed=config.seed)
    del traj
    t0 = time.time()
    plan = wrap_model(pipe.unet, config)
    init_weight_ranges(pipe.unet, method=config.weight_range, p=config.lp)
    init_act_ranges(pipe.unet, calib, batch_size=c.batch_size, method=config.act_range, p=config.lp,
                    seed=config.seed, progress=progress)
    seconds["scales"] = time.time() - t0
    report = QuantReport(config=config.to_dict(), steps=steps, eta=eta, counts=counts.tolist(),
                         timesteps=calib.t.unique().tolist(), seconds={k: round(v, 2) for k, v in seconds.items()},
                         peak_memory_mb=_peak_rss_mb(),
                         plan={k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in plan.items()})
    pipe._edadm_quant = (config, report)
    return pipe, report
