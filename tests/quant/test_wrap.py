import pytest
import torch
from torch import nn

from edadm.config import QuantConfig
from edadm.model.reference_configs import build
from edadm.quant.modules import LayerSpec, QuantMixin
from edadm.quant.wrap import layer_plan, quant_modules, set_quant_state, wrap_model


@pytest.mark.parametrize("name,params_m", [("ddpm-cifar10", 35.7), ("sd-v1-4", 859.5)])
def test_every_conv_and_linear_is_quantized_or_kept(name, params_m):
    model = build(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)
    layers = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    cfg = QuantConfig(weight_bits=4, act_bits=8, keep_fp=["*.proj_in"])
    plan = wrap_model(model, cfg)
    assert set(plan) == set(layers)
    for n in layers:
        mod = model.get_submodule(n)
        if isinstance(plan[n], LayerSpec):
            assert isinstance(mod, QuantMixin), n
        else:
            assert isinstance(plan[n], str) and plan[n], n  # a reason
            assert not isinstance(mod, QuantMixin)
    # nothing left as a plain float Conv2d / Linear unless listed with a reason
    for n, m in model.named_modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            assert isinstance(plan[n], str)
    assert plan["time_embedding.linear_1"].weight_bits == 8
    assert plan["conv_out"].weight_bits == 8 and plan["conv_out"].act_bits is None
    assert plan["conv_in"].weight_bits == 4 and plan["conv_in"].act_bits == 8
    if name == "sd-v1-4":
        assert plan["down_blocks.0.attentions.0.proj_in"] == "kept in float by keep_fp pattern"


def test_weight_symmetry_default_follows_bits():
    model = build("ddpm-cifar10", device="meta")
    plan = layer_plan(model, QuantConfig(weight_bits=4))
    assert plan["conv_in"].weight_symmetric is False
    assert plan["conv_out"].weight_symmetric is True  # kept at 8 bits: int8 kernels need zero point 0
    plan8 = layer_plan(model, QuantConfig(weight_bits=8))
    assert all(s.weight_symmetric for s in plan8.values())


def test_quant_state_switches_fp_and_quantized(make_tiny_unet):
    unet = make_tiny_unet()
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        ref = unet(x, t).sample
    wrap_model(unet, QuantConfig(weight_bits=4, act_bits=8))
    for _, m in quant_modules(unet):
        m.weight_quantizer.init_from_weight(m.weight, method="minmax")
        if m.act_quantizer is not None:
            m.act_quantizer.set_range(-5.0, 5.0)
    with torch.no_grad():
        set_quant_state(unet, weight=False, act=False)
        assert torch.equal(unet(x, t).sample, ref)  # quantizers off: exactly the FP model
        set_quant_state(unet, weight=True, act=True)
        q = unet(x, t).sample
    assert not torch.equal(q, ref)
    assert (q - ref).pow(2).mean() < ref.pow(2).mean()
