"""`edadm export --target tensorrt`: a graph TensorRT's explicit quantization accepts.

TensorRT is not installable from the package registries on the machines these tests run on,
so no engine is built here: the graph is checked against TensorRT's documented rules
(deploy/tensorrt.py cites them) node by node, the checker is shown to catch graphs that break
them, and the graph is run in ONNX Runtime (float, graph optimisations off) against edadm's
simulation.

Agreement, measured on the model below (digits-t2i, qdiffusion W8A8 without reconstruction,
one call at batch 3; the plain export's own rounding flips are 0.5 % of the same call):
- weights only: the one change is symmetric 8-bit weight codes of -128 becoming -127 (2597 of
  795904 codes): 0.15 % relative L2 against the simulation; against the simulation with those
  codes moved the same way, float rounding (< 1e-5);
- everything on: 0.9 % (96 activation quantizers exact, 18 with the top code clipped, 8
  one-sided re-derived at scale x 255 / 127), and the error against the float model grows from
  2.44 % (simulation) to 2.45 %. Bounds: 3 % against the simulation (the plain export's) and
  10 % more error against the float model than the simulation's.
- a free recipe with --symmetrize: naive digits-t2i W8A8 (same settings, measured once, not
  run here to stay fast) 2.4 % against the simulation, its error against the float model from
  2.3 % to 2.6 %; the tiny random-weight naive model below is the one the test bounds.
"""
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edadm.api import quantize  # noqa: E402
from edadm.config import QuantConfig  # noqa: E402
from edadm.deploy import tensorrt  # noqa: E402
from edadm.deploy.onnx_export import example_inputs, export_onnx  # noqa: E402
from edadm.errors import EdadmError  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402
from edadm.model.families import get_denoiser  # noqa: E402
from edadm.quant.modules import QuantMixin  # noqa: E402
from edadm.quant.quantizer import UniformQuantizer  # noqa: E402
from edadm.quant.wrap import set_quant_state  # noqa: E402
from onnx_util import ort_float, rel  # noqa: E402  (tests/deploy/onnx_util.py)

# small calibration, no reconstruction: the qdiffusion recipe's symmetric activation ranges and
# split shortcut in seconds. digits-t2i has Conv, Gemm and MatMul weights and attention.
CALIB = {"num_samples": 16, "num_trajectories": 16, "uniform_steps": 4}


def _quantized(model="digits-t2i", method="qdiffusion", wbits=8):
    pipe = load_pipeline(model)
    quantize(pipe, QuantConfig(method=method, weight_bits=wbits, steps=4, calib=CALIB, recon={"enabled": False}),
             progress=False)
    return pipe


def _call(den, names, args):
    with torch.no_grad():
        return den(*args[:2], **dict(zip(names[2:], args[2:]))).sample.numpy()


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    pipe = _quantized()
    d = tmp_path_factory.mktemp("trt")
    info = export_onnx(pipe, d / "trt.onnx", target="tensorrt")
    export_onnx(pipe, d / "plain.onnx")  # the default target, for comparison
    den = get_denoiser(pipe).eval()
    names, args = example_inputs(den, 3)  # another batch than the export's: batch is dynamic
    return pipe, den, d, info, names, args


def test_every_qdq_node_follows_tensorrts_rules(t2i):
    pipe, den, d, info, names, _ = t2i
    m = onnx.load(str(d / "trt.onnx"))
    onnx.checker.check_model(m)
    assert tensorrt.check_graph(m) == []
    # the same rules, spelled out here on every node, so that the checker is not the only judge
    inits = {i.name: i for i in m.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in m.graph.node if n.op_type == "Constant"}
    value = lambda name: onnx.numpy_helper.to_array(inits[name] if name in inits else consts[name])  # noqa: E731
    dtype = lambda name: (inits[name] if name in inits else consts[name]).data_type  # noqa: E731
    assert m.opset_import[0].version == 17 and 13 <= m.opset_import[0].version <= 20
    q_nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    weight_dq = [n for n in dq_nodes if n.input[0] in inits]
    parts = sum(len(q.weight_quantizers()) for q in den.modules() if isinstance(q, QuantMixin))
    assert len(weight_dq) == parts == info["folded_weights"] == info["tensorrt"]["weights"]["parts"]
    acts = sum(1 for q in den.modules() if isinstance(q, UniformQuantizer) and q.role == "act" and bool(q.initialized))
    assert sum(info["tensorrt"]["activations"].values()) == acts
    # one QDQ pair per activation quantizer, as in the plain export; quantizers that read the same
    # tensor with the same numbers (to_k / to_v of a cross-attention, every resnet's time_emb_proj)
    # are one pair there, merged by the exporter's common-subexpression elimination
    plain = onnx.load(str(d / "plain.onnx"))
    plain_q = sum(n.op_type == "QuantizeLinear" for n in plain.graph.node)
    assert len(q_nodes) == len(dq_nodes) - len(weight_dq) == plain_q
    assert 0.8 * acts < len(q_nodes) <= acts
    users = {}
    for n in m.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for n in q_nodes + dq_nodes:
        scale, zp = value(n.input[1]), value(n.input[2])
        assert dtype(n.input[1]) == onnx.TensorProto.FLOAT and np.all(scale > 0), n.name
        assert dtype(n.input[2]) == onnx.TensorProto.INT8 and not zp.any() and zp.size == scale.size, n.name
        if n in weight_dq:
            codes = value(n.input[0])
            axis = next(a.i for a in n.attribute if a.name == "axis")
            assert codes.dtype == np.int8 and -127 <= codes.min() and codes.max() <= 127, n.name
            (op,) = users[n.output[0]]
            # the output-channel axis of the weight as the operation reads it
            want = {"Conv": 0, "MatMul": 1}.get(op.op_type)
            if op.op_type == "Gemm":
                want = 0 if next(a.i for a in op.attribute if a.name == "transB") else 1
            assert axis == want and scale.shape == (codes.shape[axis],), (n.name, op.op_type, axis)
        else:
            assert scale.size == 1, n.name  # activations per tensor
            if n.op_type == "QuantizeLinear":
                assert n.input[0] not in inits and n.input[0] not in consts, n.name  # no weight left unfolded
    assert not [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert {n.op_type for n in m.graph.node} >= {"Conv", "Gemm", "MatMul"}
    assert info["tensorrt"]["matmul_weights_transposed"] > 0  # Linear on 3-D inputs: codes stored [in, out]


def test_weights_are_the_simulations_codes_with_zero_point_zero(t2i):
    """Weights only: the graph equals the simulation whose -128 weight codes are moved to -127
    to float rounding, and the simulation itself within what those moved codes cost."""
    pipe, den, d, info, names, args = t2i
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    set_quant_state(den, weight=True, act=False)
    saved = {}
    try:
        export_onnx(pipe, d / "trt_w.onnx", target="tensorrt")
        got = ort_float(d / "trt_w.onnx", feeds)
        ref = _call(den, names, args)
        with torch.no_grad():
            for name, m in den.named_modules():
                if isinstance(m, QuantMixin):
                    qw = m.quant_weight()
                    moved = [tensorrt.weight_for_tensorrt(wq, qw[:, sl] if m.split else qw, name)[0]
                             for wq, sl in m.weight_quantizers()]
                    saved[m] = m.weight.data
                    m.weight.data = torch.cat(moved, dim=1) if m.split else moved[0]
            ref_moved = _call(den, names, args)
    finally:
        for m, w in saved.items():
            m.weight.data = w
        set_quant_state(den, weight=True, act=True)
    w = info["tensorrt"]["weights"]
    assert 0 < w["clipped_codes"] < 0.01 * w["codes"]  # the negative tail of symmetric 8-bit weights
    assert rel(got, ref_moved) < 1e-5
    assert rel(got, ref) < 0.005  # measured 0.0015


def test_full_graph_agrees_with_the_simulation(t2i):
    pipe, den, d, info, names, args = t2i
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    ref = _call(den, names, args)
    set_quant_state(den, weight=False, act=False)
    try:
        fp = _call(den, names, args)
    finally:
        set_quant_state(den, weight=True, act=True)
    got = ort_float(d / "trt.onnx", feeds)
    plain = ort_float(d / "plain.onnx", feeds)
    counts = info["tensorrt"]["activations"]
    assert counts["exact"] > counts["clipped"] + counts["one-sided"] and counts["symmetrized"] == 0
    assert info["tensorrt"]["rederived"] == counts["one-sided"] > 0  # softmax probabilities at least
    err, err_plain = rel(got, ref), rel(plain, ref)
    assert err < 0.03, (err, err_plain)  # measured 0.009 (plain export: 0.005)
    assert rel(got, fp) < 1.1 * rel(ref, fp)  # measured 0.0245 vs 0.0244


def _sweep(p_lo, p_hi, s):
    """Inputs across and beyond a range, on and between the grid points."""
    return torch.linspace(p_lo - 3 * s, p_hi + 3 * s, 20001)


@pytest.mark.parametrize("bits,symmetric,lo,hi,kind", [
    (8, False, -1.0, 1.0, "exact"),        # the symmetric recipes' [-a, a] (zero point 128 or 127)
    (8, True, -0.7, 0.9, "exact"),         # signed codes (act_symmetric)
    (6, False, -0.5, 1.5, "exact"),        # narrow codes: clipped in float, int8 container
    (8, False, 0.0, 2.0, "one-sided"),     # non-negative inputs, softmax probabilities
    (8, False, -0.3, 2.0, "symmetrized"),  # a free recipe's range (with symmetrize)
])
def test_activation_forms_keep_the_calibrated_range(bits, symmetric, lo, hi, kind):
    """Each activation quantizer's TensorRT form against edadm's own fake quantization, in
    PyTorch's arithmetic: exact forms give the same numbers; the clipped form differs only on
    the dropped top code, by one step; re-derived forms stay within half their (coarser) step
    inside the calibrated range and clip at its ends as the simulation does."""
    q = UniformQuantizer(bits, symmetric)
    q.set_range(lo, hi)
    p = tensorrt.act_plan(q, symmetrize=True)
    s = float(q.scale)
    x = _sweep(p.lo, p.hi, s)
    sim = q(x)
    got = torch.fake_quantize_per_tensor_affine(torch.clamp(x, p.lo, p.hi) if p.clip else x, p.scale, 0, -128, 127)
    zp = int(q.zero_point)
    want = "clipped" if kind == "exact" and (q.qmin - zp, q.qmax - zp) == (-127, 128) else kind
    assert p.kind == want, (p, zp)
    assert p.scale > 0
    if p.kind == "exact":
        assert torch.equal(got, sim)
        assert (p.lo, p.hi) == pytest.approx((float(sim.min()), float(sim.max())))
    elif p.kind == "clipped":
        diff = (got - sim).abs()
        assert torch.equal(got[diff > 0], torch.full_like(got[diff > 0], 127 * s))
        assert float(diff.max()) == pytest.approx(s, rel=1e-5)
    else:  # the simulation's range on a symmetric grid: half a (coarser) step, everywhere
        assert (p.lo, p.hi) == pytest.approx((float(sim.min()), float(sim.max())))
        assert p.scale == pytest.approx(max(-p.lo, p.hi) / 127)
        assert float((got - sim).abs().max()) <= 0.5 * p.scale + 0.5 * s + 1e-6
        if p.kind == "one-sided":  # negative inputs still become 0
            assert not got[x <= 0].any()


def test_symmetric_recipe_zero_point_127_is_the_clipped_form():
    q = UniformQuantizer(8, False)
    q.set_range(-1.0, 1.0)
    q.zero_point.fill_(127)  # [-127, 128] codes: float rounding of a / (2a / 255) puts it either side
    p = tensorrt.act_plan(q)
    assert p.kind == "clipped" and p.hi == pytest.approx(127 * float(q.scale)) and p.lo == pytest.approx(-p.hi)
    q.zero_point.fill_(0)  # a one-sided range is re-derived even without symmetrize
    assert tensorrt.act_plan(q).kind == "one-sided"
    q.zero_point.fill_(37)
    assert tensorrt.act_plan(q).kind == "asymmetric" and tensorrt.act_plan(q, symmetrize=True).kind == "symmetrized"


def test_weight_codes_wider_than_int8_stop_naming_the_layer():
    torch.manual_seed(0)
    w = torch.randn(4, 16)
    for bits, symmetric, ok in [(4, False, True), (8, True, True), (8, False, False)]:
        wq = UniformQuantizer(bits, symmetric, per_channel=True, channels=4, role="weight")
        wq.init_from_weight(w, method="minmax")
        qw = wq(w)
        if ok:
            got, moved = tensorrt.weight_for_tensorrt(wq, qw, "blocks.0.proj")
            codes = tensorrt.weight_codes(wq, got)
            assert codes.abs().max() <= 127
            assert moved == int((got != qw).sum())  # only the -128 codes moved, by one step
        else:
            with pytest.raises(EdadmError, match=r"layer blocks\.0\.proj has weight codes .* \[-127, 127\]"):
                tensorrt.weight_for_tensorrt(wq, qw, "blocks.0.proj")


@pytest.fixture(scope="module")
def tiny_free(tiny_quant_dir, tmp_path_factory):
    """The tiny random-weight naive W4A8 directory (a free recipe: asymmetric activation ranges)
    exported plain and for TensorRT with symmetrize."""
    d = tmp_path_factory.mktemp("trt-free")
    export_onnx(tiny_quant_dir, d / "plain.onnx")
    info = export_onnx(tiny_quant_dir, d / "sym.onnx", target="tensorrt", symmetrize=True)
    return d, info


def test_symmetrized_free_recipe_stays_near_the_simulation(tiny_quant_dir, tiny_free):
    """--symmetrize re-derives the free recipe's ranges on a symmetric grid: one bit less for
    each, so the graph moves away from the simulation by about the simulation's own error.
    Measured on this random-weight model: 5.6 % against the simulation (plain export 2.8 %),
    error against the float model 5.6 % -> 6.4 %; on the trained digits-t2i (naive W8A8, same
    settings as above): 2.4 %, 2.3 % -> 2.6 % (docs/deployment.md)."""
    d, info = tiny_free
    pipe = load_pipeline(tiny_quant_dir, engine="fake")
    den = get_denoiser(pipe).eval()
    names, args = example_inputs(den, 2)
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    ref = _call(den, names, args)
    set_quant_state(den, weight=False, act=False)
    fp = _call(den, names, args)
    got = ort_float(d / "sym.onnx", feeds)
    counts = info["tensorrt"]["activations"]
    assert counts["symmetrized"] > counts["exact"] + counts["clipped"] + counts["one-sided"]
    assert info["tensorrt"]["rederived"] == counts["symmetrized"] + counts["one-sided"]
    assert rel(got, ref) < 0.1
    assert rel(got, fp) < 1.5 * rel(ref, fp)


def test_checker_catches_graphs_that_break_the_rules(tiny_free):
    """The default export of a free recipe (uint8 activation codes with zero points, uint8
    4-bit weight codes) breaks the rules, and so does a compliant graph edited one rule at a time."""
    d, _ = tiny_free
    broken = tensorrt.check_graph(onnx.load(str(d / "plain.onnx")))
    text = "\n".join(broken)
    assert "zero point is UINT8, not INT8" in text and "(TensorRT takes 0 only)" in text
    assert "weight codes are UINT8, not INT8" in text

    good = d / "sym.onnx"
    assert tensorrt.check_graph(onnx.load(str(good))) == []

    def edited(edit):
        m = onnx.load(str(good))
        edit(m)
        return tensorrt.check_graph(m)

    def weight_dq(m):
        inits = {i.name for i in m.graph.initializer}
        return next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)

    def set_axis(m):
        n = weight_dq(m)
        next(a for a in n.attribute if a.name == "axis").i = 1

    def negative_scale(m):
        n = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
        neg = onnx.numpy_helper.from_array(np.array(-0.1, dtype=np.float32), n.input[1])
        src = [x for x in m.graph.node if x.output[0] == n.input[1]]
        (src[0].attribute[0].t if src else next(i for i in m.graph.initializer if i.name == n.input[1])).CopyFrom(neg)

    def old_opset(m):
        m.opset_import[0].version = 21

    def unfolded_weight(m):  # a float weight quantized in the graph, as the plain trace leaves it
        n = weight_dq(m)
        codes = next(i for i in m.graph.initializer if i.name == n.input[0])
        w = onnx.numpy_helper.to_array(codes).astype(np.float32)
        m.graph.initializer.append(onnx.numpy_helper.from_array(w, "w_float"))
        m.graph.node.append(onnx.helper.make_node("QuantizeLinear", ["w_float", n.input[1], n.input[2]], ["w_q"],
                                                  axis=0))
        n.input[0] = "w_q"

    assert any("per-channel axis 1, but Conv reads output channels on axis 0" in v or "not one per channel" in v
               for v in edited(set_axis))
    assert any("positive" in v for v in edited(negative_scale))
    assert any("opset 21" in v for v in edited(old_opset))
    assert any("quantizes a constant" in v for v in edited(unfolded_weight))


def _cli(argv, capsys):
    from edadm.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def test_cli_refuses_an_asymmetric_recipe_in_one_line(tiny_quant_dir, tmp_path, capsys):
    out = tmp_path / "out" / "q.onnx"
    code, _, err = _cli(["export", tiny_quant_dir, "--out", out, "--target", "tensorrt"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("edadm: error: --target tensorrt needs symmetric activation ranges")
    assert "quantized with naive (act_range_kind free)" in err[0] and "--act-range-kind symmetric" in err[0]
    assert "--symmetrize" in err[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))  # nothing half-written


def test_cli_exports_for_tensorrt(t2i, tiny_quant_dir, tmp_path, capsys):
    """A symmetric recipe's directory exports as it is; a free recipe's with --symmetrize, saying
    how many ranges were re-derived."""
    import edadm

    q = tmp_path / "q"
    edadm.save(t2i[0], q)
    code, out, err = _cli(["export", q, "--out", tmp_path / "q.onnx", "--target", "tensorrt"], capsys)
    assert code == 0, err
    assert "TensorRT form (int8, zero point 0)" in out and "0 symmetrized" in out
    assert tensorrt.check_graph(onnx.load(str(tmp_path / "q.onnx"))) == []

    code, out, err = _cli(["export", tiny_quant_dir, "--out", tmp_path / "n.onnx", "--target", "tensorrt",
                           "--symmetrize"], capsys)
    assert code == 0, err
    n_sym = int(out.split(" symmetrized")[0].rsplit(" ", 1)[1])
    assert n_sym > 0 and "re-derived" in out
    assert tensorrt.check_graph(onnx.load(str(tmp_path / "n.onnx"))) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.onnx", "q", "q.onnx"]  # no leftovers


@pytest.mark.parametrize("argv,needle", [
    (["--target", "tensorrt", "--opset", "21"], "parse opsets up to 20"),
    (["--symmetrize"], "--symmetrize re-derives activation ranges for --target tensorrt"),
    (["--target", "tensorrt-10"], "invalid choice: 'tensorrt-10'"),
])
def test_cli_bad_tensorrt_options_are_one_line_exit_2(argv, needle, tmp_path, capsys):
    q = tmp_path / "q"
    (q / "unet").mkdir(parents=True)
    (q / "unet" / "edadm_quant.json").write_text("{}")  # looks quantized: the checks before loading run
    code, _, err = _cli(["export", q, "--out", tmp_path / "d.onnx", *argv], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "d.onnx").exists()


def test_cli_targets_are_the_exporters():
    from edadm.cli import EXPORT_TARGETS
    from edadm.deploy.onnx_export import TARGETS

    assert EXPORT_TARGETS == TARGETS == ("onnx", "tensorrt")
