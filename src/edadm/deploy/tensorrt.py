"""TensorRT's explicit-quantization rules for edadm's ONNX export (`edadm export --target tensorrt`).

Why a target of its own: TensorRT builds int8 kernels from QuantizeLinear / DequantizeLinear
pairs, but only symmetric ones, while edadm's quantizers are affine (uint8-style activation
codes with a zero point, asymmetric 4-bit weights). The plain export keeps edadm's numbers as
they are, which ONNX Runtime and OpenVINO take and TensorRT's parser rejects. This module
decides, quantizer by quantizer, how its numbers go into TensorRT's form (the same numbers
where they fit, a documented re-derivation where they cannot), refuses what would change a
calibration without being asked to, and checks a written graph against the rules.

The rules (TensorRT 10 / 11 developer guide, "Working with Quantized Types" and "Explicit
Quantization"; the ONNX parser's importer and operators.md in onnx/onnx-tensorrt):

- QuantizeLinear / DequantizeLinear: zero point 0 ("TensorRT only supports symmetric
  quantization"), INT8 (the parser refuses UINT8 inputs; a UINT8 zero point is read as INT8,
  which would shift every code by 128), scales positive float32 build-time constants;
- activations per tensor (the parser reads a per-axis scale as a weight's); weights per output
  channel, on the output-channel axis of the weight as the operation reads it: Conv [K, C, R, S]
  axis 0, Gemm with transB [N, K] axis 0, MatMul B [K, N] axis 1;
- int8 weights in [-127, 127] and activations in [-128, 127] (the guide: weights are
  symmetric in [-127, 127] for legacy reasons);
- an opset the parser reads: TensorRT 10.0 parses opsets 9 to 20 (TensorRT 11 up to 25), and
  a per-axis DequantizeLinear needs 13: 13 to 20 is read by every TensorRT 10 and 11.

How edadm's quantizers map (docs/deployment.md, "GPU: TensorRT", has the reasons):

- activation codes [qmin - zp, qmax - zp] inside [-128, 127] (signed codes; uint8 codes with
  zero point 128, the symmetric recipes' [-a, a] ranges): the same numbers ("exact");
- one code beyond it (uint8 with zero point 127: [-127, 128]): the same scale with the top
  code clipped ("clipped");
- one-sided [0, hi] ranges (uint8 with zero point 0: non-negative inputs, softmax
  probabilities): scale hi / 127 over the same range, one bit less ("one-sided");
- anything else (the free recipes' asymmetric ranges): refused, or with symmetrize a scale
  max(|lo|, |hi|) / 127 over the same calibrated range ("symmetrized");
- weight codes minus zero point inside [-127, 127] (4-bit codes, 8-bit symmetric codes):
  the same numbers; symmetric 8-bit codes of -128 (a clipped negative tail) become -127;
  anything wider (8-bit asymmetric weights) is refused, naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EdadmError
from .onnx_graph import graph_consumers
from ..quant.modules import QuantMixin
from ..quant.primitives import quantize
from ..quant.quantizer import UniformQuantizer

OPSETS = (13, 20)            # per-axis DequantizeLinear .. TensorRT 10.0's newest parsed opset
ACT_CODES = (-128, 127)      # TensorRT's int8 activation range
WEIGHT_CODES = (-127, 127)   # and its int8 weight range
ACT_KINDS = ("exact", "clipped", "one-sided", "symmetrized")


@dataclass(frozen=True)
class ActPlan:
    """How one activation quantizer is written for TensorRT: x -> clip(x, lo, hi) (when `clip`)
    -> QuantizeLinear(scale, int8 zero point 0) -> DequantizeLinear."""

    kind: str        # one of ACT_KINDS, or "asymmetric" (refused unless symmetrize)
    scale: float
    lo: float        # the float range the codes cover; the simulation's calibrated range
    hi: float
    clip: bool       # the range is narrower than the int8 codes: clip in float first
    zero_point: int  # edadm's own, for messages


def act_plan(q: UniformQuantizer, symmetrize: bool = False) -> ActPlan:
    """TensorRT form of the frozen per-tensor activation quantizer `q` (module docstring)."""
    s = float(q.scale.detach().reshape(-1)[0])
    zp = int(round(float(q.zero_point.reshape(-1)[0])))
    a, b = q.qmin - zp, q.qmax - zp  # codes relative to zero
    if a >= ACT_CODES[0] and b <= ACT_CODES[1]:
        return ActPlan("exact", s, a * s, b * s, (a, b) != ACT_CODES, zp)
    if max(0, ACT_CODES[0] - a) + max(0, b - ACT_CODES[1]) == 1:
        lo, hi = max(a, ACT_CODES[0]), min(b, ACT_CODES[1])
        return ActPlan("clipped", s, lo * s, hi * s, True, zp)
    # the same calibrated range [a s, b s] on a symmetric grid of 127 steps each side
    scale = max(-a, b) * s / ACT_CODES[1]
    kind = "one-sided" if a == 0 or b == 0 else ("symmetrized" if symmetrize else "asymmetric")
    return ActPlan(kind, scale, a * s, b * s, True, zp)


def weight_codes(wq: UniformQuantizer, w_on_grid: torch.Tensor) -> torch.Tensor:
    """Codes minus zero point of a weight that is on `wq`'s grid ((code - zp) * scale, as the
    simulation's quant_weight returns it), as a float tensor of integers."""
    z = wq._view(wq.zero_point, w_on_grid)
    return quantize(w_on_grid.detach(), wq._view(wq.scale.detach(), w_on_grid), z, wq.qmin, wq.qmax) - z


def weight_for_tensorrt(wq: UniformQuantizer, w_on_grid: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """The on-grid weight with codes in TensorRT's [-127, 127] (zero point 0) and how many codes
    were moved: -128 codes (symmetric 8-bit weights' clipped negative tail) become -127; wider
    codes (8-bit asymmetric weights) stop with a one-line error naming the layer."""
    c = weight_codes(wq, w_on_grid)
    lo, hi = int(c.min()), int(c.max())
    if hi > WEIGHT_CODES[1] or lo < WEIGHT_CODES[0] - 1:
        raise EdadmError(f"--target tensorrt: layer {name} has weight codes minus zero point in [{lo}, {hi}] "
                         f"({wq.bits}-bit {'symmetric' if wq.symmetric else 'asymmetric'} weights), outside "
                         "TensorRT's symmetric int8 weights [-127, 127]: quantize with symmetric 8-bit weights "
                         "(the default) or 4-bit weights")
    moved = int((c < WEIGHT_CODES[0]).sum())
    return c.clamp_(*WEIGHT_CODES) * wq._view(wq.scale.detach(), w_on_grid), moved


def _recipe(pipe) -> str:
    cfg = getattr(pipe, "config", None)
    if cfg is None or not hasattr(cfg, "method"):
        return "an unknown recipe"
    kind = getattr(cfg, "act_range_kind", None)
    return f"{cfg.method} (act_range_kind {kind})" if kind else str(cfg.method)


def plan_model(model: torch.nn.Module, symmetrize: bool, source: str, pipe=None) -> dict:
    """Classify every quantizer of `model` for TensorRT before anything is traced; a one-line
    EdadmError when the activation ranges are asymmetric (and symmetrize is off) or a weight's
    codes cannot be int8 [-127, 127]. Returns the counts export_onnx reports."""
    acts: dict[str, ActPlan] = {}
    weights = {"parts": 0, "clipped_parts": 0, "clipped_codes": 0, "codes": 0}
    for name, m in model.named_modules():
        if isinstance(m, UniformQuantizer) and m.role == "act" and m.enabled and bool(m.initialized):
            acts[name] = act_plan(m, symmetrize)
        elif isinstance(m, QuantMixin):
            with torch.no_grad():
                qw = m.quant_weight()
            for i, (wq, sl) in enumerate(m.weight_quantizers()):
                if not (wq.enabled and bool(wq.initialized)):
                    continue
                part = qw[:, sl] if m.split else qw
                _, moved = weight_for_tensorrt(wq, part, name if not m.split else f"{name} (part {i + 1})")
                weights["parts"] += 1
                weights["codes"] += part.numel()
                weights["clipped_codes"] += moved
                weights["clipped_parts"] += moved > 0
    bad = [(n, p) for n, p in acts.items() if p.kind == "asymmetric"]
    if bad:
        first, p = bad[0]
        raise EdadmError(f"--target tensorrt needs symmetric activation ranges (TensorRT takes zero point 0 only); "
                         f"{source} was quantized with {_recipe(pipe)}: {len(bad)} of {len(acts)} activation "
                         f"quantizers are asymmetric (first: {first}, zero point {p.zero_point}): quantize with "
                         "--act-range-kind symmetric, or export with --symmetrize to re-derive symmetric ranges "
                         "covering each calibrated range (max(|lo|, |hi|) / 127, less resolution)")
    counts = {k: sum(p.kind == k for p in acts.values()) for k in ACT_KINDS}
    return {"activations": counts, "rederived": counts["one-sided"] + counts["symmetrized"],
            "weights": weights, "symmetrize": symmetrize}


def fold_matmul_transposes(model_proto) -> int:
    """Weight DequantizeLinear -> Transpose -> MatMul (how PyTorch writes a Linear on 3-D inputs)
    becomes DequantizeLinear(axis=1) over the transposed int8 codes [in, out] feeding the MatMul:
    the per-channel axis then is the output channel of the weight as MatMul reads it, with
    nothing between the weight and its operation. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    g = model_proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers = graph_consumers(g)
    done, drop = 0, []
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        codes = inits[dq.input[0]]
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        after = consumers.get(dq.output[0], [])
        if len(codes.dims) != 2 or axis != 0 or len(after) != 1 or after[0].op_type != "Transpose":
            continue
        tr = after[0]
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), [1, 0])
        users = consumers.get(tr.output[0], [])
        if perm != [1, 0] or not users or any(u.op_type != "MatMul" or list(u.input).index(tr.output[0]) != 1
                                              for u in users):
            continue
        if len(consumers.get(codes.name, [])) != 1:  # codes shared with another node: leave them
            continue
        t = numpy_helper.from_array(numpy_helper.to_array(codes).T.copy(), codes.name)
        codes.CopyFrom(t)
        for a in list(dq.attribute):
            if a.name == "axis":
                dq.attribute.remove(a)
        dq.attribute.append(helper.make_attribute("axis", 1))
        for u in users:
            u.input[1] = dq.output[0]
        drop.append(tr)
        done += 1
    for n in drop:
        g.node.remove(n)
    return done


# output-channel axis of a weight by the operation that reads it (input 1)
def _weight_axis(node, rank: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None


def check_graph(model_proto) -> list[str]:
    """Where an ONNX graph breaks TensorRT's explicit-quantization rules (module docstring), one
    line each; [] when it follows them. Checks every QuantizeLinear / DequantizeLinear."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    g = model_proto.graph
    out: list[str] = []
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSETS[0] <= opset <= OPSETS[1]:
        out.append(f"opset {opset}: TensorRT 10 and 11 parse {OPSETS[0]}-{OPSETS[1]} with per-axis DequantizeLinear")
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers = graph_consumers(g)

    def const(name):
        """(array, ONNX data type) of a build-time constant (initializer or Constant node), else None."""
        if name in inits:
            return numpy_helper.to_array(inits[name]), inits[name].data_type
        p = producers.get(name)
        if p is not None and p.op_type == "Constant":
            t = next((a.t for a in p.attribute if a.name == "value"), None)
            if t is not None:
                return numpy_helper.to_array(t), t.data_type
        return None

    def dtype(t):
        return TensorProto.DataType.Name(t)

    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{n.op_type} {n.name or n.output[0]}"
        attrs = {a.name: a for a in n.attribute}
        if "output_dtype" in attrs and attrs["output_dtype"].i != TensorProto.INT8:
            out.append(f"{where}: output_dtype {dtype(attrs['output_dtype'].i)}, not INT8")
        scale = const(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            out.append(f"{where}: scale is not a build-time constant")
            continue
        s, st = scale
        if st != TensorProto.FLOAT:
            out.append(f"{where}: scale is {dtype(st)}, not FLOAT")
        if s.size == 0 or not np.all(np.isfinite(s)) or not np.all(s > 0):
            out.append(f"{where}: scales must all be positive and finite")
        zp = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            out.append(f"{where}: no constant zero point (TensorRT's form: an explicit INT8 zero point 0)")
        else:
            z, zt = zp
            if zt != TensorProto.INT8:
                out.append(f"{where}: zero point is {dtype(zt)}, not INT8")
            if np.any(z != 0):
                out.append(f"{where}: zero point {z.reshape(-1)[np.flatnonzero(z)[0]]} (TensorRT takes 0 only)")
            if z.size != s.size:
                out.append(f"{where}: zero point and scale differ in size ({z.size} vs {s.size})")
        if n.op_type == "QuantizeLinear":
            if const(n.input[0]) is not None:
                out.append(f"{where}: quantizes a constant (a weight left unfolded: give it int8 codes)")
            if s.size != 1:
                out.append(f"{where}: per-axis activation quantization (TensorRT: per tensor)")
            continue
        w = const(n.input[0])
        if w is None:  # an activation: the DequantizeLinear of a QuantizeLinear, same numbers
            q = producers.get(n.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                out.append(f"{where}: input is neither int8 weight codes nor a QuantizeLinear output")
                continue
            if s.size != 1:
                out.append(f"{where}: per-axis activation dequantization (TensorRT: per tensor)")
            qs = const(q.input[1])
            if qs is not None and (qs[0].size != s.size or not np.array_equal(qs[0], s)):
                out.append(f"{where}: scale differs from its QuantizeLinear's")
            continue
        codes, ct = w
        if ct != TensorProto.INT8:
            out.append(f"{where}: weight codes are {dtype(ct)}, not INT8")
        elif codes.size and (codes.min() < WEIGHT_CODES[0] or codes.max() > WEIGHT_CODES[1]):
            out.append(f"{where}: weight codes in [{codes.min()}, {codes.max()}], outside [-127, 127]")
        axis = attrs["axis"].i if "axis" in attrs else 1
        axis = axis + codes.ndim if axis < 0 else axis
        if codes.ndim < 2 or s.ndim != 1 or s.size != codes.shape[axis]:
            out.append(f"{where}: weight scale of shape {list(s.shape)} is not one per channel of axis {axis} "
                       f"of the {list(codes.shape)} weight")
        users = consumers.get(n.output[0], [])
        if not users:
            out.append(f"{where}: unused weight")
        for u in users:
            want = _weight_axis(u, codes.ndim) if list(u.input).index(n.output[0]) == 1 else None
            if want is None:
                out.append(f"{where}: weight feeds {u.op_type} input {list(u.input).index(n.output[0])}, not the "
                           "weight input of a Conv / Gemm / MatMul")
            elif axis != want:
                out.append(f"{where}: per-channel axis {axis}, but {u.op_type} reads output channels on axis {want}")
    return out
