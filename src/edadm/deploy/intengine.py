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
from ..quant.primitives import codes_ as _codes_  # the one rounding rule, in place
from . import backends, kernels

log = logging.getLogger("edadm")

_warned: set[str] = set()


def onednn_available() -> bool:
    """True on x86 when this PyTorch build has the oneDNN integer conv / linear ops used on CPU
    (elsewhere, e.g. ARM, the layers run the float path with one warning line)."""
    return backends.onednn.available()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


def _scaled(x: torch.Tensor, inv_scale: float) -> torch.Tensor:
    """x * inv_scale in float32, as a new tensor (x is left alone)."""
    return x.mul(inv_scale) if x.dtype == torch.float32 else x.float().mul_(inv_scale)


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

    @property
    def fusable(self) -> bool:
        """Whether torch's fused fake-quant kernel takes these numbers (it needs qmin <= z <= qmax)."""
        return self.qmin <= self.zero_point <= self.qmax


class IntLayer(nn.Module):
    """A Conv2d or Linear run with integer weights and static input quantization.

    Holds the codes, the scales and the choice of kernel backend per part (`deploy.backends`:
    one file per backend, chosen by `backends.choose` for the layer's device and codes, each
    preparing its weights once per device / dtype). `parts` splits the input channels
    (Q-Diffusion's split shortcut: the skip and the upsampled path have their own input and
    weight scales); the outputs of the parts add up.
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
        # the float dtype the model was cast to: float backends rebuild their weights in it
        self.compute_dtype = torch.float32 if bias is None or not bias.is_floating_point() else bias.dtype
        self.part_kernels: list[str] = ["dequant"] * len(weights)
        self.kernel_reasons: list[str] = [""] * len(weights)
        self._state: list = [None] * len(weights)   # each part's prepared state (its backend's)
        self._runs: list = []                        # (run, state) per part, built by prepare
        self.channels_last = False          # conv weights rebuilt channels_last (the model was cast so)
        self.zero_offsets: torch.Tensor | None = None
        self.released = False               # plain int8 weights dropped after prepacking
        self._prepared = False
        if prepare:
            self.prepare()

    @property
    def num_parts(self) -> int:
        return len(self.bounds)

    @property
    def backend(self) -> str:
        """The kernel of every part, or "mixed"."""
        return self.part_kernels[0] if len(set(self.part_kernels)) == 1 else "mixed"

    @property
    def kernel_list(self) -> list[str]:
        return list(self.part_kernels)

    def weight_int(self, i: int) -> torch.Tensor:
        return getattr(self, f"w{i}")

    def weight_scale(self, i: int) -> torch.Tensor:
        return getattr(self, f"s{i}")

    def extra_repr(self) -> str:
        w = self.weight_int(0)
        return f"{self.kind}, in={self.in_channels}, out={w.shape[0]}, parts={self.num_parts}, backend={self.backend}"

    # -- backend selection -------------------------------------------------------------------
    def part(self, i: int) -> backends.Part:
        w = self.weight_int(i)
        w_absmax = int(w.to(torch.int16).abs().max()) if w.numel() and not w.is_meta else 0
        return backends.Part(self.kind, w.device, self.acts[i], w_absmax, self._geometry(i))

    def prepare(self) -> str:
        """Choose each part's backend for the layer's current device (`backends.choose`: a
        forced one, then by priority, each guarded where it has a guard) and let it prepare
        its weights once."""
        if self.released:
            return self.backend  # prepacked for the CPU, where it stays (see _apply)
        if self.weight_int(0).device.type == "meta":
            return self.backend
        self._prepared = True
        self.zero_offsets = torch.zeros(self.weight_int(0).shape[0], dtype=torch.long)
        chosen = [backends.choose(self.part(i)) for i in range(self.num_parts)]
        self.part_kernels = [k for k, _ in chosen]
        self.kernel_reasons = [r for _, r in chosen]
        self._build()
        return self.backend

    def set_kernels(self, name: str) -> None:
        """Run every part on backend `name`, unguarded (tests and benchmarks compare backends)."""
        self.part_kernels = [name] * self.num_parts
        self.kernel_reasons = [f"set by hand ({name})"] * self.num_parts
        self._build()

    def _build(self) -> None:
        bs = [backends.get(k) for k in self.part_kernels]
        self._state = [b.prepare(self, i) for i, b in enumerate(bs)]
        self._runs = [(b.run, st) for b, st in zip(bs, self._state)]

    def _geometry(self, i: int) -> tuple:
        w = self.weight_int(i)
        if self.kind == "linear":
            return (w.shape[1], w.shape[0])
        c = self.conv
        return (w.shape[1] * c["groups"], w.shape[0], w.shape[2], w.shape[3], tuple(c["stride"]), tuple(c["padding"]),
                tuple(c["dilation"]), c["groups"])

    def release_int_weights(self) -> int:
        """Drop the plain int8 weights once oneDNN holds its prepacked copy (which is all the
        CPU kernels read), keeping their shapes on the meta device; returns the bytes freed.
        The layer then stays on the CPU: moving it elsewhere raises (reload the directory with
        the device instead). Other kernels keep their weights (they compute from them)."""
        if self.released or not self._prepared or not all(k.startswith("onednn") for k in self.kernel_list):
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
        # significant bits); only their device follows the module. The cast's float dtype
        # becomes the compute dtype the float backends rebuild their weights in.
        scales = [self.weight_scale(i) for i in range(self.num_parts)]
        self._follow_cast(fn)
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
            self.prepare()  # device or dtype changed: reselect the backend, prepare again
        return out

    def _follow_cast(self, fn) -> None:
        """Learn from probes what `fn` does to a float conv weight: a dtype cast (both float32
        and float64 probes come out in one dtype) sets the compute dtype; a memory-format
        conversion (both layouts come out the same) sets channels_last; a plain move keeps both."""
        shape = (1, 2, 2, 2)
        a, b = fn(torch.zeros(shape)), fn(torch.zeros(shape, dtype=torch.float64))
        if a.dtype == b.dtype and a.is_floating_point():
            self.compute_dtype = a.dtype
        c = fn(torch.zeros(shape).contiguous(memory_format=torch.channels_last))
        if a.is_contiguous() == c.is_contiguous():  # both converted to one layout
            self.channels_last = not a.is_contiguous()

    # -- arithmetic shared by the backends -----------------------------------------------------
    def quant_codes(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Input codes of part i (uint8 domain) as float32: the simulation's float32 operations."""
        a = self.acts[i]
        return _codes_(_scaled(x, a.inv_scale), a.zero_point, a.qmin, a.qmax)

    def quant_u8(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.quant_codes(x, i).to(torch.uint8)

    def qdq_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Part i's input quantize-dequantized, in x's dtype: one fused kernel
        (fake_quantize_per_tensor_affine computes float32 x * (1 / scale), rounds half to
        even, shifts, clamps: the simulation's operations) where it takes the zero point."""
        a = self.acts[i]
        if a.fusable:
            return torch.fake_quantize_per_tensor_affine(x, a.scale, a.zero_point, a.qmin, a.qmax)
        return ((self.quant_codes(x, i) - a.zero_point) * a.scale).to(x.dtype)

    def dequantized_weight(self, i: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Part i's weight rebuilt from its codes (float32 arithmetic), in `dtype`."""
        w = self.weight_int(i)
        out = (w.float() * self.weight_scale(i).reshape(-1, *([1] * (w.dim() - 1)))).to(dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last and out.dim() == 4 else out

    def float_op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
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
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        if len(self._runs) == 1:  # the common case, kept lean: launch overhead rules small GPU layers
            run, state = self._runs[0]
            return run(self, x, 0, bias, state)
        out = None
        for i, (run, state) in enumerate(self._runs):
            y = run(self, self._part_input(x, i), i, bias if i == 0 else None, state)
            out = y if out is None else out + y
        return out


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
        if x.device.type != "cpu" and self.qmin <= self.zero_point <= self.qmax:
            # one fused kernel, same float32 operations (launches dominate small GPU layers)
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)
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


def build_int_layer(name: str, mod: nn.Module, weights: list[tuple], acts: list[tuple] | None, act_bits: int | None,
                    act_symmetric: bool, bias: torch.Tensor | None, prepare: bool = True) -> IntLayer | None:
    """The one builder of IntLayers, for the loader and the in-memory conversion alike.

    weights: per part (signed codes, per-channel scale, zero point); acts: per part (scale,
    zero point) of the input quantizer, or None where the method keeps the input in float.
    None when the weight codes minus their zero point do not fit int8."""
    ints = [int_weight(codes, zp) for codes, _, zp in weights]
    if any(w is None for w in ints):
        return None
    act_q = ([ActQuant.from_params(s, z, act_bits, act_symmetric) for s, z in acts] if acts
             else [None] * len(ints))
    kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
    return IntLayer(kind, ints, [s.detach().float() for _, s, _ in weights], act_q, bias,
                    _conv_args(mod) if kind == "conv" else None, name=name, prepare=prepare)


def int_layer_from_quant(name: str, mod) -> IntLayer | None:
    """An IntLayer with the same parameters as a calibrated fake-quant QConv2d / QLinear, or
    None when its weight codes do not fit int8 (8-bit asymmetric weights)."""
    weights = []
    for wq, sl in mod.weight_quantizers():
        w = mod.weight.detach()[:, sl] if mod.split else mod.weight.detach()
        weights.append((wq.quantize_int(w.float()).cpu(), wq.scale.detach().float().cpu(),
                        wq.zero_point.detach().cpu()))
    acts, bits, sym = None, None, False
    if mod.act_quantizer is not None:
        aqs = mod.act_quantizers()
        acts, bits, sym = [(aq.scale, aq.zero_point) for aq in aqs], aqs[0].bits, aqs[0].symmetric
    bias = None if mod.bias is None else mod.bias.detach().cpu()
    return build_int_layer(name, mod, weights, acts, bits, sym, bias)


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
    from ..quant.wrap import set_submodule, quant_modules

    dev = next(model.parameters()).device
    kept = []
    for name, mod in list(quant_modules(model)):
        layer = None if int_kernel_problem(mod.spec) else int_layer_from_quant(name, mod)
        if layer is None:
            kept.append(name)
            continue
        set_submodule(model, name, layer.to(dev))
    if kept:
        _warn_once("kept-fake", f"integer engine: {len(kept)} layer(s) stay fake-quantized (for example {kept[0]}: "
                                f"{int_kernel_problem(dict(quant_modules(model))[kept[0]].spec)})")
    freeze_attention_quantizers(model)
    counts = prepare_int(model)
    if kept:
        counts["fake"] = len(kept)
    return counts
