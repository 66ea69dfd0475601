"""Kernel choice per ISA and the exactness guard (edadm.deploy.kernels)."""
import logging

import pytest
import torch

from edadm.deploy import backends, kernels
from edadm.deploy.intengine import ActQuant, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="no oneDNN int8 ops on this machine")
pytestmark = pytest.mark.isa  # also run in a subprocess per reachable ISA (test_isa.py)

FULL_CONV = (64, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1)
U8 = ActQuant(0.05, 20.0, 0, 0, 255)  # full-range uint8 input codes


def _first_cpu_kernel(w_absmax: int) -> str:
    return backends.candidates(backends.Part("conv", torch.device("cpu"), U8, w_absmax, FULL_CONV))[0][0]


def test_split_weight_halves_fit_int16_pairs_and_add_up():
    w = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)
    lo, hi = kernels.split_weight(w)
    assert torch.equal(lo.to(torch.int16) + hi.to(torch.int16), w.to(torch.int16))
    assert int(lo.abs().max()) <= 64 and int(hi.abs().max()) <= 64
    assert not kernels.can_saturate(255, 64) and kernels.can_saturate(255, 65) and kernels.can_saturate(255, 127)
    assert not kernels.can_saturate(63, 127)  # 6-bit activations never saturate


@pytest.mark.parametrize("flags,isa", [
    ({"avx", "avx2", "fma"}, "AVX2"),
    ({"avx2", "avx_vnni"}, "AVX2_VNNI"),
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, "AVX512_CORE"),
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}, "AVX512_CORE_VNNI"),
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}, "AVX512_CORE_BF16"),
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "amx_int8", "amx_tile", "amx_bf16"},
     "AVX512_CORE_AMX"),
])
def test_machine_isa_from_cpu_flags(flags, isa):
    assert kernels._machine_isa(flags) == isa


@pytest.mark.parametrize("cap,int32,bf16", [("AVX2", False, False), ("AVX512_CORE", False, False),
                                            ("AVX2_VNNI", True, False), ("AVX512_CORE_VNNI", True, False),
                                            ("AVX512_CORE_AMX", True, True)])
def test_cap_lowers_the_effective_isa(monkeypatch, cap, int32, bf16):
    amx = {"avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
           "amx_int8", "amx_tile", "amx_bf16"}
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: amx)
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    kernels.isa_info.cache_clear()
    try:
        info = kernels.isa_info()
        assert info["isa"] == cap and info["machine_isa"] == "AVX512_CORE_AMX"
        assert info["int32_dot"] is int32 and info["native_bf16"] is bf16
        assert kernels.fast_float_dtype() == (torch.bfloat16 if bf16 else torch.float32)
        if onednn_available():
            assert _first_cpu_kernel(127) == ("onednn" if int32 else "dequant")
            assert _first_cpu_kernel(8) == "onednn"  # 4-bit codes cannot saturate anywhere
        assert ("capped" in kernels.isa_summary()) is (cap != "AVX512_CORE_AMX")
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        kernels.isa_info.cache_clear()


def test_forced_kernel_comes_first_and_bad_values_are_refused(monkeypatch):
    from edadm.errors import EdadmError

    part = backends.Part("conv", torch.device("cpu"), U8, 127, FULL_CONV)
    monkeypatch.setenv(backends.KERNEL_ENV, "onednn-split")
    if onednn_available():
        assert backends.candidates(part)[0] == ("onednn-split", f"forced by {backends.KERNEL_ENV}")
    assert "dequant" in [k for k, _ in backends.candidates(part)]  # always exact: the last resort
    monkeypatch.setenv(backends.KERNEL_ENV, "fastest")
    with pytest.raises(EdadmError, match=backends.KERNEL_ENV):
        backends.candidates(part)


@needs_onednn
@pytest.mark.parametrize("kind,geom", [("conv", FULL_CONV), ("conv", (17, 8, 1, 1, (1, 1), (0, 0), (1, 1), 1)),
                                       ("conv", (32, 8, 3, 3, (2, 2), (1, 1), (1, 1), 1)), ("linear", (96, 24))])
def test_guard_verdicts_follow_the_isa(kind, geom):
    """Split and narrow codes are exact everywhere; full-range codes on the plain kernel are
    exact exactly where the ISA accumulates in int32 (VNNI / AMX)."""
    int32 = kernels.isa_info()["int32_dot"]
    assert kernels.verified("onednn-split", kind, geom, 0, 255, 128, 127)
    assert kernels.verified("onednn", kind, geom, 0, 255, 0, 64)
    assert kernels.verified("onednn", kind, geom, 0, 63, 0, 127)
    assert kernels.verified("onednn", kind, geom, 0, 255, 128, 127) is int32
    assert kernels.verified("dequant", kind, geom, 0, 255, 128, 127)


@needs_onednn
def test_guard_measures_the_saturation_it_rejects():
    geom = FULL_CONV
    err = kernels._probe("onednn", "conv", geom, 0, 255, 0, 127)
    if kernels.isa_info()["int32_dot"]:
        assert err <= kernels.RTOL
    else:  # int16 pairs: 2 x 255 x 127 wraps at 32767
        assert err > 1e-2
    assert kernels._probe("onednn-split", "conv", geom, 0, 255, 0, 127) <= kernels.RTOL


@needs_onednn
@pytest.mark.skipif(kernels.isa_info()["int32_dot"],
                    reason=f"needs an ISA without int32 dot products (this one: {kernels.isa_info()['isa']}); "
                           "runs in the AVX2 subprocess of test_isa.py")
def test_forcing_the_unsafe_kernel_warns_and_images_stay_right(tmp_path, monkeypatch, caplog):
    """Without VNNI, a W8A8 model loaded with the plain int8 kernel forced: the guard warns,
    names the kernel, and the layers run an exact kernel instead."""
    import copy

    from edadm import CalibConfig, QuantConfig, load, quantize, save

    pipe = load("digits-ddpm", device="cpu")
    fp_unet = copy.deepcopy(pipe.unet)
    cfg = QuantConfig(method="naive", weight_bits=8, act_bits=8, steps=4,
                      calib=CalibConfig(num_samples=16, num_trajectories=16, uniform_steps=4, batch_size=16))
    quantize(pipe, cfg, progress=False)
    save(pipe, tmp_path / "q")
    kernels._verdicts.clear()
    kernels._warned.clear()
    monkeypatch.setenv(backends.KERNEL_ENV, "onednn")
    with caplog.at_level(logging.INFO, logger="edadm"):
        intp = load(tmp_path / "q", device="cpu", engine="int")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "kernel onednn is not exact" in r.message]
    assert len(warned) == 1
    summary = [r.message for r in caplog.records if "integer engine on" in r.message]
    assert summary and "dequant" in summary[-1] and "0 onednn " not in summary[-1]
    fake = load(tmp_path / "q", device="cpu", engine="fake")
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 100, 10])
    with torch.no_grad():
        a, b, fp = fake.unet(x, t).sample, intp.unet(x, t).sample, fp_unet(x, t).sample
    q = float((a - fp).pow(2).mean())  # the quantization error; the saturating kernel gives >> 1x
    assert float((b - a).pow(2).mean()) < 0.15 * q


def test_compile_picks_bf16_only_where_the_cpu_has_it(monkeypatch):
    from edadm.loading import compile_dtype

    monkeypatch.setattr(kernels, "isa_info", lambda: {"native_bf16": False})
    assert compile_dtype("cpu") == torch.float32
    monkeypatch.setattr(kernels, "isa_info", lambda: {"native_bf16": True})
    assert compile_dtype("cpu") == torch.bfloat16
