"""One quantization rule (issue 37): every path that turns a float into an integer code gives
quant.primitives.quantize's codes, on random values, exact half-step ties (with an odd zero
point, where round(x / s) + z and round(x / s + z) differ) and values at and beyond the
clamp edges."""
import pytest
import torch

from edadm.quant.primitives import choose_qparams, dequantize, learned_step_fake_quantize, qrange, quantize
from edadm.quant.quantizer import UniformQuantizer


def _values(scale: float, zp: int, qmin: int, qmax: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
    ties = (torch.arange(qmin - zp - 3, qmax - zp + 3, dtype=torch.float32) + 0.5) * scale
    edges = torch.tensor([lo, hi, lo - scale, hi + scale, lo - 0.49 * scale, hi + 0.51 * scale, 10 * lo, 10 * hi, 0.0])
    rand = torch.empty(4000).uniform_(1.3 * lo, 1.3 * hi, generator=g)
    return torch.cat([ties, edges, rand])


CASES = [(8, False, 0.25, 37), (8, True, 0.125, 0), (4, False, 0.5, 3), (4, True, 0.0625, 0)]


@pytest.mark.parametrize("bits,symmetric,scale,zp", CASES)
def test_every_path_gives_the_rules_codes_per_tensor(bits, symmetric, scale, zp):
    from edadm.deploy.intengine import _codes_, _scaled

    qmin, qmax = qrange(bits, symmetric)
    x = _values(scale, zp, qmin, qmax, seed=bits)
    s, z = torch.tensor([scale]), torch.tensor([float(zp)])
    ref = quantize(x, s, z, qmin, qmax)
    assert not torch.equal(ref, torch.clamp(torch.round(x / s + z), qmin, qmax)) or zp % 2 == 0  # ties present
    assert ref.min() == qmin and ref.max() == qmax  # both clamp edges reached

    q = UniformQuantizer(bits, symmetric)
    q.scale.data.fill_(scale)
    q.zero_point.fill_(zp)
    q.initialized.fill_(True)
    assert torch.equal(q.quantize_int(x).float(), ref)  # saved codes, simulation's quantizer
    assert torch.equal(_codes_(_scaled(x, float(1.0 / s)), zp, qmin, qmax), ref)  # integer engine's activations
    fused = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)  # inference simulation
    with torch.no_grad():
        assert torch.equal(q(x), fused)
    assert torch.equal(fused, dequantize(ref, s, z))
    assert torch.equal(learned_step_fake_quantize(x, s, z, qmin, qmax), dequantize(ref, s, z))  # reconstruction


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (4, False)])
def test_every_weight_path_gives_the_rules_codes_per_channel(bits, symmetric):
    from edadm.deploy import tensorrt

    qmin, qmax = qrange(bits, symmetric)
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 5, 3, 3, generator=g)
    s, z = choose_qparams(w.amin(dim=(1, 2, 3)) * 0.8, w.amax(dim=(1, 2, 3)) * 0.8, bits, symmetric)
    sv, zv = s.reshape(-1, 1, 1, 1), z.round().reshape(-1, 1, 1, 1)
    w[0, 0, 0, :2] = (torch.tensor([0.5, -1.5]) * s[0])  # exact ties in channel 0
    ref = quantize(w, sv, zv, qmin, qmax)
    wq = UniformQuantizer(bits, symmetric, per_channel=True, channels=6)
    wq.set_range(w.amin(dim=(1, 2, 3)) * 0.8, w.amax(dim=(1, 2, 3)) * 0.8)
    assert torch.equal(wq.scale.detach(), s) and torch.equal(wq.zero_point, z.round())
    assert torch.equal(wq.quantize_int(w).float(), ref)
    fused = torch.fake_quantize_per_channel_affine(w, s, z.round().int(), 0, qmin, qmax)
    assert torch.equal(fused, dequantize(ref, sv, zv))
    assert torch.equal(tensorrt.weight_codes(wq, fused), ref - zv)  # TensorRT form's codes


def test_onnx_weight_folding_gives_the_rules_codes():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edadm.deploy.onnx_export import _fold_weight_quantizers

    qmin, qmax = qrange(8, True)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 7, generator=g)
    s = w.abs().amax(dim=1) / 100  # some codes beyond 127: the clamp edge
    w[1, :2] = torch.tensor([2.5, -3.5]) * s[1]  # ties
    ref = quantize(w, s.reshape(-1, 1), torch.zeros(4, 1), qmin, qmax)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
         helper.make_node("MatMul", ["x", "wd"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7])],
        initializer=[numpy_helper.from_array(w.numpy(), "w"), numpy_helper.from_array(s.numpy(), "s"),
                     numpy_helper.from_array(torch.zeros(4, dtype=torch.int8).numpy(), "z")])
    model = helper.make_model(graph)
    assert _fold_weight_quantizers(model) == 1
    codes = next(i for i in model.graph.initializer if i.name.endswith("_codes"))
    assert torch.equal(torch.from_numpy(numpy_helper.to_array(codes).astype("float32")), ref)
    assert onnx.checker.check_model(model) is None
