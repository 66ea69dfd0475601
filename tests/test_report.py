import re

import numpy as np
import pytest
import torch
from PIL import Image

from edadm import cli
from edadm.config import QuantConfig
from edadm.quant.calibrate import init_weight_ranges
from edadm.quant.diagnostics import fp_weights, layer_errors
from edadm.quant.wrap import set_quant_state, wrap_model
from edadm.report import build_report


def test_layer_errors_are_zero_without_quantization_and_grow_with_fewer_bits(make_tiny_unet):
    x, t = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 500, 100, 5])
    by_bits = {}
    for bits in (8, 4):
        unet = make_tiny_unet()
        wrap_model(unet, QuantConfig(method="naive", weight_bits=bits, act_bits=8, attn_bits=None, keep_8bit=[]))
        init_weight_ranges(unet)
        w = fp_weights(unet)
        set_quant_state(unet, weight=False, act=False)
        rows = layer_errors(unet, w, (x, t))
        assert rows and all(r["weight"] == 0 and r["output"] < 1e-10 for r in rows)
        set_quant_state(unet, weight=True, act=False)  # act ranges not calibrated here: weights only
        rows = layer_errors(unet, w, (x, t))
        assert all(np.isfinite([r["weight"], r["output"]]).all() for r in rows)
        by_bits[bits] = np.mean([r["weight"] for r in rows])
        assert rows[0]["name"] in ("conv_in", "time_embedding.linear_1")  # forward order
    assert by_bits[4] > 20 * by_bits[8]  # each bit fewer quadruples the squared error; 4 bits: ~256x


def _pngs_in(html: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


@pytest.mark.slow
def test_report_is_self_contained_with_non_blank_figures(tiny_pipe_dir, tiny_quant_dir):
    import io

    page = build_report(tiny_quant_dir, fp_model=tiny_pipe_dir, num=4, engine="fake")
    text = page.read_text()
    for section in ("Settings", "Metrics", "Calibration samples per sampler step", "Per-layer quantization error",
                    "Full precision vs quantized, same noise", "PSNR vs FP"):
        assert section in text, section
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing loaded from outside the file
    pngs = _pngs_in(text)
    assert len(pngs) == 3  # allocation, layer errors, samples (naive: no loss curves)
    for png in pngs:
        img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 5  # drawn on, not blank
    md = (page.parent / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (page.parent / link).is_file()
    assert "None: no reconstruction" in md


def test_report_command_errors(tmp_path, tiny_pipe_dir, capsys):
    assert cli.main(["report", str(tiny_pipe_dir)]) == 2
    assert "not an edadm quantized directory" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert cli.main(["report", str(tmp_path), "--num", "-1"]) == 2


def test_loss_curves_figure_draws_every_term():
    import io

    from edadm.report import loss_curves_png

    hist = [{"iter": i, "block": 1.0 / (i + 1), "inner": 0.5 / (i + 1), "round": 10.0 * (i > 5)} for i in range(20)]
    recon = [{"name": f"unit{k}", "kind": "block", "before": 1.0, "after": 0.3, "history": hist} for k in range(7)]
    png = loss_curves_png(recon)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert img.std() > 5
    # the three term colours are present (block blue, inner red, round olive)
    for rgb in ((0x44, 0x77, 0xAA), (0xEE, 0x66, 0x77), (0x99, 0x99, 0x33)):
        assert (np.abs(img - np.array(rgb)).sum(-1) < 30).sum() > 20, rgb
    assert loss_curves_png([{"name": "x", "history": []}]) is None
