"""Denoiser families: each reference architecture is found by its family, which owns its
call, block classes, TDAC feature point, split points and 8-bit layers."""
import pytest
import torch

from edadm.config import QuantConfig
from edadm.errors import EdadmError
from edadm.model.families import FAMILIES, call_denoiser, components, family_of
from edadm.model.reference_configs import REFERENCE_CONFIGS, build
from edadm.quant.wrap import keep_patterns

EXPECTED = {"ddpm-cifar10": "unet2d", "ldm-celebahq-256": "unet2d", "sd-v1-4": "unet2d-condition",
            "dit-xl-2-256": "dit"}


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_each_reference_architecture_has_its_family(name):
    model = build(name, device="meta")
    fam = family_of(model)
    assert fam.name == EXPECTED[name]
    feat_name, feat = fam.feature_module(model)
    assert model.get_submodule(feat_name) is feat
    splits = fam.split_points(model)
    assert (splits == {}) == (fam.name == "dit")  # UNets concatenate skips, DiT does not
    keep, no_act = keep_patterns(model, QuantConfig())
    assert keep == fam.keep_8bit and no_act == fam.no_act_quant
    assert all(model.get_submodule(p) is not None for p in keep)  # the patterns name real layers


def test_registry_and_errors():
    assert set(FAMILIES) == {"unet2d", "unet2d-condition", "dit"}
    assert set(components()) == {"unet", "transformer"}
    with pytest.raises(EdadmError, match="not a supported denoiser"):
        family_of(torch.nn.Linear(2, 2))


def test_call_denoiser_keeps_the_input_channels(make_tiny_unet):
    unet = make_tiny_unet()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert call_denoiser(unet, x, torch.tensor(10)).shape == x.shape


def test_config_patterns_replace_the_familys():
    model = build("ddpm-cifar10", device="meta")
    keep, no_act = keep_patterns(model, QuantConfig(keep_8bit=["conv_in"], no_act_quant=[]))
    assert keep == ("conv_in",) and no_act == ()
