"""Fused attention with the softmax probabilities quantized as the simulation does (Triton).

Why: EDA-DM quantizes the attention probabilities, ``P = softmax(Q K^T * scale)``, with an
8-bit uniform quantize-dequantize (``StaticQuant`` at inference) before ``P @ V``. The
materializing path (``QuantAttnProcessor``) therefore builds the whole probability map:
at Stable Diffusion's 64x64 latents that is batch*heads x 4096 x 4096 per self-attention,
2 GiB in fp16 at batch 8, written and read several times. Flash attention never
materializes P, but no library offers it with P quantized the way the simulation does:

- SageAttention quantizes Q and K to INT8 per block (after smoothing K) and P to FP8
  (E4M3) with its own per-block scale, on the *unnormalized* online-softmax values; the
  simulation quantizes the *normalized* P on a uniform 8-bit grid with a calibrated scale
  and zero point, and keeps Q K^T in float.
- NVIDIA ModelOpt's Triton flash attention (``p_qdq``) fake-quantizes the unnormalized
  online-softmax P to FP8 or NVFP4, again a different grid on different values.
- PyTorch's SDPA / FlashAttention / xformers have no hook between softmax and ``P @ V``.

So the kernel is written here. The quantizer needs the *final* normalized probability
``p = exp(s - m) / l`` (m: row max, l: row sum), which the one-pass online softmax only
knows at the end of the row; each query block therefore runs two passes over K:

1. the row max ``m`` and row sum ``l`` (online: ``l`` rescaled when ``m`` grows), fp32;
2. ``s`` recomputed, ``p = exp(s - m) * (1 / l)`` in fp32, quantized exactly as
   ``StaticQuant.forward`` does (``x = p * inv_scale``; round half to even; ``+ zp``;
   clamp to ``[qmin, qmax]``; ``- zp``; ``* scale``, all fp32), cast to V's dtype as the
   simulation's ``.to(dtype)`` does, and accumulated as ``p_q @ V`` in fp32.

Agreement with the materializing path: the scores, exponentials and row sums differ from
torch's in the last bits (summation order, ``exp`` implementation), so a probability code
can differ by one where ``p * inv_scale`` lies within ~1e-6 of a rounding tie (x.5);
everything else is the same arithmetic. ``tests/deploy/test_attention_triton.py`` checks
the codes themselves and the outputs against float32 / float64 references.

Speed (H200, triton 3.6, fp16, SD 1.5 at 512 px, batch 2, 8 heads of 40 over 4096 tokens):
0.82 ms against 4.3 ms for the materializing path, with 5 MiB of scratch instead of 2 GiB
(batch 8: 3.5 ms against 17 ms, 8 GiB). Unquantized flash attention (SDPA) takes 0.16 ms:
the second pass over K, the head dim padded from 40 to 64 and the quantizer's elementwise
work per score cost that much.

The op is registered as ``torch.ops.edadm.quant_attention`` (a custom op with a fake
implementation) so a ``torch.compile``-d UNet calls it without a graph break.

On CPU, ``TRITON_INTERPRET=1`` (set before triton is imported) runs the same kernel through
Triton's numpy interpreter (the tests); without it, and for any unsupported input, callers
keep the materializing path.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

log = logging.getLogger("edadm")

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256   # the head dimension is padded to a power of two <= this in one block


def _interpret() -> bool:
    """Triton's CPU interpreter is on. Triton reads the variable when it is imported (and
    when a kernel is decorated, here lazily at the first launch): set it before either."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(t: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> bool:
    """Whether :func:`quant_attention` can take query `t` (and `k`, `v`, `mask` if given):
    triton installed; `t` on CUDA, or on CPU with ``TRITON_INTERPRET=1`` outside
    torch.compile (fp16 / fp32 only there); fp16 / bf16 / fp32, one dtype; 3-d with head
    dim <= 256; k, v of one length and q's head dim; a floating mask of at most 3 dims
    broadcastable to the score map. Cheap, and traceable by torch.compile (no environment
    read there)."""
    if not _HAS_TRITON or t.dim() != 3 or t.dtype not in _DTYPES or not 0 < t.shape[-1] <= MAX_HEAD_DIM:
        return False
    if not t.is_cuda:
        # the interpreter is for tests; `is_compiling` first keeps dynamo off os.environ.
        # No bf16 there: its tl.dot multiplies bf16 bit patterns (stored as uint16) as
        # integers and its fp32 -> bf16 cast truncates (triton 3.9); bf16 is tested on CUDA.
        if (t.device.type != "cpu" or torch.compiler.is_compiling() or not _interpret()
                or t.dtype == torch.bfloat16):
            return False
    if k is not None and v is not None:
        if (k.dim() != 3 or v.dim() != 3 or k.shape[0] != t.shape[0] or v.shape[0] != t.shape[0]
                or k.shape[1] != v.shape[1] or k.shape[2] != t.shape[2] or v.shape[2] != t.shape[2]
                or k.dtype != t.dtype or v.dtype != t.dtype or k.device != t.device or v.device != t.device):
            return False
    if mask is not None:
        if mask.dim() > 3 or mask.device != t.device or not mask.is_floating_point():
            return False
        if k is not None:
            try:
                torch.broadcast_shapes(mask.shape, (t.shape[0], t.shape[1], k.shape[1]))
            except RuntimeError:
                return False
    return True


def quant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    probs_quant: tuple[float, float, int, int, int], mask: torch.Tensor | None = None) -> torch.Tensor:
    """``bmm(QDQ(softmax(q @ k^T * scale + mask)), v)`` without materializing the map.

    q: [B*H, Lq, D]; k, v: [B*H, Lk, D] (diffusers' ``head_to_batch_dim`` layout), fp16,
    bf16 or fp32, one dtype. probs_quant: ``(scale, inv_scale, zero_point, qmin, qmax)`` of
    the frozen probability quantizer (``StaticQuant``). mask: optional additive mask
    broadcastable to [B*H, Lq, Lk]. Returns [B*H, Lq, D] in q's dtype."""
    p_scale, p_inv_scale, p_zero, p_min, p_max = probs_quant
    return torch.ops.edadm.quant_attention(q, k, v, mask, float(scale), float(p_scale), float(p_inv_scale),
                                           int(p_zero), int(p_min), int(p_max))


@torch.library.custom_op("edadm::quant_attention", mutates_args=())
def _quant_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float, p_scale: float, p_inv_scale: float, p_zero: int, p_min: int,
                        p_max: int) -> torch.Tensor:
    return _launch(q, k, v, mask, scale, p_scale, p_inv_scale, p_zero, p_min, p_max)


@_quant_attention_op.register_fake
def _(q, k, v, mask, scale, p_scale, p_inv_scale, p_zero, p_min, p_max):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


def _check(q, k, v, mask) -> None:
    if not available(q, k, v, mask):
        raise ValueError(f"quant_attention: unsupported inputs: q {tuple(q.shape)} {q.dtype} {q.device}, "
                         f"k {tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype}, "
                         f"mask {None if mask is None else tuple(mask.shape)} (see available())")


def _blocks(head_dim_block: int, dtype: torch.dtype, interpret: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). Interpreter: small blocks so that test
    shapes cross block edges. fp16 / bf16: the fastest of a sweep (2 x 2 x 3 x 2 tile /
    warp / stage choices) at SD 1.5's shapes, batch 2, 8 heads, on an H200 with triton 3.6:
    4096 x 4096 x 40: 0.82 ms (flash-attention-like 128 x 64 tiles: 0.90); 1024 x 1024 x 80:
    0.065 ms (0.121); 256 x 256 x 160: 0.046 ms (0.118). 64-row query blocks keep the grid
    larger than the 132 SMs at the smaller resolutions. fp32: half-size tiles (4-byte
    operands, fma-based ieee dots)."""
    if interpret:
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return (64, 32, 4, 2) if head_dim_block <= 64 else (32, 32, 4, 2)
    if head_dim_block <= 64:
        return 64, 32, 4, 2
    if head_dim_block <= 128:
        return 64, 64, 4, 2
    return 64, 64, 4, 3


def _launch(q, k, v, mask, scale, p_scale, p_inv_scale, p_zero, p_min, p_max) -> torch.Tensor:
    _check(q, k, v, mask)
    bh, lq, d = q.shape
    lk = k.shape[1]
    out = torch.empty(bh, lq, d, dtype=q.dtype, device=q.device)
    if bh == 0 or lq == 0:
        return out
    if lk == 0:  # softmax over nothing: NaN rows, as torch gives
        return out.fill_(float("nan"))
    interpret = _interpret()
    block_d = max(16, 1 << (d - 1).bit_length())  # tl.dot needs >= 16 and a power of two
    block_m, block_n, num_warps, num_stages = _blocks(block_d, q.dtype, interpret)
    if mask is not None:
        mask = mask.expand(bh, lq, lk)  # broadcast dims get stride 0: read in place
        mstrides = mask.stride()
    else:
        mask, mstrides = q, (0, 0, 0)  # never read (HAS_MASK is False)
    num_m = -(-lq // block_m)
    kernel = _kernel()
    kernel[(num_m * bh,)](
        q, k, v, out, mask,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mstrides,
        lq, lk, d, num_m,
        float(scale), float(p_scale), float(p_inv_scale), float(p_zero), float(p_min), float(p_max),
        HAS_MASK=mask is not q, USE_RINT=not interpret, IEEE=q.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=num_warps, num_stages=num_stages,
        # no mul+add -> fma contraction: s = (q.k) * scale and s - m are rounded as torch
        # rounds them, and pass 2 recomputes exactly the s of pass 1
        enable_fp_fusion=False,
    )
    return out


@functools.lru_cache(maxsize=None)
def _kernel():
    """The kernel, decorated at its first launch: importing this module does not import
    triton (CPU processes that never launch it do not pay for it)."""
    import triton

    from . import _attention_triton_kernel as impl

    log.debug("edadm: Triton quantized attention kernel (%s)", "interpreter" if _interpret() else "compiled")
    return triton.jit(impl.quant_attention_fwd)
