"""``torch._int_mm``: int8 x int8 -> int32 GEMM for Linear layers (cuBLASLt on CUDA).

y = s_x * s_w * (q' @ W^T - z' * rowsum(W)) with q' = q - 128 (uint8 codes shifted to int8)
and z' = z - 128: the activation zero point folds into a per-output-channel correction, so
the sums are exact in int32. The transposed codes, the correction and the combined scale are
prepared once per layer, not per call.

Shape rule (:func:`padded_rows`, :func:`fits`): PyTorch requires more than 16 rows and both
channel counts multiples of 8; cuBLASLt's int8 kernels also refuse row counts that are not
aligned (measured on an H200: ``CUBLAS_STATUS_NOT_SUPPORTED`` for 250 rows x 16 -> 64), so
rows are zero-padded to a multiple of 8 (at least 24) and the pad is cut off the result;
layers whose channel counts are not multiples of 8 are not served.

Opt-in only (``EDADM_INT_KERNEL=int-mm``, priority after ``dequant``): on an H200 it measured
no faster than fp16 GEMM at Stable Diffusion's shapes (8192x320x2560: 0.057 vs 0.052 ms),
and the rule is "integer GEMMs only where they measure faster" (docs/kernels.md). It runs on
the CPU too (PyTorch's own int8 GEMM through oneDNN), which is how its arithmetic is tested
without a GPU; there, like oneDNN's other int8 kernels, it saturates int16 pair sums on CPUs
without VNNI / AMX, so a guard (:func:`_verify`) probes it on worst-case codes first.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import kernels
from . import Backend, Part, register

ALIGN = 8       # channel counts and (padded) row counts
MIN_ROWS = 24   # torch._int_mm takes more than 16 rows: the first multiple of 8 above 16


def padded_rows(m: int) -> int:
    """Rows after padding: a multiple of 8, at least 24."""
    return max(MIN_ROWS, -(-m // ALIGN) * ALIGN)


def fits(in_features: int, out_features: int) -> bool:
    """Whether torch._int_mm takes a layer with these channel counts (rows are padded)."""
    return in_features > 0 and out_features > 0 and in_features % ALIGN == 0 and out_features % ALIGN == 0


def _serves(part: Part, forced: bool) -> str | None:
    if part.act is None or part.kind != "linear" or part.device.type not in ("cuda", "cpu"):
        return None
    if not fits(*part.geometry):
        return None
    return "int8 GEMM, int32 accumulation" if part.device.type == "cuda" or forced else None


def _prepare(layer, i: int) -> tuple:
    a, w = layer.acts[i], layer.weight_int(i)
    corr = (a.zero_point - 128) * w.to(torch.int32).sum(1)
    return w.t().contiguous(), corr, (a.scale * layer.weight_scale(i)).float()


def _run(layer, x, i, bias, state):
    wt, corr, scale = state
    shape = x.shape
    q = layer.quant_codes(x, i).reshape(-1, shape[-1]).sub_(128).to(torch.int8)
    m = q.shape[0]
    rows = padded_rows(m)
    if rows != m:
        q = F.pad(q, (0, 0, 0, rows - m))
    acc = torch._int_mm(q, wt)[:m]
    y = (acc - corr).float().mul_(scale)
    if bias is not None:
        y = y.add_(bias.float())
    return y.to(x.dtype).reshape(*shape[:-1], wt.shape[1])


def _matmul(q_u8: torch.Tensor, w: torch.Tensor, zero_point: int) -> torch.Tensor:
    """sum_k (q - z) w in int32 through torch._int_mm, rows padded: the arithmetic of _run."""
    q = (q_u8.to(torch.int16) - 128).to(torch.int8)
    m = q.shape[0]
    acc = torch._int_mm(F.pad(q, (0, 0, 0, padded_rows(m) - m)), w.t().contiguous())[:m]
    return acc - (zero_point - 128) * w.to(torch.int32).sum(1)


@functools.lru_cache(maxsize=None)
def _exact(device: str, cin: int, cout: int, qmin: int, qmax: int, zero_point: int, w_absmax: int) -> bool:
    g = torch.Generator().manual_seed(0)
    x, w = kernels.worst_case((cout, cin), w_absmax, (5, cin), qmin, qmax, g)
    ref = (x.long() - zero_point) @ w.long().t()
    got = _matmul(x.to(device), w.to(device), zero_point).cpu().long()
    return bool(torch.equal(got, ref))


def _verify(part: Part) -> bool:
    """Exact on worst-case codes here (cuBLASLt accumulates in int32; a CPU may not)."""
    a = part.act
    try:
        return _exact(str(part.device), *part.geometry, a.qmin, a.qmax, a.zero_point, part.w_absmax)
    except RuntimeError:  # this build or device refuses the shape: not used
        return False


register(Backend("int-mm", "torch._int_mm int8 GEMM for Linear layers (CUDA; CPU for tests), opt-in", 70,
                 _serves, _prepare, _run, _verify))
