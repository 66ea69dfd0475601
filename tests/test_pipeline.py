"""edadm.loading: the compiled (bf16 + torch.compile) denoiser path."""
from __future__ import annotations

import torch

from edadm.loading import compile_dtype, load_pipeline
from edadm.model.families import call_denoiser
from edadm.sampling import generate


def test_call_denoiser_casts_to_the_model_dtype_and_back(make_tiny_unet):
    unet = make_tiny_unet().to(torch.bfloat16)
    x = torch.randn(2, 1, 32, 32)
    out = call_denoiser(unet, x, torch.tensor(10))
    assert out.dtype == torch.float32 and out.shape == x.shape
    ref = call_denoiser(make_tiny_unet(), x, torch.tensor(10))
    assert (out - ref).abs().max() < 0.1  # bf16 vs float32 of the same weights


def test_compiled_int_engine_matches_eager(tiny_quant_dir):
    """load(..., compile=True) on an integer-engine directory: inductor in bf16 where the CPU
    has it (float32 elsewhere), same images as the eager integer engine within bf16 rounding."""
    eager = generate(load_pipeline(tiny_quant_dir, device="cpu", engine="int"), 2, seed=3, steps=2, progress=False)
    pipe = load_pipeline(tiny_quant_dir, device="cpu", engine="int", compile=True)
    want = compile_dtype("cpu")
    assert pipe.unet.dtype == want and pipe.compiled == want
    fast = generate(pipe, 2, seed=3, steps=2, progress=False)
    assert fast.dtype == torch.float32 and fast.shape == eager.shape
    diff = (fast - eager).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.25, (float(diff.mean()), float(diff.max()))
