"""Integer execution of quantized Conv2d / Linear layers.

Each quantized layer becomes an :class:`IntLayer` holding int8 weights (codes minus their
zero point; 4-bit codes fit too) with per-output-channel scales, and the static per-tensor
input scale found by calibration. At run time the input is quantized with plain tensor ops
to uint8 and the product runs in an integer kernel:

- x86 CPU: oneDNN's u8 x s8 kernels, ``torch.ops.onednn.qconv_pointwise`` /
  ``qlinear_pointwise`` with weights prepacked once, float32 or bfloat16 output. These ops
  are what PyTorch's own x86 inductor quantization lowers to; they are internal, so the
  package pins torch and ``tests/deploy/test_intengine.py`` checks they exist.
- CUDA Linear: ``torch._int_mm`` (int8 x int8 -> int32) with the activation zero point
  folded into a per-channel correction.
- anywhere else (CUDA convolutions, or a layer whose weight codes do not fit int8): the
  same arithmetic in float from the integer codes, announced by one warning line.

No library offers "static per-tensor u8 activations + per-channel s8 weights from an
existing calibration" as a module: torch.ao's quantized modules are deprecated and PT2E
re-derives its own observers, so the wrapper is written here (~200 lines).

What the method keeps in float stays float: layers whose input is not quantized (the output
conv) run in float with dequantized weights; attention q / k / v / probabilities keep their
quantize-dequantize simulation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdadmError
from . import kernels

log = logging.getLogger("edadm")

_warned: set[str] = set()


def onednn_available() -> bool:
    """True on x86 when this PyTorch build has the oneDNN integer conv / linear ops used on CPU
    (elsewhere, e.g. ARM, the layers run the float path with one warning line)."""
    ops = getattr(torch.ops, "onednn", None)
    try:
        return kernels.isa_info()["x86"] and all(
            hasattr(ops, n) for n in ("qconv_prepack", "qconv_pointwise", "qlinear_prepack", "qlinear_pointwise")
        ) and torch.backends.mkldnn.is_available()
    except Exception:  # pragma: no cover - exotic builds
        return False


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


def _scaled(x: torch.Tensor, inv_scale: float) -> torch.Tensor:
    """x * inv_scale in float32, as a new tensor (x is left alone)."""
    return x.mul(inv_scale) if x.dtype == torch.float32 else x.float().mul_(inv_scale)


def _codes_(q: torch.Tensor, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes, in place on q = x * inv_scale: round, shift by the zero point, clamp.
    The simulation's float32 operations in its order, on one temporary (out of place, the
    temporaries cost more than the integer conv on small layers)."""
    q.round_()
    if zero_point:
        q.add_(zero_point)
    return q.clamp_(qmin, qmax)


def _per_tensor(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[float, float, int]:
    """(scale, float32(1 / scale), rounded zero point) of a calibrated per-tensor quantizer:
    the Python numbers both frozen forms below are built from (ActQuant for the kernels'
    inputs, StaticQuant for attention's q / k / v / probabilities)."""
    s = scale.detach().float().reshape(-1)[:1]
    return float(s), float(1.0 / s), int(zero_point.detach().float().reshape(-1)[0].round())


@dataclass
class ActQuant:
    """Static per-tensor input quantization, expressed in the uint8 domain the kernels take."""

    scale: float
    inv_scale: float      # float32(1 / scale): the exact multiplier the fake-quant path uses
    zero_point: int       # uint8-domain zero point
    qmin: int
    qmax: int

    @classmethod
    def from_params(cls, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool) -> "ActQuant":
        s, inv, z = _per_tensor(scale, zero_point)
        shift = 128 if symmetric else 0  # signed codes -> uint8 by + 128, zero point with them
        qmin = -(2 ** (bits - 1)) if symmetric else 0
        qmax = 2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1
        return cls(scale=s, inv_scale=inv, zero_point=z + shift, qmin=qmin + shift, qmax=qmax + shift)


class IntLayer(nn.Module):
    """A Conv2d or Linear run with integer weights and static input quantization.

    `parts` splits the input channels (Q-Diffusion's split shortcut: the skip and the
    upsampled path have their own input and weight scales); the outputs of the parts add up.
    """

    def __init__(self, kind: str, weights: list[torch.Tensor], w_scales: list[torch.Tensor],
                 acts: list[ActQuant | None], bias: torch.Tensor | None, conv: dict | None = None, name: str = "",
                 prepare: bool = True):
        super().__init__()
        if kind not in ("conv", "linear"):
            raise ValueError(kind)
        self.kind, self.name, self.conv = kind, name, conv or {}
        self.acts = acts
        self.bounds = []
        start = 0
        for i, (w, s) in enumerate(zip(weights, w_scales)):
            if w.dtype != torch.int8:
                raise ValueError("IntLayer weights must be int8")
            self.register_buffer(f"w{i}", w, persistent=True)
            self.register_buffer(f"s{i}", s.float().reshape(-1), persistent=True)
            self.bounds.append((start, start + w.shape[1]))
            start += w.shape[1]
        self.in_channels = start
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=True)
        self._packed: list | None = None   # oneDNN prepacked weights (opaque, not in the state dict)
        self._wf: list | None = None       # float32 weights for the float / dequant backends
        self._zeros: torch.Tensor | None = None
        self.backend = "dequant"
        self.released = False               # plain int8 weights dropped after prepacking
        self._prepared = False
        if prepare:
            self.prepare()

    @property
    def num_parts(self) -> int:
        return len(self.bounds)

    def weight_int(self, i: int) -> torch.Tensor:
        return getattr(self, f"w{i}")

    def weight_scale(self, i: int) -> torch.Tensor:
        return getattr(self, f"s{i}")

    def extra_repr(self) -> str:
        w = self.weight_int(0)
        return f"{self.kind}, in={self.in_channels}, out={w.shape[0]}, parts={self.num_parts}, backend={self.backend}"

    # -- backend selection -------------------------------------------------------------------
    def prepare(self) -> str:
        """Choose the kernel of each part for the layer's current device and prepack weights
        once. On x86 CPUs each part takes the first kernel of `kernels.candidates` (exact for
        its code ranges on this ISA) that passes the exactness guard `kernels.verified`."""
        if self.released:
            return self.backend  # prepacked for the CPU, where it stays (see _apply)
        dev = self.weight_int(0).device
        self._packed, self._wf = None, None
        if dev.type == "meta":
            return self.backend
        self._prepared = True
        self._zeros = torch.zeros(self.weight_int(0).shape[0], dtype=torch.long)
        n = self.num_parts
        if any(a is None for a in self.acts):
            chosen = [("float", "input kept in float by the method")] * n
        elif dev.type == "cpu" and onednn_available():
            chosen = [self._choose_cpu(i) for i in range(n)]
        elif dev.type == "cuda" and self.kind == "linear":
            chosen = [("int_mm", "CUDA int8 GEMM, int32 accumulation")] * n
        else:
            chosen = [("dequant", f"no integer kernel for {self.kind} on {dev.type}")] * n
        self.part_kernels = [k for k, _ in chosen]
        self.kernel_reasons = [r for _, r in chosen]
        self.backend = self.part_kernels[0] if len(set(self.part_kernels)) == 1 else "mixed"
        self._packed = [kernels.prepack(k, self.kind, self.weight_int(i), self.weight_scale(i), self.acts[i].scale,
                                        self.acts[i].zero_point, self.conv) if k.startswith("onednn") else None
                        for i, k in enumerate(self.part_kernels)]
        self._wf = [self._float_weight(i) if k in ("float", "dequant") else None
                    for i, k in enumerate(self.part_kernels)]
        return self.backend

    def _geometry(self, i: int) -> tuple:
        w = self.weight_int(i)
        if self.kind == "linear":
            return (w.shape[1], w.shape[0])
        c = self.conv
        return (w.shape[1] * c["groups"], w.shape[0], w.shape[2], w.shape[3], tuple(c["stride"]), tuple(c["padding"]),
                tuple(c["dilation"]), c["groups"])

    def _choose_cpu(self, i: int) -> tuple[str, str]:
        a, w = self.acts[i], self.weight_int(i)
        w_absmax = int(w.to(torch.int16).abs().max()) if w.numel() else 0
        geom = self._geometry(i)
        for k, reason in kernels.candidates(a.qmax, w_absmax):
            if kernels.verified(k, self.kind, geom, a.qmin, a.qmax, a.zero_point, w_absmax):
                return k, reason
        return "dequant", "no exact integer kernel"  # pragma: no cover - candidates end with dequant

    @property
    def kernel_list(self) -> list[str]:
        """The kernel of each part (a backend set by hand applies to every part)."""
        if self.backend != "mixed":
            return [self.backend] * self.num_parts
        return list(self.part_kernels)

    def release_int_weights(self) -> int:
        """Drop the plain int8 weights once oneDNN holds its prepacked copy (which is all the
        CPU kernels read), keeping their shapes on the meta device; returns the bytes freed.
        The layer then stays on the CPU: moving it elsewhere raises (reload the directory with
        the device instead). Other kernels keep their weights (they compute from them)."""
        if self.released or not all(k.startswith("onednn") for k in self.kernel_list):
            return 0
        freed = 0
        for i in range(self.num_parts):
            w = self.weight_int(i)
            freed += w.numel() * w.element_size()
            setattr(self, f"w{i}", torch.empty(w.shape, dtype=w.dtype, device="meta"))
        self.released = True
        return freed

    def _apply(self, fn, recurse=True):
        # Scales stay float32 whatever dtype the model is cast to (a bfloat16 scale has 8
        # significant bits); only their device follows the module.
        scales = [self.weight_scale(i) for i in range(self.num_parts)]
        if self.released:
            target = fn(torch.zeros(1)).device
            if target.type != "cpu":
                raise EdadmError(f"integer layer {self.name}: its int8 weights were released after prepacking for "
                                 f"the CPU; load the directory with device={target.type!r} instead of moving it")
            ws = {f"w{i}": self._buffers.pop(f"w{i}") for i in range(self.num_parts)}  # meta: nothing to move
            out = super()._apply(fn, recurse)
            self._buffers.update(ws)
            for i, sc in enumerate(scales):
                setattr(self, f"s{i}", sc.to(torch.float32))
            return out  # still on the CPU: the prepacked weights stay valid
        out = super()._apply(fn, recurse)
        for i, sc in enumerate(scales):
            setattr(self, f"s{i}", sc.to(self.weight_int(i).device, torch.float32))
        if self._prepared:
            self.prepare()  # device moved: reselect the backend, repack
        return out

    # -- arithmetic ----------------------------------------------------------------------------
    def _quant_u8(self, x: torch.Tensor, a: ActQuant) -> torch.Tensor:
        return _codes_(_scaled(x, a.inv_scale), a.zero_point, a.qmin, a.qmax).to(torch.uint8)

    def _weight_float(self, i: int) -> torch.Tensor:
        """The float32 weight of part i, made on first use where the kernel did not prepare
        it (int_mm's fallback for shapes torch._int_mm does not take)."""
        if self._wf is None:
            self._wf = [None] * self.num_parts
        if self._wf[i] is None:
            self._wf[i] = self._float_weight(i)
        return self._wf[i]

    def _float_weight(self, i: int) -> torch.Tensor:
        w = self.weight_int(i)
        return w.float() * self.weight_scale(i).reshape(-1, *([1] * (w.dim() - 1)))

    def _float_op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, bias)
        c = self.conv
        return F.conv2d(x, w, bias, c["stride"], c["padding"], c["dilation"], c["groups"])

    def _part_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.num_parts == 1:
            return x
        lo, hi = self.bounds[i]
        return x[:, lo:hi] if self.kind == "conv" else x[..., lo:hi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for i, k in enumerate(self.kernel_list):
            xi = self._part_input(x, i)
            bias = self.bias.to(x.dtype) if (self.bias is not None and i == 0) else None
            y = getattr(self, "_run_" + k.replace("-", "_"))(xi, i, bias)
            out = y if out is None else out + y
        return out

    def _run_float(self, x, i, bias):
        return self._float_op(x, self._weight_float(i).to(x.dtype), bias)

    def _run_dequant(self, x, i, bias):
        a = self.acts[i]
        xq = ((self._quant_u8(x, a).float() - a.zero_point) * a.scale).to(x.dtype)
        return self._float_op(xq, self._weight_float(i).to(x.dtype), bias)

    def _run_onednn(self, x, i, bias):
        a = self.acts[i]
        q = self._quant_u8(x, a)
        if self.kind == "conv":
            q = q.contiguous(memory_format=torch.channels_last)
        return kernels.run_packed(self.kind, q, self._packed[i], self.weight_scale(i), a.scale, a.zero_point,
                                  self._zeros, bias, self.conv, x.dtype)

    _run_onednn_split = _run_onednn  # the two prepacked halves of kernels.prepack, added

    def _run_int_mm(self, x, i, bias):
        """int8 GEMM: y = s_x * s_w * (q_x' @ W^T - z' * rowsum(W)), q_x' = q_x - 128 (int8)."""
        a = self.acts[i]
        shape = x.shape
        q = (self._quant_u8(x, a).reshape(-1, shape[-1]).to(torch.int16) - 128).to(torch.int8)
        w = self.weight_int(i)
        m = q.shape[0]
        if m <= 16 or q.shape[1] % 8 or w.shape[0] % 8:  # _int_mm's shape constraints
            return self._run_dequant(x, i, bias)
        acc = torch._int_mm(q, w.t().contiguous())
        corr = (a.zero_point - 128) * w.to(torch.int32).sum(1)
        y = (acc - corr).float() * (a.scale * self.weight_scale(i))
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], w.shape[0])


class StaticQuant(nn.Module):
    """Frozen per-tensor quantize-dequantize with Python-number parameters: the attention
    q / k / v / probability quantizers at inference. No tensor-valued flags, so
    torch.compile traces it without graph breaks; computes in float32 like the simulation."""

    def __init__(self, scale: float, inv_scale: float, zero_point: int, qmin: int, qmax: int):
        super().__init__()
        self.scale, self.inv_scale, self.zero_point, self.qmin, self.qmax = scale, inv_scale, zero_point, qmin, qmax

    @classmethod
    def from_quantizer(cls, q) -> "StaticQuant":
        return cls(*_per_tensor(q.scale, q.zero_point), q.qmin, q.qmax)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}, zero_point={self.zero_point}, range=[{self.qmin}, {self.qmax}]"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish_(_scaled(x, self.inv_scale)).to(x.dtype)

    def _finish_(self, q: torch.Tensor) -> torch.Tensor:
        """codes, unshift, rescale: in place on q = x * inv_scale (float32)."""
        _codes_(q, self.zero_point, self.qmin, self.qmax)
        if self.zero_point:
            q.sub_(self.zero_point)
        return q.mul_(self.scale)

    def quantize_(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` written over `x` (float32, no autograd): the same float32 operations in the
        same order, so the same results, without the six full-size temporaries. For the
        attention probability maps of eager inference, where allocation dominates (measured
        on 8 x 4096 x 4096: 80 ms in place vs 950 ms out of place, 2 threads)."""
        if x.dtype != torch.float32 or x.requires_grad:
            return self(x)
        return self._finish_(x.mul_(self.inv_scale))


def freeze_attention_quantizers(model: nn.Module) -> int:
    """Replace calibrated attention quantizers by StaticQuant; returns how many modules."""
    from ..quant.attention import ATTN_QUANTIZERS, has_attention_quantizers

    n = 0
    for mod in model.modules():
        if has_attention_quantizers(mod):
            for name in ATTN_QUANTIZERS:
                q = getattr(mod, name)
                if not bool(q.initialized):
                    raise EdadmError("attention quantizers are not calibrated")
                setattr(mod, name, StaticQuant.from_quantizer(q))
            n += 1
    return n


def _conv_args(mod: nn.Module) -> dict:
    if getattr(mod, "padding_mode", "zeros") != "zeros":
        raise EdadmError(f"integer engine: padding mode {mod.padding_mode!r} is not supported")
    pad = mod.padding
    if isinstance(pad, str):
        raise EdadmError(f"integer engine: string padding {pad!r} is not supported")
    return {"stride": list(mod.stride), "padding": list(pad), "dilation": list(mod.dilation), "groups": mod.groups}


def int_weight(codes: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor | None:
    """Signed codes minus their per-channel zero point as int8, or None if they do not fit."""
    view = (-1,) + (1,) * (codes.dim() - 1)
    w = codes.to(torch.int16) - zero_point.round().to(torch.int16).reshape(view)
    if int(w.min()) < -128 or int(w.max()) > 127:
        return None
    return w.to(torch.int8)


def int_layer_from_quant(name: str, mod) -> IntLayer | None:
    """An IntLayer with the same parameters as a calibrated fake-quant QConv2d / QLinear, or
    None when its weight codes do not fit int8 (8-bit asymmetric weights)."""
    weights, scales, acts = [], [], []
    act_qs = mod.act_quantizers() if mod.act_quantizer is not None else [None] * len(mod.weight_quantizers())
    for (wq, sl), aq in zip(mod.weight_quantizers(), act_qs):
        w = mod.weight.detach()[:, sl] if mod.split else mod.weight.detach()
        wi = int_weight(wq.quantize_int(w.float()), wq.zero_point.detach())
        if wi is None:
            return None
        weights.append(wi.cpu())
        scales.append(wq.scale.detach().float().cpu())
        acts.append(None if aq is None else ActQuant.from_params(aq.scale, aq.zero_point, aq.bits, aq.symmetric))
    kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
    bias = None if mod.bias is None else mod.bias.detach().cpu()
    layer = IntLayer(kind, weights, scales, acts, bias, _conv_args(mod) if kind == "conv" else None, name=name)
    return layer


def kernel_summary(model: nn.Module) -> dict[str, dict]:
    """kernel -> {"layers": n, "reasons": {reason: n}} over the model's IntLayers (a split
    layer counts once per kernel its parts use)."""
    out: dict[str, dict] = {}
    for mod in model.modules():
        if isinstance(mod, IntLayer) and mod._prepared:
            reasons = getattr(mod, "kernel_reasons", None) or [""] * mod.num_parts
            for k, r in dict(zip(mod.kernel_list, reasons)).items():
                e = out.setdefault(k, {"layers": 0, "reasons": {}})
                e["layers"] += 1
                e["reasons"][r] = e["reasons"].get(r, 0) + 1
    return out


def describe_kernels(model: nn.Module) -> str:
    """One line: which kernel how many layers run, and why, on this ISA."""
    parts = []
    for k, e in sorted(kernel_summary(model).items(), key=lambda kv: -kv[1]["layers"]):
        why = "; ".join(r for r in e["reasons"] if r)
        parts.append(f"{e['layers']} {k}" + (f" ({why})" if why else ""))
    return f"integer engine on {kernels.isa_summary()}: " + ", ".join(parts)


def prepare_int(model: nn.Module, release: bool = False) -> dict[str, int]:
    """(Re)select every IntLayer's kernels for its device; returns backend -> layer count, logs
    one line naming how many layers run which kernel and why, and warns once when some
    quantized layers have no integer kernel here at all. `release`: each layer drops its
    plain int8 weights right after prepacking (`IntLayer.release_int_weights`), so the model
    never holds both copies of more than one layer."""
    counts: dict[str, int] = {}
    slow = []
    for name, mod in model.named_modules():
        if isinstance(mod, IntLayer):
            b = mod.prepare()
            if release:
                mod.release_int_weights()
            counts[b] = counts.get(b, 0) + 1
            if any(r.startswith("no ") for r, k in zip(getattr(mod, "kernel_reasons", []), mod.kernel_list)
                   if k == "dequant"):
                slow.append(name)
    if counts:
        log.info(describe_kernels(model))
    if slow:
        dev = next(model.buffers()).device
        _warn_once(f"dequant-{dev.type}", f"integer engine: no integer kernel for {len(slow)} layer(s) on {dev.type} "
                                          f"(for example {slow[0]}); they run the same arithmetic in float")
    return counts


def convert_to_int(model: nn.Module) -> dict[str, int]:
    """Replace, in place, every calibrated fake-quant layer of `model` by an IntLayer.

    Layers whose codes do not fit int8 stay fake-quantized (one warning). Returns backend ->
    layer count."""
    from ..quant.modules import int_kernel_problem
    from ..quant.wrap import _set_submodule, quant_modules

    dev = next(model.parameters()).device
    kept = []
    for name, mod in list(quant_modules(model)):
        layer = None if int_kernel_problem(mod.spec) else int_layer_from_quant(name, mod)
        if layer is None:
            kept.append(name)
            continue
        _set_submodule(model, name, layer.to(dev))
    if kept:
        _warn_once("kept-fake", f"integer engine: {len(kept)} layer(s) stay fake-quantized (for example {kept[0]}: "
                                f"{int_kernel_problem(dict(quant_modules(model))[kept[0]].spec)})")
    freeze_attention_quantizers(model)
    counts = prepare_int(model)
    if kept:
        counts["fake"] = len(kept)
    return counts
