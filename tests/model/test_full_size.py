"""The paper's denoisers, built from their published configs with random weights (no
download): every Conv2d / Linear quantized or kept with a reason; one reconstruction
iteration per block type and one sampling step on scaled-down versions of the same
architectures (full-size forward passes would take minutes on 2 CPU cores)."""
import pytest
import torch
from torch import nn

from edadm.calib import CalibrationSet
from edadm.config import QuantConfig, ReconConfig
from edadm.model.pipelines import denoiser_config
from edadm.model.reference_configs import REFERENCE_CONFIGS, build
from edadm.model.structure import feature_module, reconstruction_units, split_points
from edadm.quant.attention import has_attention_quantizers
from edadm.quant.calibrate import init_act_ranges, init_weight_ranges
from edadm.quant.modules import LayerSpec, QuantMixin
from edadm.quant.wrap import AttnSpec, wrap_model
from edadm.recon.engine import full_precision_copy, reconstruct_unit

PARAMS_M = {"ddpm-cifar10": 35.7, "ldm-celebahq-256": 274.1, "sd-v1-4": 859.5, "dit-xl-2-256": 749.8}


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_full_size_every_layer_is_quantized_or_kept_with_a_reason(name):
    model = build(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(PARAMS_M[name], rel=0.002)
    layers = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    plan = wrap_model(model, QuantConfig(weight_bits=4, act_bits=8))
    for n in layers:
        spec = plan[n]
        assert isinstance(spec, LayerSpec) or (isinstance(spec, str) and spec), n
        assert isinstance(model.get_submodule(n), QuantMixin) == isinstance(spec, LayerSpec)
    attns = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    assert attns and all(isinstance(plan[n], AttnSpec) and has_attention_quantizers(model.get_submodule(n))
                         for n in attns)
    # first and last layers at 8 bits, output layer input in float (METHOD.md)
    first, last = ("pos_embed.proj", "proj_out_2") if name.startswith("dit") else ("conv_in", "conv_out")
    assert plan[last].weight_bits == 8 and plan[last].act_bits is None
    if name.startswith("dit"):
        assert plan[first].weight_bits == 8
        assert split_points(model) == {}  # no skip concatenations in a transformer
    else:
        assert split_points(model)  # UNet up blocks concatenate skips
    units = reconstruction_units(model, lambda m: isinstance(m, QuantMixin))
    kinds = {type(model.get_submodule(n)).__name__ for n, k in units if k == "block"}
    expected = {"ddpm-cifar10": {"ResnetBlock2D", "Attention"}, "ldm-celebahq-256": {"ResnetBlock2D", "Attention"},
                "sd-v1-4": {"ResnetBlock2D", "BasicTransformerBlock"}, "dit-xl-2-256": {"BasicTransformerBlock"}}
    assert kinds == expected[name]
    feature_module(model)  # TDAC has a feature point


def _small(name: str):
    """The same architecture, scaled down (channels, depth), random weights."""
    import diffusers

    cfg = denoiser_config(name, small=True)
    cls = getattr(diffusers, cfg.pop("_class_name"))
    torch.manual_seed(0)
    return cls.from_config(cfg).eval()


def _calib(model, name: str, n: int = 8) -> CalibrationSet:
    g = torch.Generator().manual_seed(0)
    c = model.config
    x = torch.randn(n, c.in_channels, c.sample_size, c.sample_size, generator=g)
    cond = {}
    if name == "sd-v1-4":
        cond["encoder_hidden_states"] = torch.randn(n, 5, c.cross_attention_dim, generator=g)
    if name == "dit-xl-2-256":
        cond["class_labels"] = torch.randint(0, 1000, (n,), generator=g)
    return CalibrationSet(x=x, t=torch.randint(0, 1000, (n,), generator=g), step=torch.zeros(n, dtype=torch.long),
                          trajectory=torch.arange(n), counts=torch.tensor([n]), cond=cond)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_scaled_down_reconstruction_iteration_per_block_type_and_a_sampling_step(name):
    model = _small(name)
    calib = _calib(model, name)
    (args, kwargs), = list(calib.model_inputs(8, "cpu"))
    with torch.no_grad():
        ref = model(*args, **kwargs).sample
    wrap_model(model, QuantConfig(method="eda-dm", weight_bits=4, act_bits=8, split_shortcut=True))
    init_weight_ranges(model)
    init_act_ranges(model, calib, batch_size=8, progress=False)
    fp = full_precision_copy(model)
    done = set()
    for unit, kind in reconstruction_units(model, lambda m: isinstance(m, QuantMixin)):
        block_type = type(model.get_submodule(unit)).__name__
        if kind != "block" or block_type in done:
            continue
        ulog = reconstruct_unit(model, fp, unit, kind, calib, ReconConfig(iters=1, batch_size=4, add_loss=0.8),
                                calib_batch=8)
        assert ulog.fallback is None and ulog.history and ulog.history[0]["inner"] > 0, (unit, ulog)
        done.add(block_type)
    assert done
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(2)
    t = sched.timesteps[0]
    with torch.no_grad():
        out = model(args[0], t.expand(len(args[0])), **kwargs).sample  # DiT wants one timestep per sample
        step = sched.step(out[:, :args[0].shape[1]], t, args[0]).prev_sample  # DiT also predicts variance
    assert out.shape == ref.shape and torch.isfinite(step).all()
