"""PTQD's correction of the quantized denoiser's output noise (He et al., NeurIPS 2023),
applied by the sampler; none of it is in EDA-DM's code (issue 36 item 5).

The quantized output is modelled per sampler step i as eps_q = (1 + k_i) eps_fp + r_i. On
held-out FP trajectories (x_t of the FP sampler fed to both models), per step:
- k_i: the least-squares slope of the error (eps_q - eps_fp) on eps_fp, clipped at 0 as the
  reference does (a negative slope is left uncorrected);
- b_i: the mean of the residual r_i per channel (the reference takes the mean of the error,
  which differs by k_i * mean(eps_fp), about 0 for an eps prediction; the residual's mean is
  what makes the correction below exact in expectation);
- s_i: the standard deviation of r_i - b_i.
The sampler then uses eps = (eps_q - b_i) / (1 + k_i). With eta > 0 (DDIM's stochastic
steps) it also shrinks its own noise so that the residual's contribution to x_{t-1},
(c_i s_i / (1 + k_i))^2 with c_i eps's coefficient in the DDIM update, is absorbed ("variance
schedule calibration"); with eta = 0, and for schedulers that take no variance noise
(DDPMScheduler draws its own), only the correlated and bias corrections act.

A few numbers per step, applied outside the denoiser: the same for the fake-quant
simulation, the integer engine and the ONNX runtimes. The table belongs to one step count and
guidance scale; sampling with others leaves it unused (with a warning).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import EdadmError

log = logging.getLogger("edadm")

CORRECTION_FILE = "edadm_correction.json"
METHODS = ("none", "ptqd")


@dataclass
class OutputCorrection:
    """Per sampler step: slope k, per-channel bias, residual std (see the module docstring)."""

    steps: int
    guidance_scale: float
    k: list[float]
    bias: list[list[float]]
    residual_std: list[float]
    samples: int
    method: str = "ptqd"
    # the bias rows as tensors, per (device, dtype): built once, not at every denoiser call
    _bias: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        n = len(self.k)
        if not (len(self.bias) == len(self.residual_std) == n) or n == 0:
            raise EdadmError(f"output correction: {len(self.k)} slopes, {len(self.bias)} biases and "
                             f"{len(self.residual_std)} residual stds (one each per sampler step)")
        if any(not math.isfinite(v) or v < 0 for v in self.k) or any(
                not math.isfinite(v) for row in self.bias for v in row):
            raise EdadmError("output correction: slopes must be finite and >= 0, biases finite")
        if len({len(row) for row in self.bias}) != 1:
            raise EdadmError("output correction: every step's bias must have the same number of channels")

    def matches(self, steps: int, guidance_scale: float, num_calls: int) -> bool:
        return self.steps == steps and abs(self.guidance_scale - guidance_scale) < 1e-9 and len(self.k) == num_calls

    def apply(self, i: int, out: torch.Tensor) -> torch.Tensor:
        """eps = (eps_q - b_i) / (1 + k_i) for the output of sampler step i."""
        key = (out.device, out.dtype)
        if key not in self._bias:
            self._bias[key] = torch.tensor(self.bias, device=out.device, dtype=out.dtype)
        b = self._bias[key][i]
        if b.numel() != out.shape[1]:
            raise EdadmError(f"output correction has {b.numel()} channels, the denoiser output {out.shape[1]}")
        return (out - b.view(1, -1, *([1] * (out.dim() - 2)))) / (1.0 + self.k[i])

    def noise_factor(self, sched, i: int, t, eta: float) -> float:
        """The factor on DDIM's variance noise at step i that absorbs the residual's variance."""
        if eta <= 0 or self.residual_std[i] == 0:
            return 1.0
        ac = sched.alphas_cumprod
        prev_t = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
        a_t = float(ac[int(t)])
        a_prev = float(ac[prev_t]) if prev_t >= 0 else float(sched.final_alpha_cumprod)
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        sigma2 = eta ** 2 * var
        if sigma2 <= 0:
            return 1.0
        c = math.sqrt(max(1 - a_prev - sigma2, 0.0)) - math.sqrt(a_prev) * math.sqrt(1 - a_t) / math.sqrt(a_t)
        extra = (c * self.residual_std[i] / (1.0 + self.k[i])) ** 2
        return math.sqrt(max(sigma2 - extra, 0.0) / sigma2)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> "OutputCorrection":
        try:
            return cls(steps=int(d["steps"]), guidance_scale=float(d["guidance_scale"]),
                       k=[float(v) for v in d["k"]], bias=[[float(v) for v in row] for row in d["bias"]],
                       residual_std=[float(v) for v in d["residual_std"]], samples=int(d["samples"]),
                       method=str(d.get("method", "ptqd")))
        except (KeyError, TypeError, ValueError) as exc:
            raise EdadmError(f"bad output correction ({type(exc).__name__}: {exc})") from exc


def read_correction(path: str | Path) -> OutputCorrection | None:
    """The correction saved in a quantized directory, or None."""
    f = Path(path) / CORRECTION_FILE
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdadmError(f"{f}: cannot read the output correction ({exc})") from exc
    try:
        return OutputCorrection.from_dict(d)
    except EdadmError as exc:
        raise EdadmError(f"{f}: {exc}") from exc


@dataclass
class FPRecord:
    """x_t and the FP model's (guided) output at every sampler step of `num` held-out
    trajectories: what fitting the correction compares the quantized model against."""

    xs: torch.Tensor        # [steps, num, C, H, W]: x_t before step i (scaled model input)
    outs: torch.Tensor      # [steps, num, C, H, W]
    timesteps: list[int]
    seed: int
    steps: int
    eta: float
    guidance_scale: float
    batch_size: int


@torch.no_grad()
def record_fp(pipe, num: int = 64, seed: int = 20_000, steps: int | None = None, eta: float | None = None,
              guidance_scale: float | None = None, batch_size: int = 64, progress: bool = True) -> FPRecord:
    """Run `num` FP trajectories (images 0..num-1 of run `seed`, as `generate` samples them)
    and keep every step's model input and output."""
    from .sampling import generate, resolve_sampling
    from .state import as_pipeline

    pipe = as_pipeline(pipe)
    s = resolve_sampling(pipe, steps, eta, guidance_scale)
    kept: dict[int, tuple[list, list]] = {}  # batch start -> (inputs, outputs) per step
    ts: list[int] = []

    def keep(b0, i, t, xt, out):
        bx, bo = kept.setdefault(b0, ([], []))
        bx.append(pipe.scheduler.scale_model_input(xt, t).float().cpu())
        bo.append(out.float().cpu())
        if b0 == 0:
            ts.append(int(t))

    generate(pipe, num, seed, s.steps, s.eta, batch_size=batch_size, progress=progress, callback=keep,
             guidance_scale=s.guidance_scale, correct=False)
    xs = torch.cat([torch.stack(bx, 1) for bx, _ in kept.values()])
    outs = torch.cat([torch.stack(bo, 1) for _, bo in kept.values()])
    return FPRecord(xs.transpose(0, 1).contiguous(), outs.transpose(0, 1).contiguous(), ts,
                    seed, s.steps, s.eta, s.guidance_scale, batch_size)


def step_statistics(q: torch.Tensor, f: torch.Tensor) -> tuple[float, list[float], float]:
    """(k, per-channel bias, residual std) of quantized outputs q against FP outputs f,
    [N, C, ...] each, in float64."""
    q, f = q.double(), f.double()
    e = (q - f).flatten()
    x = f.flatten()
    xc = x - x.mean()
    var = float((xc * xc).sum())
    slope = float((xc * (e - e.mean())).sum()) / var if var > 0 else 0.0
    k = max(slope, 0.0)
    r = q - (1 + k) * f
    dims = [d for d in range(r.dim()) if d != 1]
    b = r.mean(dim=dims)
    s = float((r - b.view(1, -1, *([1] * (r.dim() - 2)))).std())
    return k, b.tolist(), s


@torch.no_grad()
def fit(record: FPRecord, qpipe, progress: bool = True) -> OutputCorrection:
    """PTQD's per-step table for quantized pipeline `qpipe` against an FP record."""
    from .model.families import get_denoiser
    from .sampling import conditioning, guided_output

    unet = get_denoiser(qpipe)
    dev = next(unet.parameters()).device
    num = record.xs.shape[1]
    ks, biases, stds = [], [], []
    for i, t in enumerate(tqdm(record.timesteps, desc="PTQD: quantized outputs", unit="step",
                               disable=not progress)):
        qs = []
        for b0 in range(0, num, record.batch_size):
            n = min(record.batch_size, num - b0)
            cond, uncond = conditioning(qpipe, b0, n, guidance_scale=record.guidance_scale)
            x = record.xs[i, b0:b0 + n].to(dev)
            qs.append(guided_output(unet, x, torch.tensor(t), cond, uncond, record.guidance_scale).float().cpu())
        k, b, s = step_statistics(torch.cat(qs), record.outs[i])
        ks.append(k)
        biases.append(b)
        stds.append(s)
    return OutputCorrection(steps=record.steps, guidance_scale=record.guidance_scale, k=ks, bias=biases,
                            residual_std=stds, samples=num)


def fit_ptqd(fp_pipe, qpipe, num: int = 64, seed: int = 20_000, batch_size: int = 64,
             progress: bool = True) -> OutputCorrection:
    """The correction of an already-quantized pipeline against its FP pipeline, at the
    quantized pipeline's sampler settings."""
    from .state import as_pipeline

    s = as_pipeline(qpipe).sampling
    rec = record_fp(fp_pipe, num, seed, s.steps, s.eta, s.guidance_scale, batch_size, progress)
    return fit(rec, qpipe, progress)
