import json

import pytest
import torch

from edadm import load
from edadm.deploy.packing import pack_codes, unpack_codes
from edadm.deploy.export import TENSOR_FILE, quantized_state
from edadm.errors import EdadmError
from edadm.quant.wrap import quant_modules


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 3, 3), (7,)])
def test_pack_roundtrip(bits, shape):
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
    packed = pack_codes(codes, bits)
    n = codes.numel()
    assert packed.numel() == ((n + 1) // 2 if bits <= 4 else n)
    assert torch.equal(unpack_codes(packed, bits, shape), codes)


def test_save_load_roundtrip_is_exact(tiny_pipe_dir, tiny_quant_dir):
    """The reloaded model computes exactly what the quantized model computed before saving."""
    from edadm import CalibConfig, QuantConfig, quantize

    pipe = load(tiny_pipe_dir, device="cpu")
    cfg = QuantConfig(method="naive", weight_bits=4, act_bits=8, calib=CalibConfig(num_samples=16, num_trajectories=16,
                                                                   uniform_steps=4, batch_size=16))
    quantize(pipe, cfg, progress=False)
    reloaded = load(tiny_quant_dir, device="cpu", engine="fake")
    x, t = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([999, 500, 1])
    with torch.no_grad():
        a, b = pipe.unet(x, t).sample, reloaded.unet(x, t).sample
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # quantizers restored: same integer codes and scales
    qa, qb = dict(quant_modules(pipe.unet)), dict(quant_modules(reloaded.unet))
    assert qa.keys() == qb.keys()
    for n in qa:
        assert torch.equal(qa[n].weight_quantizer.scale, qb[n].weight_quantizer.scale)
        assert torch.equal(qa[n].weight_quantizer.quantize_int(qa[n].weight), qb[n].weight_quantizer.quantize_int(qb[n].weight))


def test_saved_weights_are_integers_and_small(tiny_pipe_dir, tiny_quant_dir):
    from safetensors.torch import load_file

    tensors = load_file(str(tiny_quant_dir / "unet" / TENSOR_FILE))
    meta = json.loads((tiny_quant_dir / "unet" / "edadm_quant.json").read_text())
    assert meta["format_version"] == 1 and meta["config"]["weight_bits"] == 4
    attn = [n for n, e in meta["layers"].items() if e["type"] == "attention"]
    assert attn and all(f"{n}.probs_quantizer.scale" in tensors for n in attn)
    for name, entry in meta["layers"].items():
        if entry["type"] == "attention":
            continue
        codes = tensors[f"{name}.weight.codes"]
        assert codes.dtype == torch.uint8
        assert f"{name}.weight" not in tensors  # no float copy of quantized weights
    fp_bytes = (tiny_pipe_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    q_bytes = (tiny_quant_dir / "unet" / TENSOR_FILE).stat().st_size
    assert q_bytes < fp_bytes / 4  # mostly 4-bit codes; 8-bit first/last layers and float norms/biases add a little
    card = (tiny_quant_dir / "README.md").read_text()
    assert card.startswith("---") and "weight_bits: 4" in card


def test_corrupted_tensors_give_a_user_error(tiny_quant_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_quant_dir, bad)
    (bad / "unet" / TENSOR_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(EdadmError, match="cannot read tensors"):
        load(bad)


def test_quantized_state_requires_calibration(make_tiny_unet):
    from edadm.config import QuantConfig
    from edadm.quant.wrap import wrap_model

    unet = make_tiny_unet()
    wrap_model(unet, QuantConfig())
    with pytest.raises(EdadmError, match="no calibrated"):
        quantized_state(unet)


@pytest.mark.parametrize("engine", ["fake", "int"])
def test_save_of_a_loaded_directory_round_trips(tiny_quant_dir, tmp_path, engine):
    """edadm.save(edadm.load(d)) writes the same codes and the same quantization JSON (it used
    to fail: the loader's report is a dict, and the int engine has no fake-quant layers)."""
    import json

    from safetensors.torch import load_file

    import edadm
    from edadm.deploy.layout import QUANT_FILE, quant_subdir

    out = tmp_path / "again"
    edadm.save(edadm.load(tiny_quant_dir, engine=engine), out)
    sub = quant_subdir(tiny_quant_dir)
    a = load_file(str(next((tiny_quant_dir / sub).glob("*.safetensors"))))
    b = load_file(str(next((out / sub).glob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ja, jb = (json.loads((d / sub / QUANT_FILE).read_text()) for d in (tiny_quant_dir, out))
    assert ja == jb


def test_saved_files_have_the_usual_modes(tiny_quant_dir):
    """Every file of a saved model is readable like any new file (0666 less the umask):
    safetensors writes its file 0600, which a copied model directory must not keep."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in tiny_quant_dir.rglob("*") if p.is_file()]
    assert any(p.name == TENSOR_FILE for p in files)
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
