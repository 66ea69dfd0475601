"""oneDNN's x86 u8 x s8 kernels (``torch.ops.onednn.qconv_pointwise`` / ``qlinear_pointwise``).

``onednn`` is preferred on x86 CPUs wherever it is exact: int32 accumulation (VNNI, AMX) or
codes that cannot saturate int16 pair sums; ``onednn-split`` (8-bit weight codes as two
half-range halves, two calls added) runs only when forced, because without VNNI it ties with
float32 (docs/kernels.md). Both prepack the weights once per layer and are checked by the
exactness guard ``kernels.verified`` before they serve a layer geometry. The ISA facts, the
guard and the prepack / run calls live in ``edadm.deploy.kernels``.
"""
from __future__ import annotations

import torch

from .. import kernels
from . import Backend, Part, register


def available() -> bool:
    """True on x86 when this PyTorch build has the oneDNN integer conv / linear ops."""
    ops = getattr(torch.ops, "onednn", None)
    try:
        return kernels.isa_info()["x86"] and all(
            hasattr(ops, n) for n in ("qconv_prepack", "qconv_pointwise", "qlinear_prepack", "qlinear_pointwise")
        ) and torch.backends.mkldnn.is_available()
    except Exception:  # pragma: no cover - exotic builds
        return False


def _runs_here(part: Part) -> bool:
    return part.act is not None and part.device.type == "cpu" and available()


def _serves(part: Part, forced: bool) -> str | None:
    if not _runs_here(part):
        return None
    if forced:
        return "forced"
    if kernels.isa_info()["int32_dot"]:
        return "int8 sums accumulate in int32"
    if not kernels.can_saturate(part.act.qmax, part.w_absmax):
        return "codes cannot saturate int16 pairs"
    return None


def _serves_split(part: Part, forced: bool) -> str | None:
    if not _runs_here(part):
        return None
    return "forced" if forced else "8-bit weight codes split in two halves (int16 pairs would saturate)"


def _verify(name: str):
    def verify(part: Part) -> bool:
        a = part.act
        return kernels.verified(name, part.kind, part.geometry, a.qmin, a.qmax, a.zero_point, part.w_absmax)
    return verify


def _prepare(name: str):
    def prepare(layer, i: int) -> list:
        a = layer.acts[i]
        return kernels.prepack(name, layer.kind, layer.weight_int(i), layer.weight_scale(i), a.scale, a.zero_point,
                               layer.conv)
    return prepare


def _run(layer, x, i, bias, packed):
    a = layer.acts[i]
    q = layer.quant_u8(x, i)
    if layer.kind == "conv":
        q = q.contiguous(memory_format=torch.channels_last)
    return kernels.run_packed(layer.kind, q, packed, layer.weight_scale(i), a.scale, a.zero_point,
                              layer.zero_offsets, bias, layer.conv, x.dtype)


register(Backend("onednn", "oneDNN u8 x s8, weights prepacked once (x86 CPU)", 10, _serves, _prepare("onednn"), _run,
                 _verify("onednn")))
# after dequant (50): chosen only when forced, see the module docstring
register(Backend("onednn-split", "oneDNN u8 x s8 on two half-range weight halves, added (x86 CPU)", 60,
                 _serves_split, _prepare("onednn-split"), _run, _verify("onednn-split")))
