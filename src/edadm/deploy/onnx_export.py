"""Export a quantized denoiser to ONNX with edadm's own quantization as QDQ nodes.

The graph carries the calibrated numbers, not a recalibration:

- every quantized Conv / Linear: its weight as integer codes (int8 initializer; 4-bit codes
  stored losslessly in int8 / uint8) with a per-output-channel DequantizeLinear, and its
  input through a per-tensor QuantizeLinear / DequantizeLinear pair (static scale and zero
  point; codes narrower than 8 bits are first clipped to their range in float);
- split-shortcut layers (skip concatenations) as two quantized convolutions summed;
- attention q, k, v and probabilities as QDQ pairs;
- every layer the method keeps in float left float.

How: the simulation model (engine "fake") is traced by PyTorch's TorchScript ONNX exporter
with every quantizer frozen to constants (`torch.fake_quantize_per_*_affine`, which the
exporter writes as QuantizeLinear / DequantizeLinear), then each QuantizeLinear over a
constant weight is folded into an integer initializer. Written by hand because no exporter
takes a model's own fake-quant parameters to integer ONNX initializers (torch.ao's flow
recalibrates, ModelOpt / NNCF calibrate their own scales).

target "tensorrt" writes the same graph in TensorRT's explicit-quantization form (int8 with
zero point 0 everywhere, weights in [-127, 127] on their output-channel axis): TensorRT's
parser rejects the uint8 codes and zero points that edadm's affine quantizers give ONNX
Runtime and OpenVINO. deploy/tensorrt.py decides how each quantizer maps and checks the graph.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdadmError
from ..quant.modules import QConv2d, QLinear, QuantMixin
from ..quant.primitives import quantize
from ..quant.quantizer import UniformQuantizer
from . import tensorrt
from .onnx_graph import graph_consumers

log = logging.getLogger("edadm")
OPSET = 17
TARGETS = ("onnx", "tensorrt")  # tensorrt: TensorRT's explicit-quantization form (deploy/tensorrt.py)
EXTERNAL_DATA_BYTES = 1 << 30  # above this the weights go to FILE.onnx.data (protobuf's 2 GiB limit)


def _act_qdq(q: UniformQuantizer | None, target: str = "onnx", symmetrize: bool = False):
    """x -> QDQ(x) with q's frozen scale and zero point (identity when q is None or off).
    target "tensorrt": int8 with zero point 0 in TensorRT's form (tensorrt.act_plan)."""
    if q is None or not q.enabled or not bool(q.initialized):
        return lambda x: x
    if target == "tensorrt":
        p = tensorrt.act_plan(q, symmetrize)

        def f_trt(x):
            if p.clip:  # the calibrated range, where it is narrower than the int8 codes
                x = torch.clamp(x, p.lo, p.hi)
            return torch.fake_quantize_per_tensor_affine(x, p.scale, 0, *tensorrt.ACT_CODES)
        return f_trt
    scale, zp = float(q.scale.detach().reshape(-1)[0]), int(round(float(q.zero_point.reshape(-1)[0])))
    # ONNX QuantizeLinear has 8-bit codes: the container range, and narrower codes clipped in float first
    cmin, cmax = (-128, 127) if q.qmin < 0 else (0, 255)
    lo, hi = (q.qmin - zp) * scale, (q.qmax - zp) * scale
    narrow = (q.qmin, q.qmax) != (cmin, cmax)

    def f(x):
        if narrow:
            x = torch.clamp(x, lo, hi)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, cmin, cmax)
    return f


def _weight_params(wq: UniformQuantizer) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(scale, int32 zero point, container min, max) of a per-channel weight quantizer, made
    before tracing so that the exporter sees constants. The container is the 8-bit range; a
    narrower quantizer's codes lie inside it (the weight is already on its grid)."""
    cmin, cmax = (-128, 127) if wq.qmin < 0 else (0, 255)
    return (wq.scale.detach().float().reshape(-1).clone(), wq.zero_point.detach().round().to(torch.int32).reshape(-1),
            cmin, cmax)


def _export_forward(mod: QuantMixin, x: torch.Tensor) -> torch.Tensor:
    parts = mod.weight_quantizers()
    outs = []
    for i, (wq, sl) in enumerate(parts):
        xi = x[:, sl] if mod.split else x
        wi = mod.weight[:, sl] if mod.split else mod.weight
        xi = mod._export_act[i](xi)
        bias = mod.bias if i == 0 else None  # one bias for the sum of the parts
        op = (lambda a, w, b: mod._conv_forward(a, w, b)) if isinstance(mod, QConv2d) else F.linear
        if mod._export_halves[i]:  # overflow fix: two half-range weights, two integer ops, summed
            s, z, cmin, cmax = mod._export_w[i]
            w_lo, w_hi = (torch.fake_quantize_per_channel_affine(getattr(mod, f"_export_half{i}{k}"), s, z, 0, cmin, cmax)
                          for k in "ab")
            outs.append(op(xi, w_lo, bias) + op(xi, w_hi, None))
            continue
        if mod._export_w[i] is not None:
            s, z, cmin, cmax = mod._export_w[i]
            wi = torch.fake_quantize_per_channel_affine(wi, s, z, 0, cmin, cmax)
        outs.append(op(xi, wi, bias))
    return outs[0] if len(outs) == 1 else outs[0] + outs[1]


def _halves(mod: QuantMixin, i: int, wq: UniformQuantizer, act: UniformQuantizer | None):
    """For the overflow fix: the part's on-grid weight as floor(c / 2) and ceil(c / 2) codes
    (both within [-64, 64]), when its codes could saturate int16 pairs of u8 x s8 products
    (kernels.can_saturate); else None."""
    from .kernels import can_saturate

    if act is None or not act.enabled or not bool(act.initialized) or wq.qmin >= 0 or not wq.enabled:
        return None
    w = mod.weight[:, mod.weight_quantizers()[i][1]] if mod.split else mod.weight
    scale = wq._view(wq.scale.detach(), w)
    codes = quantize(w.detach(), scale, wq._view(wq.zero_point, w), wq.qmin, wq.qmax)  # symmetric: zero point 0
    if not can_saturate(act.qmax - act.qmin, int(codes.abs().max())):
        return None
    lo = torch.floor(codes / 2)
    return (lo * scale).contiguous(), ((codes - lo) * scale).contiguous()


def _tensorrt_weight(m: QuantMixin, name: str) -> tuple[torch.Tensor, list]:
    """The on-grid weight of `m` with every part's codes in TensorRT's int8 [-127, 127] and the
    parts' (scale, zero point 0, int8 container): asymmetric 4-bit codes minus their zero
    point are the same numbers with zero point 0 (tensorrt.weight_for_tensorrt)."""
    qw = m.quant_weight().detach()
    parts, params = [], []
    for i, (wq, sl) in enumerate(m.weight_quantizers()):
        part = qw[:, sl] if m.split else qw
        if not (wq.enabled and bool(wq.initialized)):
            parts.append(part)
            params.append(None)
            continue
        parts.append(tensorrt.weight_for_tensorrt(wq, part, name)[0])
        s = wq.scale.detach().float().reshape(-1).clone()
        # the int8 container; the codes themselves stay in [-127, 127]
        params.append((s, torch.zeros_like(s, dtype=torch.int32), *tensorrt.ACT_CODES))
    return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]).contiguous(), params


@contextlib.contextmanager
def export_mode(model: nn.Module, overflow_fix: bool = False, target: str = "onnx", symmetrize: bool = False):
    """Layers and attention quantizers of `model` as constant QDQ while tracing. overflow_fix:
    weights whose 8-bit codes could saturate a CPU's int16 pair sums (no VNNI / AMX) are
    written as two half-range weights, as the integer engine's onednn-split kernel does.
    target "tensorrt": every QDQ int8 with zero point 0 (tensorrt.py; plan_model first)."""
    if target == "tensorrt" and overflow_fix:
        raise EdadmError("the overflow fix is for CPU int8 kernels; --target tensorrt does not take it")
    patched = []
    try:
        for name, m in model.named_modules():
            if isinstance(m, (QConv2d, QLinear)):
                aqs = [m.act_quantizer, getattr(m, "act_quantizer2", None)] if m.split else [m.act_quantizer]
                m._export_act = [_act_qdq(q, target, symmetrize) for q in aqs]
                m._export_saved = m.weight.data
                patched.append(m)
                if target == "tensorrt":
                    with torch.no_grad():
                        m.weight.data, m._export_w = _tensorrt_weight(m, name)
                    m._export_halves = [False] * len(m._export_w)
                    m.forward = _export_forward.__get__(m)
                    continue
                m._export_w = [_weight_params(wq) if wq.enabled and bool(wq.initialized) else None
                               for wq, _ in m.weight_quantizers()]
                # trace the simulation's own quantized weight (on its grid, clamped to its range), so
                # that re-quantizing it in the 8-bit container gives exactly the simulation's codes
                with torch.no_grad():
                    m.weight.data = m.quant_weight().detach().clone()
                    m._export_halves = []
                    for i, (wq, _) in enumerate(m.weight_quantizers()):
                        h = _halves(m, i, wq, aqs[i]) if overflow_fix and m._export_w[i] is not None else None
                        m._export_halves.append(h is not None)
                        for k, t in zip("ab", h or ()):  # buffers: ONNX initializers the exporter does not fold away
                            m.register_buffer(f"_export_half{i}{k}", t)
                m.forward = _export_forward.__get__(m)
            elif isinstance(m, UniformQuantizer) and m.role == "act":
                # attention quantizers (q, k, v, probs) are called directly
                m.forward = _act_qdq(m, target, symmetrize)
                patched.append(m)
        yield model
    finally:
        for m in patched:  # also after a failure half-way through patching
            m.__dict__.pop("forward", None)
            if hasattr(m, "_export_saved"):
                m.weight.data = m._export_saved
                for name in [b for b in m._buffers if b.startswith("_export_half")]:
                    del m._buffers[name]
                for attr in ("_export_w", "_export_saved", "_export_halves", "_export_act"):
                    m.__dict__.pop(attr, None)


class Signature(nn.Module):
    """The denoiser called with positional ONNX inputs (`names`: diffusers' argument names,
    sample and timestep first), returning the sample tensor. bench/peers.py exports the FP
    denoiser through it too."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, sample, timestep, *extra):
        kw = dict(zip(self.names[2:], extra))
        return self.model(sample, timestep, **kw).sample


def example_inputs(model: nn.Module, batch: int = 2) -> tuple[list[str], tuple]:
    """ONNX input names (diffusers' argument names) and example tensors for a denoiser: its
    family's (model/families)."""
    from ..model.families import family_of

    return family_of(model).example_inputs(model, batch)


def _fold_weight_quantizers(model_proto) -> int:
    """Each QuantizeLinear over a constant (initializer) becomes that initializer's integer codes
    feeding the DequantizeLinear directly; returns how many were folded."""
    import numpy as np
    from onnx import numpy_helper

    g = model_proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers = graph_consumers(g)
    producers = {o: n for n in g.node for o in n.output}

    from onnx.helper import tensor_dtype_to_np_dtype

    def const(name):
        """The value of a constant tensor (initializer, Constant, or a Cast of one), else None."""
        if name in inits:
            return numpy_helper.to_array(inits[name])
        p = producers.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(p.attribute[0].t)
        if p is not None and p.op_type == "Cast":
            v = const(p.input[0])
            to = next(a.i for a in p.attribute if a.name == "to")
            return None if v is None else v.astype(tensor_dtype_to_np_dtype(to))
        return None

    folded, drop = 0, []
    for n in list(g.node):
        if n.op_type != "QuantizeLinear":
            continue
        w = const(n.input[0])
        if w is None or w.ndim < 2 or w.dtype.kind != "f":  # a weight: a constant matrix / kernel
            continue
        w = w.astype(np.float32)
        scale, zp = const(n.input[1]), const(n.input[2])
        if scale is None or zp is None:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        info = np.iinfo(zp.dtype)
        # the one rounding rule (quant.primitives.codes_), on the initializer's values
        codes = quantize(torch.from_numpy(w), torch.from_numpy(scale.astype(np.float32)).reshape(shape),
                         torch.from_numpy(zp.astype(np.float32)).reshape(shape), int(info.min), int(info.max))
        codes = codes.numpy().astype(zp.dtype)
        name = (n.input[0] + "_codes").replace("::", "_")
        g.initializer.append(numpy_helper.from_array(codes, name))
        for c in consumers.get(n.output[0], []):
            for k, inp in enumerate(c.input):
                if inp == n.output[0]:
                    c.input[k] = name
        drop.append(n)
        folded += 1
    for n in drop:
        g.node.remove(n)
    # drop what only fed the folded nodes (the float weights, their zero-point casts)
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("Cast", "Constant") and not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return folded


def external_data_path(onnx_file: str | Path) -> Path:
    """Where export_onnx puts a large graph's weights: beside it, FILE.onnx.data."""
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(onnx_file.name + ".data")


def export_files(onnx_file: str | Path) -> list[Path]:
    """The files an export consists of: the graph and, for large models, its weights file."""
    return [f for f in (Path(onnx_file), external_data_path(onnx_file)) if f.is_file()]


def export_onnx(source, out: str | Path, batch: int = 2, opset: int = OPSET, overflow_fix: bool = False,
                target: str = "onnx", symmetrize: bool = False) -> dict:
    """Write the quantized denoiser of `source` (a quantized directory, or a pipeline quantized
    in this process / loaded with engine "fake") to `out` (.onnx; weights over 1 GiB go to
    out + ".data"). Returns what was written (inputs, node counts, folded weights).

    overflow_fix: for CPUs whose int8 kernels sum u8 x s8 products in int16 pairs (AVX2,
    AVX-512 without VNNI): full-range 8-bit weights as two half-range weights (export_mode).

    target "tensorrt": a graph in TensorRT's explicit-quantization form (deploy/tensorrt.py):
    every QuantizeLinear / DequantizeLinear int8 with zero point 0, weights int8 in [-127, 127]
    per output channel; one-sided activation ranges re-derived on the signed grid; asymmetric
    activation ranges refused, or re-derived symmetric with `symmetrize`. The graph is checked
    against the rules before it is written; info["tensorrt"] counts what was re-derived."""
    import onnx

    from ..model.families import get_denoiser
    from ..utils import atomic_file
    from .layout import QUANT_FILE, is_quantized_dir
    from .load import load_quantized

    if target not in TARGETS:
        raise EdadmError(f"unknown export target {target!r}; choose from {', '.join(TARGETS)}")
    if symmetrize and target != "tensorrt":
        raise EdadmError("symmetrize re-derives activation ranges for --target tensorrt; the onnx target keeps "
                         "edadm's own asymmetric ranges")
    if target == "tensorrt":
        if not tensorrt.OPSETS[0] <= opset <= tensorrt.OPSETS[1]:
            raise EdadmError(f"--opset {opset}: TensorRT 10 and 11 parse opsets {tensorrt.OPSETS[0]}-"
                             f"{tensorrt.OPSETS[1]} with per-axis DequantizeLinear (default {OPSET})")
        if overflow_fix:
            raise EdadmError("the overflow fix is for CPU int8 kernels; --target tensorrt does not take it")
    if isinstance(source, (str, Path)) and not is_quantized_dir(source):
        raise EdadmError(f"{source} is not an edadm quantized directory (no {QUANT_FILE} in its denoiser folder): "
                         "export a directory written by edadm quantize")

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise EdadmError(f"cannot write {out}: {exc.strerror or exc}") from exc
    raw = tmp_dir / "raw.onnx"
    try:
        pipe = load_quantized(source, engine="fake") if isinstance(source, (str, Path)) else source
        model = get_denoiser(pipe).eval()
        if not any(isinstance(m, QuantMixin) for m in model.modules()):
            raise EdadmError("the denoiser has no quantized layers: export a directory written by edadm quantize")
        names, args = example_inputs(model, batch)
        trt = None
        if target == "tensorrt":  # refuse before tracing: the user's answer comes in seconds
            trt = tensorrt.plan_model(model, symmetrize, str(source) if isinstance(source, (str, Path))
                                      else "this pipeline", pipe)
        dynamic = {n: {0: "batch"} for n in names} | {"out_sample": {0: "batch"}}
        if "encoder_hidden_states" in dynamic:  # prompt length: the text encoder's
            dynamic["encoder_hidden_states"][1] = "sequence"
        with torch.no_grad(), export_mode(model, overflow_fix=overflow_fix, target=target, symmetrize=symmetrize):
            torch.onnx.export(Signature(model, names), args, str(raw), input_names=names,
                              output_names=["out_sample"], opset_version=opset, dynamo=False,
                              dynamic_axes=dynamic, do_constant_folding=True)
        proto = onnx.load(str(raw))
        folded = _fold_weight_quantizers(proto)
        if trt is not None:
            trt["matmul_weights_transposed"] = tensorrt.fold_matmul_transposes(proto)
            broken = tensorrt.check_graph(proto)
            if broken:  # a bug of this exporter, not of the input: still one line, nothing written
                raise EdadmError(f"the TensorRT export breaks TensorRT's rules in {len(broken)} places "
                                 f"(first: {broken[0]}); please report it")
            log.debug("TensorRT form: activation quantizers %s; %d of %d weight codes -128 clipped to -127",
                     trt["activations"], trt["weights"]["clipped_codes"], trt["weights"]["codes"])
        size = sum(len(i.raw_data) for i in proto.graph.initializer)
        external = size > EXTERNAL_DATA_BYTES
        with atomic_file(out) as tmp:
            if external:
                # the tensors land beside it as OUT.data (the temporary file is in the same folder)
                onnx.save(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=external_data_path(out).name)
            else:
                onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(out))
    except OSError as exc:
        raise EdadmError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        for f in tmp_dir.glob("*"):
            f.unlink()
        tmp_dir.rmdir()
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    info = {"path": str(out), "files": [str(f) for f in export_files(out)], "inputs": names, "opset": opset,
            "folded_weights": folded, "external_data": external,
            "overflow_fix": overflow_fix, "target": target,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}
    if trt is not None:
        info["tensorrt"] = trt
    return info
