"""Which integer kernel each layer runs on this CPU, and a guard that proves it exact.

oneDNN's x86 u8 x s8 kernels compute exactly only where the instruction set accumulates in
int32: with VNNI (``vpdpbusd``, AVX-512 VNNI or AVX-VNNI) and AMX. Without it (AVX2, plain
AVX-512) they use ``vpmaddubsw``, which adds each *pair* of u8 x s8 products into a
saturating int16: ``255 * 127 * 2 = 64770 > 32767``, so full-range 8-bit weights give wrong
sums (measured: 10-20 % max relative error per layer under ``ONEDNN_MAX_CPU_ISA=AVX2``),
while codes with ``act_qmax * 2 * max|w| <= 32767`` (4-bit weights, 6-bit activations)
cannot saturate. ONNX Runtime (``reduce_range``, U8U8) and OpenVINO (``OverflowFix``) carry
fixes for the same hardware fact.

Which kernel serves a layer is decided in ``edadm.deploy.backends`` (``backends/onednn.py``
registers ``onednn`` and ``onednn-split``: 8-bit weight codes split into two halves
``w = floor(w / 2) + ceil(w / 2)`` whose codes fit ``[-64, 64]``, so every pair fits int16);
this module holds the CPU facts those choices read, the guard, and the oneDNN calls.

:func:`verified` is the guard that cannot be fooled by a new CPU: before a kernel serves a
layer geometry the first time in a process, it runs on worst-case codes (the layer's
largest input code everywhere, its largest weight magnitude in every output channel, both
signs, plus random full-range codes) against a float64 reference; a kernel that is not exact
to 1e-5 relative is not used, and one warning line names it.

The ISA is read from /proc/cpuinfo and ``ONEDNN_MAX_CPU_ISA`` (which caps oneDNN, and which
tests use to cover lower ISAs on any machine); the guard does not trust that reading.
"""
from __future__ import annotations

import functools
import logging
import os
import platform

import torch
import torch.nn.functional as F

log = logging.getLogger("edadm")

INT16_MAX = 32767
RTOL = 1e-5

# oneDNN's ONEDNN_MAX_CPU_ISA values, lowest first, and what each allows.
_ISA_ORDER = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
              "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16"]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _machine_isa(flags: set[str]) -> str:
    """The highest ONEDNN_MAX_CPU_ISA level this CPU's flags support."""
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    if avx512 and {"amx_int8", "amx_tile", "amx_bf16"} <= flags:
        return "AVX512_CORE_AMX"
    if avx512 and "avx512_bf16" in flags and "avx512_vnni" in flags:
        return "AVX512_CORE_BF16"
    if avx512 and "avx512_vnni" in flags:
        return "AVX512_CORE_VNNI"
    if avx512:
        return "AVX512_CORE"
    if "avx2" in flags and "avx_vnni" in flags:
        return "AVX2_VNNI"
    if "avx2" in flags:
        return "AVX2"
    return "AVX" if "avx" in flags else "SSE41"


def _rank(isa: str) -> int:
    return _ISA_ORDER.index(isa) if isa in _ISA_ORDER else len(_ISA_ORDER)


@functools.lru_cache(maxsize=1)
def isa_info() -> dict:
    """What the integer and bf16 kernels can use here: the CPU's ISA, the ONEDNN_MAX_CPU_ISA
    cap, the effective level, whether int8 dot products accumulate in int32, native bf16."""
    flags = _cpu_flags()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    machine = _machine_isa(flags) if x86 else platform.machine()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    effective = machine
    if x86 and cap and cap not in ("ALL", "DEFAULT") and _rank(cap) < _rank(machine):
        effective = cap
    r = _rank(effective) if x86 else -1
    # AVX2_VNNI is below AVX512_CORE in the list but has the int32 dot product
    int32_dot = x86 and (effective in ("AVX2_VNNI", "AVX2_VNNI_2") or r >= _rank("AVX512_CORE_VNNI"))
    bf16 = x86 and r >= _rank("AVX512_CORE_BF16") and ("avx512_bf16" in flags or "amx_bf16" in flags)
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        aten = "unknown"
    shown = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f in ("avx2", "fma"))
    return {"x86": x86, "machine_isa": machine, "onednn_max_cpu_isa": cap or None, "isa": effective,
            "int8_accumulation": "int32" if int32_dot else "int16 pairs (saturating)", "int32_dot": int32_dot,
            "native_bf16": bf16, "aten_capability": aten, "cpu_flags": shown}


def isa_summary() -> str:
    """One line for logs and reports: 'AVX2 (cap of AVX512_CORE_BF16), int8 sums in int16 pairs'."""
    i = isa_info()
    if not i["x86"]:
        return f"{i['machine_isa']} (not x86: no oneDNN int8 kernels)"
    cap = f" (capped from {i['machine_isa']} by ONEDNN_MAX_CPU_ISA)" if i["isa"] != i["machine_isa"] else ""
    bf16 = "native bf16" if i["native_bf16"] else "no native bf16"
    return f"{i['isa']}{cap}, int8 sums in {i['int8_accumulation']}, {bf16}"


def fast_float_dtype() -> torch.dtype:
    """bf16 where the CPU computes it natively (AVX512_BF16, AMX), else float32: without it a
    bf16 convolution is emulated and runs many times slower than float32."""
    return torch.bfloat16 if isa_info()["native_bf16"] else torch.float32


def can_saturate(act_qmax: int, w_absmax: int) -> bool:
    """Whether a pair of u8 x s8 products with these code bounds overflows int16."""
    return 2 * int(act_qmax) * int(w_absmax) > INT16_MAX


def split_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes as floor(w / 2) + ceil(w / 2): both halves within [-64, 64]."""
    lo = torch.div(w.to(torch.int16), 2, rounding_mode="floor")
    return lo.to(torch.int8), (w.to(torch.int16) - lo).to(torch.int8)


# ----------------------------------------------------------------------- the guard ----------
_verdicts: dict[tuple, tuple[bool, float]] = {}
_warned: set[str] = set()  # kernels whose failure was logged (one line per kernel)


def worst_case(shape_w: tuple, w_absmax: int, x_shape: tuple, act_qmin: int, act_qmax: int,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Input codes at their maximum everywhere but one random batch item; weight rows at +max,
    -max or random codes in turn (every output channel gets one of the worst cases)."""
    w_absmax = max(1, int(w_absmax))
    x = torch.full(x_shape, act_qmax, dtype=torch.int16)
    x[-1] = torch.randint(act_qmin, act_qmax + 1, x_shape[1:], generator=g, dtype=torch.int16)
    w = torch.randint(-w_absmax, w_absmax + 1, shape_w, generator=g, dtype=torch.int16)
    w[0::3] = w_absmax
    w[1::3] = -w_absmax
    return x.to(torch.uint8), w.to(torch.int8)


def verified(kernel: str, kind: str, geometry: tuple, act_qmin: int, act_qmax: int, zero_point: int,
             w_absmax: int) -> bool:
    """True when `kernel` computes this layer geometry exactly on worst-case codes here (once
    per process and key; a failure warns once, naming the kernel)."""
    if kernel == "dequant":
        return True
    key = (kernel, kind, geometry, act_qmin, act_qmax, zero_point, int(w_absmax))
    if key not in _verdicts:
        try:
            err = _probe(kernel, kind, geometry, act_qmin, act_qmax, zero_point, w_absmax)
        except Exception as exc:  # a kernel that cannot run this geometry here is not used
            log.warning("integer engine: kernel %s failed its exactness check on %s %s (%s: %s); not used",
                        kernel, kind, geometry, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            _verdicts[key] = (False, float("inf"))
            return False
        ok = err <= RTOL
        _verdicts[key] = (ok, err)
        if not ok and kernel not in _warned:
            _warned.add(kernel)
            log.warning("integer engine: kernel %s is not exact on this CPU (%s): max relative error %.2g on "
                        "worst-case codes of %s %s; such layers use the next exact kernel", kernel, isa_summary(),
                        err, kind, geometry)
    return _verdicts[key][0]


def verdicts() -> dict:
    """The guard's results so far: key -> (exact, max relative error)."""
    return dict(_verdicts)


def _probe(kernel: str, kind: str, geometry: tuple, act_qmin: int, act_qmax: int, zero_point: int,
           w_absmax: int) -> float:
    g = torch.Generator().manual_seed(0)
    sx = 1.0 / 64
    if kind == "linear":
        cin, cout = geometry
        x, w = worst_case((cout, cin), w_absmax, (3, cin), act_qmin, act_qmax, g)
        conv = None
    else:
        cin, cout, kh, kw, stride, padding, dilation, groups = geometry
        conv = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": groups}
        # the smallest input with interior and border outputs: the float64 reference of a
        # Stable Diffusion 2560 -> 1280 3x3 conv stays well under a second
        h = (kh - 1) * dilation[0] + 1 + stride[0]
        wd = (kw - 1) * dilation[1] + 1 + stride[1]
        x, w = worst_case((cout, cin // groups, kh, kw), w_absmax, (2, cin, h, wd), act_qmin, act_qmax, g)
    ws = torch.rand(cout, generator=g) * 0.5 + 0.75
    got = run_kernel(kernel, kind, x, w, ws, sx, zero_point, conv)
    xf = (x.double() - zero_point) * sx
    wf = w.double() * ws.double().reshape(-1, *([1] * (w.dim() - 1)))
    if kind == "linear":
        ref = F.linear(xf, wf)
    else:
        ref = F.conv2d(xf, wf, None, conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def prepack(kernel: str, kind: str, w: torch.Tensor, ws: torch.Tensor, sx: float, zero_point: int,
            conv: dict | None) -> list:
    """oneDNN prepacked weights for `kernel` ('onednn': one; 'onednn-split': the two halves)."""
    ws_ = ws.float().reshape(-1)
    parts = [w] if kernel == "onednn" else list(split_weight(w))
    if kind == "linear":
        return [torch.ops.onednn.qlinear_prepack(p, None) for p in parts]
    return [torch.ops.onednn.qconv_prepack(p, ws_, sx, zero_point, conv["stride"], conv["padding"],
                                           conv["dilation"], conv["groups"], None) for p in parts]


def run_packed(kind: str, q: torch.Tensor, packed: list, ws: torch.Tensor, sx: float, zero_point: int,
               zeros: torch.Tensor, bias: torch.Tensor | None, conv: dict | None, dtype: torch.dtype) -> torch.Tensor:
    """y = s_x * s_w * sum over packed parts of (q - z) x w_part (+ bias once)."""
    out = None
    for j, pk in enumerate(packed):
        b = bias if j == 0 else None
        if kind == "conv":
            y = torch.ops.onednn.qconv_pointwise(q, sx, zero_point, pk, ws, zeros, b, conv["stride"], conv["padding"],
                                                 conv["dilation"], conv["groups"], 1.0, 0, dtype, "none", [], "")
        else:
            y = torch.ops.onednn.qlinear_pointwise(q, sx, zero_point, pk, ws, zeros, b, 1.0, 0, dtype, "none", [], "")
        out = y if out is None else out.add_(y)
    return out


def run_kernel(kernel: str, kind: str, x: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, sx: float,
               zero_point: int, conv: dict | None) -> torch.Tensor:
    """One call of `kernel` on uint8 codes x and int8 codes w (the guard's probe)."""
    if kind == "conv":
        x = x.contiguous(memory_format=torch.channels_last)
    packed = prepack(kernel, kind, w, ws, sx, zero_point, conv)
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    return run_packed(kind, x, packed, ws.float().reshape(-1), sx, zero_point, zeros, None, conv, torch.float32)
