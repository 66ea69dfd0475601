"""Quantization primitives: integer ranges, parameter choice, (fake) quantization, range search.

Quantization multiplies by 1/scale (not divides by scale), as PyTorch's fused fake-quant
and quantize kernels do, so every path rounds ties identically.

Kept free of modules (torchao style) so the fake-quant wrappers, the reconstruction
engine and the integer export all share exactly the same arithmetic.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a `bits`-bit code: signed when symmetric, unsigned otherwise."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def choose_qparams(xmin: torch.Tensor, xmax: torch.Tensor, bits: int, symmetric: bool,
                   eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) covering [xmin, xmax] (elementwise, so per-channel works).

    The range always contains 0 so that zero (padding, ReLU zeros) is exact.
    Symmetric ranges have zero_point 0; asymmetric ones an integer zero_point in range.
    """
    qmin, qmax = qrange(bits, symmetric)
    xmin = torch.minimum(xmin, torch.zeros_like(xmin))
    xmax = torch.maximum(xmax, torch.zeros_like(xmax))
    if symmetric:
        amax = torch.maximum(-xmin, xmax)
        scale = (amax / ((qmax - qmin) / 2)).clamp_min(eps)
        zero_point = torch.zeros_like(scale)
    else:
        scale = ((xmax - xmin) / (qmax - qmin)).clamp_min(eps)
        zero_point = (qmin - torch.round(xmin / scale)).clamp(qmin, qmax)
    return scale, zero_point


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return (x.round() - x).detach() + x


def codes_(scaled: torch.Tensor, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """THE quantization rule, in place on scaled = x * (1 / scale) (float32): round half to
    even, add the zero point, clamp to [qmin, qmax]; returns the codes as floats.

    Every path that turns a float into a code goes through here or is tested to agree with
    it (tests/quant/test_one_rule.py): quantize() (simulation, calibration), the integer
    engine's activation codes, the saved weight codes, the ONNX weight folding and the
    overflow-fix halves; PyTorch's fused fake-quant kernels (the inference simulation)
    compute the same codes. zero_point: a number or a tensor broadcastable to scaled."""
    scaled.round_()
    if not isinstance(zero_point, (int, float)) or zero_point:
        scaled.add_(zero_point)
    return scaled.clamp_(qmin, qmax)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes (as float tensor) of x: codes_(x * (1 / scale))."""
    return codes_(x * (1.0 / scale), zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (q - zero_point) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with straight-through rounding; gradients reach x and scale (LSQ-style)."""
    q = torch.clamp(round_ste(x * (1.0 / scale)) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _lsq_forward(x, scale, lo, hi, keep):
    """The learned-step node's forward values (see _LearnedStepFakeQuant), one fused pass
    when compiled."""
    qz = torch.clamp((x * (1.0 / scale)).round(), lo, hi)
    out = qz * scale
    return out if keep is None else torch.lerp(out, x, keep)


def _lsq_backward(g, x, scale, lo, hi, keep):
    """The learned-step node's gradients (gx, gs summed to one number) from x again: the
    codes are recomputed (the same ops as _lsq_forward) instead of saved."""
    v = x * (1.0 / scale)
    r = v.round()
    qz = torch.clamp(r, lo, hi)
    gq = g if keep is None else g * (1 - keep)
    outside = (r != qz).to(g.dtype)
    gx = g - gq * outside
    gs = ((qz - v * (1 - outside)) * gq).sum()
    return gx, gs


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's elements as a new 1-D tensor on the same memory, with no view
    base (torch.compile guards on a view's base: every layer's tensor would recompile)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),),
                                                               (1,))


class _Fused:
    """_lsq_forward / _lsq_backward under torch.compile (dynamic shapes: one compilation per
    variant for every tensor size). The node's element-wise chain is memory-bound in a
    reconstruction loop (its tensors do not stay in cache): eager runs about 5 passes over
    memory forward and 11 backward, the compiled kernels one each, 3x faster forward on 2
    AVX-512 cores (issue 34). Used for one-element step sizes and zero points in float32;
    anything else, or a failed compilation (no C++ compiler, no Triton), runs eagerly.
    EDADM_FUSED_FAKEQUANT=0 turns it off."""

    def __init__(self):
        import os

        self.enabled = os.environ.get("EDADM_FUSED_FAKEQUANT", "1") != "0"
        self.fns: dict = {}

    def get(self, which: str, device: torch.device):
        key = (which, device.type)
        if key not in self.fns:
            fn = _lsq_forward if which == "forward" else _lsq_backward
            self.fns[key] = torch.compile(fn, dynamic=True, fullgraph=True)
        return self.fns[key]

    def run(self, which: str, *args):
        fn = self.get(which, args[0].device)
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager from now on
            import logging

            logging.getLogger("edadm").warning("fused fake-quant kernels unavailable (%s: %s); running eagerly",
                                               type(exc).__name__, str(exc).splitlines()[0][:200])
            self.enabled = False
            return (_lsq_forward if which == "forward" else _lsq_backward)(*args)

    def usable(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> bool:
        # not inside another compilation or a dispatch mode (FlopCounterMode, tracing): the
        # compiler does not run there, and that failure would turn the kernels off for good
        return (self.enabled and x.dtype == torch.float32 and scale.numel() == 1 and zero_point.numel() == 1
                and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None)


FUSED = _Fused()


class _LearnedStepFakeQuant(torch.autograd.Function):
    """fake_quantize with a learned step size (LSQ, gradient factor 1) and QDrop's element-wise
    float / quantized choice in one autograd node.

    Forward: quantize()'s codes (round half to even of x * (1 / s), plus z, clamped to
    [qmin, qmax]), out = (q - z) * s, and where keep is 1 the float x instead. Backward:
    d/dx 1 where kept or inside the range, else 0; d/ds (q - z) - x / s inside, (qmin - z) or
    (qmax - z) outside, 0 where kept, summed to the scale's shape. These are PyTorch's
    _fake_quantize_learnable_per_channel_affine gradients followed by torch.lerp's; written by
    hand because that kernel plus the lerp and its backward took about a fifth of a
    reconstruction iteration, and this chain of in-place ops runs 3-4x faster on the CPU
    (issue 34). zero_point is not learned."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, keep):
        if FUSED.usable(x, scale, zero_point):
            # flat, detached views: one compiled kernel for every rank, size and grad flag. A
            # strided input (the channel halves of a split shortcut) is copied first: one
            # pass, against the eager chain's dozen
            lo, hi = (qmin - zero_point).detach().reshape(()), (qmax - zero_point).detach().reshape(())
            s0, xf = scale.detach().reshape(()), _flat(x.detach().contiguous())
            kf = None if keep is None else _flat(keep.contiguous())
            ctx.save_for_backward(xf, s0, lo, hi, kf)
            ctx.fused, ctx.scale_shape, ctx.x_shape = True, scale.shape, x.shape
            return FUSED.run("forward", xf, s0, lo, hi, kf).view(x.shape)
        ctx.fused = False
        v = x * (1.0 / scale)
        # quantize()'s rule: (clamp(round(v) + z, qmin, qmax) - z) is round(v) clamped to
        # [qmin - z, qmax - z] exactly (integers in float), one op less per element. A
        # one-element zero point on the CPU clamps by Python numbers: a clamp by tensor
        # bounds is about 6x slower there (0.17 vs 0.03 ms per 0.5 M elements, issue 34)
        if zero_point.numel() == 1 and zero_point.device.type == "cpu" and not torch.compiler.is_compiling():
            z = float(zero_point)
            lo, hi = qmin - z, qmax - z
        else:
            lo, hi = qmin - zero_point, qmax - zero_point
        r = v.round()
        qz = torch.clamp(r, lo, hi)
        out = qz * scale
        if keep is not None:
            out = torch.lerp(out, x, keep)
        # r, not a bool "outside" mask: comparisons, masked_fill and where on bool masks cost
        # 4-30x a float op on the CPU; backward derives the 0 / 1 indicator from r - qz
        ctx.save_for_backward(v, r, qz, keep)
        ctx.scale_shape = scale.shape
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.fused:
            gx, gs = FUSED.run("backward", _flat(g.contiguous()), *ctx.saved_tensors)
            return (gx.view(ctx.x_shape) if ctx.needs_input_grad[0] else None,
                    gs.reshape(ctx.scale_shape) if ctx.needs_input_grad[1] else None, None, None, None, None)
        v, r, qz, keep = ctx.saved_tensors
        gq = g if keep is None else g * (1 - keep)   # the part of g that reaches the quantized branch
        outside = r.sub_(qz).sign_().abs_()          # 1.0 where round(v) was clamped, else 0.0
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.addcmul(g, gq, outside, value=-1)  # g where kept or inside, gq-free outside
        gs = None
        if ctx.needs_input_grad[1]:
            # (q - z) - x / s inside, (q - z) outside: v * 0 or v * 1 taken off, exact
            ds = torch.addcmul(qz, v, outside.neg_().add_(1), value=-1)
            gs = ds.mul_(gq).sum_to_size(ctx.scale_shape)
        return gx, gs, None, None, None, None


def learned_step_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                               keep: torch.Tensor | None = None) -> torch.Tensor:
    """Fake quantization with gradients to x and to the step size (scale, broadcastable to x),
    and optionally QDrop's mask `keep` (1: the element stays float). See _LearnedStepFakeQuant."""
    return _LearnedStepFakeQuant.apply(x, scale, zero_point.detach().to(x.dtype), qmin, qmax, keep)


_BIT_VALUES: dict = {}


def keep_mask(like: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A mask shaped like `like`, in its dtype and on its device: each element independently 1
    with probability p, else 0 (QDrop's element-wise choice between float and quantized).

    Drawing one float per element is about 3 ms per million elements on a CPU core, and QDrop
    draws several such masks per reconstruction iteration (a quarter of the loop, issue 34).
    For p = 0.5, every recipe's value, each random byte gives eight elements (its bits), the
    same distribution for a third of the cost; other p draw a float per element. A float mask
    (not a bool one) lets the choice be torch.lerp, exact at 0 and 1 and several times cheaper
    than torch.where forward and backward."""
    if p == 0.5:
        n = like.numel()
        key = (like.device, like.dtype)
        if key not in _BIT_VALUES:  # row b: the 8 bits of byte value b, lowest first, as 0 / 1
            _BIT_VALUES[key] = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(like.device, like.dtype)
        r = torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8, device=like.device, generator=generator)
        # one gather of 8 values per random byte: 2.4x faster than and-ing the bits out,
        # comparing and converting (0.70 -> 0.29 ms per 0.5 M elements, 2 threads AVX-512)
        return torch.nn.functional.embedding(r.long(), _BIT_VALUES[key]).view(-1)[:n].view(like.shape)
    return torch.rand(like.shape, dtype=like.dtype, device=like.device, generator=generator).lt_(p)


class MaskPool:
    """QDrop's keep masks for one reconstruction loop, as windows of a pre-drawn pool.

    Each mask is a contiguous window, at a random offset, of a flat pool of Bernoulli(p)
    values (keep_mask) at least twice the largest mask; the pool is redrawn once it has served
    `reuse` times its own size. Every mask is still i.i.d. Bernoulli(p) element by element;
    masks drawn between two redraws are shifted views of the same values. Drawing a fresh
    mask is a random draw plus a gather over every element, about a tenth of a digits-ddpm
    ResNet block's iteration (4 masks of 0.5 M elements, issue 34); a window is a view, and
    the pool costs 1 / reuse of fresh draws.

    The pool is drawn from `seed` on the loop's device and the window offsets on the host,
    so a loop needs no host synchronisation for its masks and is reproducible from its seed.
    """

    def __init__(self, device, seed: int, reuse: int = 8):
        self.device, self.reuse = torch.device(device), int(reuse)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.offsets = torch.Generator().manual_seed(seed)
        self.pools: dict = {}  # (p, dtype) -> [flat pool, elements served since it was drawn]

    def __call__(self, like: torch.Tensor, p: float) -> torch.Tensor:
        """A keep mask shaped like `like`, in its dtype: each element 1 with probability p."""
        n, key = like.numel(), (float(p), like.dtype)
        entry = self.pools.get(key)
        if entry is None or entry[0].numel() < 2 * n or entry[1] >= self.reuse * entry[0].numel():
            size = max(2 * n, 0 if entry is None else entry[0].numel())
            entry = self.pools[key] = [keep_mask(torch.empty(size, dtype=like.dtype, device=self.device), p, self.gen),
                                       0]
        pool = entry[0]
        off = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=self.offsets))
        entry[1] += n
        return pool[off:off + n].view(like.shape)


def lp_error(a: torch.Tensor, b: torch.Tensor, p: float = 2.4, dim=None) -> torch.Tensor:
    """mean |a - b|^p, over all elements or over `dim`."""
    d = (a - b).abs().pow(p)
    return d.mean() if dim is None else d.mean(dim=dim)


def candidate_errors(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                     p: float = 2.4) -> torch.Tensor:
    """sum |fake_quantize(x) - x|^p of a row of values x [1, n] under each candidate
    (scale[k], zero_point[k]), as [K] float32: the activation-range search's inner loop.

    Candidates go in blocks of about a million elements (a few MB, so the chain stays in the
    core's cache) through one buffer with in-place ops: 3.7x faster than PyTorch's fused
    per-channel fake-quant kernel followed by an Lp norm (the mask that kernel also writes
    and the norm's pow make them the slow part), and closer to the float64 sum (about 1e-6
    relative; linalg.vector_norm with ord 2.4 was off by about 1e-3). Codes are quantize()'s
    (and the fused kernels'): round half to even of x * (1 / scale), plus zero_point, clamped. Measured on a
    262144-value sample, 400 candidates, 2 threads AVX-512: 0.62 -> 0.17 s (issue 34)."""
    n = x.shape[-1]
    x = x.reshape(1, n)
    inv = (1.0 / scale).reshape(-1, 1).to(x.dtype)
    zp, sc = zero_point.reshape(-1, 1).to(x.dtype), scale.reshape(-1, 1).to(x.dtype)
    lo, hi = qmin - zp, qmax - zp  # clamp(round(v) + z, qmin, qmax) - z, as in the LSQ node
    block = max(1, (1 << 20) // max(1, n))
    buf = torch.empty((min(block, inv.shape[0]), n), dtype=x.dtype, device=x.device)
    out = torch.empty(inv.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, inv.shape[0], block):
        j = min(i + block, inv.shape[0])
        b = buf[:j - i]
        torch.mul(x, inv[i:j], out=b)
        torch.clamp_(b.round_(), lo[i:j], hi[i:j]).mul_(sc[i:j]).sub_(x).abs_().pow_(p)
        torch.sum(b, dim=1, out=out[i:j])
    return out


def search_weight_range(w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool = True,
                        method: str = "mse", p: float = 2.4, grid: int = 100,
                        min_ratio: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(xmin, xmax) per output channel (dim 0) or per tensor.

    "minmax" takes the extremes; "mse" shrinks the range by ratios in [min_ratio, 1]
    and keeps, per channel, the ratio with the lowest Lp error (BRECQ / Q-Diffusion use
    p = 2.4). Memory stays at a few copies of one block of rows.
    """
    x = w.detach().float()
    flat = x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)
    xmin, xmax = flat.min(dim=1).values, flat.max(dim=1).values
    if method == "minmax":
        return xmin, xmax
    if method != "mse":
        raise ValueError(f"unknown range method {method!r}")
    qmin, qmax = qrange(bits, symmetric)
    ratios = torch.linspace(1.0, min_ratio, grid).tolist()
    best_min, best_max = xmin.clone(), xmax.clone()
    # Every ratio is tried on a block of rows before moving on, so the block stays in cache
    # across the whole grid, and each try is PyTorch's fused fake-quant kernel (the same
    # rounding as quantize/dequantize above) plus an in-place error: on a 1280 x 11520
    # weight this takes the search from 47 s to 18 s on one core with identical ranges.
    rows = max(1, (1 << 19) // max(1, flat.shape[1]))
    for i in range(0, flat.shape[0], rows):
        f, lo, hi = flat[i:i + rows], xmin[i:i + rows], xmax[i:i + rows]
        best_err = torch.full_like(lo, float("inf"))
        for r in ratios:
            cmin, cmax = lo * r, hi * r
            s, z = choose_qparams(cmin, cmax, bits, symmetric)
            q = torch.fake_quantize_per_channel_affine(f, s.float(), z.round().to(torch.int32), 0, qmin, qmax)
            err = q.sub_(f).abs_().pow_(p).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_min[i:i + rows] = torch.where(better, cmin, best_min[i:i + rows])
            best_max[i:i + rows] = torch.where(better, cmax, best_max[i:i + rows])
    return best_min, best_max


def search_act_range(sample: torch.Tensor, xmin: float, xmax: float, bits: int, symmetric: bool,
                     method: str = "mse", p: float = 2.4, grid: int = 20,
                     min_ratio: float = 0.1, kind: str = "free") -> tuple[float, float]:
    """Per-tensor activation range from a sample of values and the exact global extremes.

    kind "free": "mse" searches a grid over independent shrink ratios of the lower and upper
    bound (activations after SiLU or GELU are far from symmetric) and keeps the lowest Lp error.
    kind "symmetric" (the reference codes' activation ranges, BRECQ's quantizer with a symmetric
    range): [-a, a] with a = max(|xmin|, xmax), or [0, xmax] for a non-negative input, and a 1-D
    search over a in 80 ratios 1.00, 0.99, ..., 0.21 (the references' grid).
    """
    if kind == "symmetric" and not symmetric:
        a = max(-float(xmin), float(xmax))
        xmin, xmax = (-a if xmin < 0 else 0.0), a
    if method == "minmax" or sample.numel() == 0:
        return float(xmin), float(xmax)
    if method != "mse":
        raise ValueError(f"unknown range method {method!r}")
    qmin, qmax = qrange(bits, symmetric)
    x = sample.detach().float().reshape(1, -1)
    if kind == "symmetric":
        ratios = 1.0 - torch.arange(80, dtype=torch.float32) * 0.01
        lo, hi = xmin * ratios, xmax * ratios
    elif kind == "free":
        ratios = torch.linspace(1.0, min_ratio, grid)
        lo = (xmin * ratios).repeat_interleave(grid)
        hi = (xmax * ratios).repeat(grid)
        if symmetric:  # only the larger magnitude matters; a 1-D grid suffices
            lo, hi = xmin * ratios, xmax * ratios
    else:
        raise ValueError(f"unknown activation range kind {kind!r}")
    s, z = choose_qparams(lo, hi, bits, symmetric)
    errs = candidate_errors(x, s, z.round(), qmin, qmax, p)
    k = int(errs.argmin())
    return float(lo[k]), float(hi[k])
