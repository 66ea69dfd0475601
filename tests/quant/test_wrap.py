import pytest
import torch
from torch import nn

from edadm.config import QuantConfig
from edadm.model.reference_configs import build
from edadm.quant.modules import LayerSpec, QuantMixin
from edadm.model.structure import split_points
from edadm.quant.attention import has_attention_quantizers
from edadm.quant.wrap import AttnSpec, layer_plan, quant_modules, set_quant_state, wrap_model


@pytest.mark.parametrize("name,params_m", [("ddpm-cifar10", 35.7), ("sd-v1-4", 859.5)])
def test_every_conv_and_linear_is_quantized_or_kept(name, params_m):
    model = build(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)
    layers = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    cfg = QuantConfig(weight_bits=4, act_bits=8, keep_fp=["*.proj_in"])
    plan = wrap_model(model, cfg)
    attns = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    assert attns and all(isinstance(plan[n], AttnSpec) and has_attention_quantizers(model.get_submodule(n))
                         for n in attns)
    assert set(plan) == set(layers) | set(attns)
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
    assert all(s.weight_symmetric for s in plan8.values() if isinstance(s, LayerSpec))


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
        # quantizers off: the FP model (the quantized attention processor computes softmax
        # attention with explicit matmuls instead of SDPA, hence not bit-identical)
        assert torch.allclose(unet(x, t).sample, ref, atol=1e-5, rtol=1e-4)
        set_quant_state(unet, weight=True, act=True)
        q = unet(x, t).sample
    assert not torch.equal(q, ref)
    assert (q - ref).pow(2).mean() < ref.pow(2).mean()


def test_split_points_match_skip_concatenation():
    """The split channel counts equal the channels of h in torch.cat([h, skip]) at run time."""
    import torch

    from edadm.model.reference_configs import DDPM_CIFAR10_UNET
    from diffusers import UNet2DModel

    cfg = {k: v for k, v in DDPM_CIFAR10_UNET.items() if k != "_class_name"}
    cfg.update(block_out_channels=[32, 64, 64, 64], layers_per_block=2)
    unet = UNet2DModel(**cfg).eval()
    seen = {}
    real_cat = torch.cat

    def spy(tensors, dim=0, **kw):
        out = real_cat(tensors, dim=dim, **kw)
        if dim == 1 and len(tensors) == 2 and tensors[0].dim() == 4:
            seen.setdefault(out.shape[1], set()).add(tensors[0].shape[1])
        return out

    torch.cat = spy
    try:
        with torch.no_grad():
            unet(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    finally:
        torch.cat = real_cat
    pts = split_points(unet)
    assert pts and all(n.startswith("up_blocks.") for n in pts)
    for name, k in pts.items():
        conv = unet.get_submodule(name)
        assert k in seen[conv.in_channels]


def test_split_quantizers_see_parts_separately(make_tiny_unet):
    import torch

    unet = make_tiny_unet()
    plan = wrap_model(unet, QuantConfig(weight_bits=4, act_bits=8, split_shortcut=True))
    name = next(n for n, s in plan.items() if isinstance(s, LayerSpec) and s.split)
    mod = unet.get_submodule(name)
    k = mod.split
    seen = {}
    mod.act_quantizer.register_forward_hook(lambda m, a, o: seen.__setitem__(1, a[0].shape[1]))
    mod.act_quantizer2.register_forward_hook(lambda m, a, o: seen.__setitem__(2, a[0].shape[1]))
    for wq, sl in mod.weight_quantizers():
        wq.init_from_weight(mod.weight[:, sl], method="minmax")
    x = torch.randn(2, mod.in_channels, 8, 8)
    x[:, k:] *= 100.0  # the skip part has a 100x larger range
    mod.act_quantizer.set_range(float(x[:, :k].min()), float(x[:, :k].max()))
    mod.act_quantizer2.set_range(float(x[:, k:].min()), float(x[:, k:].max()))
    with torch.no_grad():
        mod(x)
    assert seen == {1: k, 2: mod.in_channels - k}
    assert mod.act_quantizer2.scale.item() > 50 * mod.act_quantizer.scale.item()
    w_part1 = mod.weight[:, :k]
    assert torch.allclose(mod.quant_weight()[:, :k], mod.weight_quantizer(w_part1))


def test_unsupported_layers_are_named_or_kept_by_keep_fp(make_tiny_unet):
    from edadm.errors import EdadmError

    class MyConv(nn.Conv2d):  # a subclass: its forward may do more than Conv2d's
        pass

    unet = make_tiny_unet()
    up = unet.up_blocks[0].upsamplers[0]
    up.conv = MyConv(up.conv.in_channels, up.conv.out_channels, 3, padding=1)
    unet.conv_norm_out = nn.ConvTranspose2d(16, 16, 1)  # stands in for any unsupported weight layer
    with pytest.raises(EdadmError, match=r"up_blocks\.0\.upsamplers\.0\.conv \(MyConv\).*conv_norm_out "
                                         r"\(ConvTranspose2d\).*keep_fp"):
        layer_plan(unet, QuantConfig())
    plan = wrap_model(unet, QuantConfig(keep_fp=["up_blocks.0.upsamplers.0.conv", "conv_norm_out"]))
    assert "unsupported type MyConv" in plan["up_blocks.0.upsamplers.0.conv"]
    assert not isinstance(unet.conv_norm_out, QuantMixin)
