"""Fake-quantization modules: a uniform affine quantizer and an activation range observer."""
from __future__ import annotations

import torch
from torch import nn

from .primitives import (choose_qparams, fake_quantize, keep_mask, learned_step_fake_quantize, qrange, quantize,
                         search_act_range, search_weight_range)


class UniformQuantizer(nn.Module):
    """Uniform affine fake quantizer, per tensor or per output channel (dim 0).

    `scale` is a Parameter (frozen by default) so that reconstruction can learn activation
    step sizes LSQ-style; `zero_point` stays fixed once initialised.
    """

    def __init__(self, bits: int, symmetric: bool, per_channel: bool = False, channels: int = 1,
                 role: str = "act"):
        super().__init__()
        self.role = role  # "weight" or "act": which switch (set_quant_state) controls it
        self.bits = int(bits)
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        self.qmin, self.qmax = qrange(self.bits, self.symmetric)
        n = channels if per_channel else 1
        self.scale = nn.Parameter(torch.ones(n), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(n))
        self.register_buffer("initialized", torch.tensor(False))
        self.enabled = True
        self.observer: ActObserver | None = None  # set during range calibration
        self.drop_prob = 0.0  # QDrop: during reconstruction, keep each element in float with this probability
        self.mask_pool = None  # primitives.MaskPool the reconstruction loop draws QDrop's masks from (else keep_mask)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        return f"bits={self.bits}, {'symmetric' if self.symmetric else 'asymmetric'}, {kind}"

    @torch.no_grad()
    def set_range(self, xmin: torch.Tensor | float, xmax: torch.Tensor | float) -> None:
        xmin = torch.as_tensor(xmin, dtype=torch.float32).reshape(-1)
        xmax = torch.as_tensor(xmax, dtype=torch.float32).reshape(-1)
        s, z = choose_qparams(xmin, xmax, self.bits, self.symmetric)
        self.scale.data = s.to(self.scale.device).expand_as(self.scale).clone()
        self.zero_point.copy_(z.to(self.zero_point.device).expand_as(self.zero_point))
        self.initialized.fill_(True)

    @torch.no_grad()
    def init_from_weight(self, w: torch.Tensor, method: str = "mse", p: float = 2.4) -> None:
        lo, hi = search_weight_range(w, self.bits, self.symmetric, self.per_channel, method=method, p=p)
        self.set_range(lo, hi)

    def _view(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, *([1] * (x.dim() - 1))) if self.per_channel else v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
        if not self.enabled or not bool(self.initialized):
            return x
        if x.dtype != torch.float32:
            xq = fake_quantize(x, self._view(self.scale, x).to(x.dtype), self._view(self.zero_point, x).to(x.dtype),
                               self.qmin, self.qmax)
        elif torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad):
            # reconstruction: straight-through gradients to x, LSQ's to a learned step size
            # (none where the scale is frozen), QDrop's choice in the same autograd node
            keep = self._keep(x) if self.drop_prob > 0 else None
            scale = self._view(self.scale if self.scale.requires_grad else self.scale.detach(), x)
            return learned_step_fake_quantize(x, scale, self._view(self.zero_point, x), self.qmin, self.qmax, keep)
        else:
            xq = self._inference(x)
        if self.drop_prob > 0:  # QDrop: each element kept in float with probability drop_prob
            xq = torch.lerp(xq, x, self._keep(x))
        return xq

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_pool(x, self.drop_prob) if self.mask_pool is not None else keep_mask(x, self.drop_prob)

    @torch.no_grad()
    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """No-gradient path: quantize()'s codes and their dequantized values by a chain of
        in-place ops, (round(x * (1 / s)) clamped to [qmin - z, qmax - z]) * s, which equals
        (clamp(round(x / s) + z, qmin, qmax) - z) * s exactly for an integer z and is
        bit-identical to PyTorch's fused fake-quant kernels (tests/quant/test_one_rule.py).
        Written out because torch.fake_quantize_per_tensor_affine (tensor qparams) also
        writes the gradient mask and runs one thread: it took 41 % of a quantized digits-ddpm
        forward pass, 0.96 ms per call at batch 64 on 2 AVX-512 cores; this chain runs
        several times faster (issue 34: range calibration, the reconstruction's capture
        passes and fake-quant sampling are such forward passes)."""
        s = self._view(self.scale.detach(), x)
        z = self._view(self.zero_point, x)
        v = torch.mul(x, 1.0 / s)
        return torch.clamp_(v.round_(), self.qmin - z, self.qmax - z).mul_(s)

    def quantize_int(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of x (int16 tensor, within [qmin, qmax])."""
        s, z = self._view(self.scale.detach(), x), self._view(self.zero_point, x)
        return quantize(x.detach(), s, z, self.qmin, self.qmax).to(torch.int16)


class ActObserver:
    """Streams a layer's inputs: exact global min / max plus a bounded random value sample.

    Memory is bounded by `max_values` whatever the calibration set size, so calibrating a
    large model never holds every activation.
    """

    def __init__(self, max_values: int = 1 << 18, per_batch: int = 1 << 14, seed: int = 0):
        self.min = float("inf")
        self.max = float("-inf")
        self.max_values = max_values
        self.per_batch = per_batch
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        k = min(self.per_batch, x.numel())
        idx = torch.randint(0, x.numel(), (k,), generator=self.gen).to(x.device)
        self.samples.append(x[idx].cpu())
        self.count += k
        if self.count > self.max_values:  # thin out: keep every other value
            s = torch.cat(self.samples)[::2].contiguous()
            self.samples, self.count = [s], s.numel()

    def range(self, bits: int, symmetric: bool, method: str = "mse", p: float = 2.4,
              kind: str = "free") -> tuple[float, float]:
        sample = torch.cat(self.samples) if self.samples else torch.empty(0)
        return search_act_range(sample, self.min, self.max, bits, symmetric, method=method, p=p, kind=kind)
