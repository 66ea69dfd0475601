"""The integer engine on CUDA: every layer shape and batch size, agreement with the simulation,
half precision, compile. Runs wherever CUDA is present and skips cleanly elsewhere (the
backend choice and int-mm's shape rule are tested on the CPU in test_intengine.py)."""
import pytest
import torch
from torch import nn

from edadm import load
from edadm.deploy import backends
from edadm.deploy.intengine import IntLayer, int_layer_from_quant
from edadm.sampling import generate

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

from test_intengine import CASES, _calibrated, _layer_case  # noqa: E402  (same layers as the CPU tests)


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact float32 on the GPU for the comparisons (TF32 convolutions round to 10 bits)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("kind,spec", CASES)
def test_every_layer_kind_on_cuda_matches_the_simulation(kind, spec):
    layer, x = _layer_case(kind)
    q = _calibrated(layer, spec, x)
    il = int_layer_from_quant("l", q).cuda()
    q, x = q.cuda(), x.cuda()
    assert il.kernel_list == ["dequant" if spec.act_bits else "float"] * il.num_parts
    with torch.no_grad():
        ref, out = q(x), il(x)
        assert out.shape == ref.shape and _rel(out, ref) < 1e-5
        half = il.half()
        assert half.compute_dtype == torch.float16
        assert all(w.dtype == torch.float16 for st in half._state for w in st.values())  # no float32 copy kept
        assert _rel(half(x.half()), ref) < 1e-2


@pytest.mark.parametrize("rows", [1, 7, 16, 17, 250])
@pytest.mark.parametrize("spec", [CASES[5][1], CASES[6][1]])  # W8 and W4 Linear
def test_int_mm_on_cuda_is_exact_at_every_row_count(rows, spec, monkeypatch):
    """The row count that made cuBLASLt refuse (250) and the ones torch._int_mm rejects
    (<= 16) are padded: exact int32 sums, the same output as the float path."""
    layer = nn.Linear(32, 24)
    x = torch.randn(rows, 32, generator=torch.Generator().manual_seed(2)) + 0.5
    q = _calibrated(layer, spec, x)
    monkeypatch.setenv(backends.KERNEL_ENV, "int-mm")
    il = int_layer_from_quant("l", q).cuda()
    assert il.kernel_list == ["int-mm"]  # the guard passed: int32 accumulation on this GPU
    with torch.no_grad():
        got = il(x.cuda())
        il.set_kernels("dequant")
        ref = il(x.cuda())
    assert _rel(got, ref) < 1e-5


@pytest.fixture(scope="module")
def cuda_pipes(trained_quant_dirs):
    out = {s: (load(d, device="cuda", engine="fake"), load(d, device="cuda", engine="int", dtype=torch.float32))
           for s, d in trained_quant_dirs.items()}
    out.update({f"{s}-auto": load(d, device="cuda", engine="int") for s, d in trained_quant_dirs.items()})
    out["fp"] = load("digits-ddpm", device="cuda")
    return out


@pytest.mark.parametrize("setting", ["w8a8", "w4a8"])
@pytest.mark.parametrize("batch", [250, 7])
def test_digits_ddpm_on_cuda_matches_fake_at_odd_batches(cuda_pipes, setting, batch):
    """digits-ddpm W8A8 / W4A8 sampled on CUDA with the default engine at batch 250 and 7:
    the images match the simulation's (float32 both; only the order of float operations
    differs, which a 20-step trajectory can amplify at rounding ties): far closer to the
    simulation than the simulation is to FP."""
    fake, intp = cuda_pipes[setting]
    assert all(m.backend in ("dequant", "float") for m in intp.unet.modules() if isinstance(m, IntLayer))
    n = batch if batch < 250 else 250
    a = generate(fake, n, seed=0, steps=20, batch_size=batch, progress=False)
    b = generate(intp, n, seed=0, steps=20, batch_size=batch, progress=False)
    fp = generate(cuda_pipes["fp"], n, seed=0, steps=20, batch_size=batch, progress=False)
    diff, quant = float((a - b).abs().mean()), float((a - fp).abs().mean())
    print(f"{setting} batch {batch}: mean |int - fake| = {diff:.2e} (max {float((a - b).abs().max()):.2e}), "
          f"mean |fake - fp| = {quant:.2e}")
    assert diff < 0.05 * quant


@pytest.mark.parametrize("setting", ["w8a8", "w4a8"])
def test_default_cuda_engine_is_fp16_and_close_to_the_simulation(cuda_pipes, setting):
    """The default dtype on CUDA is float16 (deploy.load.default_dtype): weights rebuilt in it,
    no float32 copy; its images stay much closer to the simulation than to FP."""
    fake, _ = cuda_pipes[setting]
    intp = cuda_pipes[f"{setting}-auto"]
    layers = [m for m in intp.unet.modules() if isinstance(m, IntLayer)]
    assert layers and all(m.compute_dtype == torch.float16 for m in layers)
    assert all(w.dtype == torch.float16 for m in layers for st in m._state for w in st.values())
    a = generate(fake, 64, seed=0, steps=20, batch_size=64, progress=False)
    b = generate(intp, 64, seed=0, steps=20, batch_size=64, progress=False)
    fp = generate(cuda_pipes["fp"], 64, seed=0, steps=20, batch_size=64, progress=False)
    diff, quant = float((a - b).abs().mean()), float((a - fp).abs().mean())
    print(f"{setting} fp16 engine: mean |int - fake| = {diff:.2e}, mean |fake - fp| = {quant:.2e}")
    assert diff < 0.3 * quant


def test_evaluate_cli_on_cuda(trained_quant_dirs, tmp_path):
    from edadm.cli import main

    out = tmp_path / "m.json"
    assert main(["evaluate", str(trained_quant_dirs["w4a8"]), "--device", "cuda", "--num", "250", "--batch-size", "250",
                 "--steps", "20", "--json", str(out), "--no-progress"]) == 0
    assert out.is_file()


def test_compiled_fp16_int_engine_on_cuda(trained_quant_dirs):
    from edadm.loading import compile_denoiser

    pipe = load(trained_quant_dirs["w8a8"], device="cuda", engine="int")
    x = torch.randn(8, 1, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    t = torch.full((8,), 500, device="cuda")
    with torch.inference_mode():
        ref = pipe.unet(x, t).sample
        compile_denoiser(pipe, torch.float16)
        got = pipe.unet(x.half().contiguous(memory_format=torch.channels_last), t).sample
    assert got.dtype == torch.float16
    assert float((got.float() - ref).norm() / ref.norm()) < 2e-2
