"""Shared fixtures: tiny random-weight pipelines (no training, no download)."""
from __future__ import annotations

import json
import os
from pathlib import Path

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


def tiny_clip(d):
    """A random CLIP (text and vision towers of 2 layers) with a character-level tokenizer."""
    import json
    import string

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d.mkdir(parents=True, exist_ok=True)
    vocab = {}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    for sp in ("<|startoftext|>", "<|endoftext|>"):
        vocab[sp] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=32,
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                      pad_token_id=vocab["<|endoftext|>"]),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(d)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    proc.save_pretrained(d)
    return model, proc


TRAINED_Q_ENV = "EDADM_TEST_TRAINED_Q"  # test_isa.py hands its ISA subprocesses the directories made here


@pytest.fixture(scope="session")
def trained_quant_dirs(tmp_path_factory):
    """digits-ddpm (the shipped weights) quantized naive at W8A8 and W4A8, saved: {setting: dir}.

    Quantized once per test run; the ISA subprocesses of test_isa.py load the same directories
    (passed in EDADM_TEST_TRAINED_Q) instead of quantizing again under every cap."""
    if os.environ.get(TRAINED_Q_ENV):
        root = Path(os.environ[TRAINED_Q_ENV])
        return {s: root / s for s in ("w8a8", "w4a8")}
    from edadm import CalibConfig, QuantConfig, load, quantize, save

    root = tmp_path_factory.mktemp("trained-q")
    for w in (8, 4):
        pipe = load("digits-ddpm", device="cpu")
        cfg = QuantConfig(method="naive", weight_bits=w, act_bits=8, steps=20,
                          calib=CalibConfig(num_samples=64, num_trajectories=64, uniform_steps=10, batch_size=64))
        quantize(pipe, cfg, progress=False)
        save(pipe, root / f"w{w}a8")
    return {s: root / s for s in ("w8a8", "w4a8")}
