"""Shared fixtures: tiny random-weight pipelines (no training, no download)."""
from __future__ import annotations

import json

import pytest
import torch


def tiny_unet(seed: int = 0):
    """The digits-ddpm architecture with random weights."""
    from diffusers import UNet2DModel

    from edadm.zoo.models import digits_ddpm_unet_config

    torch.manual_seed(seed)
    return UNet2DModel(**digits_ddpm_unet_config()).eval()


@pytest.fixture
def make_tiny_unet():
    return tiny_unet


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """A DDIM pipeline directory with the digits architecture, random weights, 4 sampler steps."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from edadm.zoo.models import digits_scheduler_config

    path = tmp_path_factory.mktemp("tiny") / "pipe"
    DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(**digits_scheduler_config())).save_pretrained(path)
    (path / "edadm_sampling.json").write_text(json.dumps({"steps": 4, "eta": 0.0}))
    return path


@pytest.fixture(scope="session")
def tiny_quant_dir(tiny_pipe_dir, tmp_path_factory):
    """tiny_pipe_dir quantized W4A8 naive with a small calibration set."""
    from edadm import CalibConfig, QuantConfig, load, quantize, save

    pipe = load(tiny_pipe_dir, device="cpu")
    cfg = QuantConfig(method="naive", weight_bits=4, act_bits=8, calib=CalibConfig(num_samples=16, num_trajectories=16,
                                                                   uniform_steps=4, batch_size=16))
    quantize(pipe, cfg, progress=False)
    out = tmp_path_factory.mktemp("q") / "w4a8"
    save(pipe, out)
    return out
