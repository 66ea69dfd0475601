"""edadm.output_correction: PTQD's per-step correction of the quantized output noise."""
import json
import logging

import pytest
import torch

from edadm import CalibConfig, EdadmError, QuantConfig, load, quantize, save
from edadm.output_correction import (CORRECTION_FILE, OutputCorrection, fit_ptqd, read_correction,
                                     step_statistics)
from edadm.sampling import generate


def test_step_statistics_recover_slope_bias_and_residual_std():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(256, 3, 8, 8, generator=g)
    b = torch.tensor([0.05, -0.02, 0.1]).view(1, 3, 1, 1)
    q = 1.1 * f + b + 0.03 * torch.randn(f.shape, generator=g)
    k, bias, s = step_statistics(q, f)
    assert k == pytest.approx(0.1, abs=2e-3)
    assert bias == pytest.approx([0.05, -0.02, 0.1], abs=2e-3)
    assert s == pytest.approx(0.03, rel=0.02)
    # a shrunk output (negative slope) is left uncorrected, as the reference clips k at 0
    k, bias, _ = step_statistics(0.9 * f, f)
    assert k == 0.0 and bias == pytest.approx([0.0] * 3, abs=1e-2)


def test_apply_inverts_the_modelled_distortion():
    f = torch.randn(4, 2, 5, 5)
    corr = OutputCorrection(steps=1, guidance_scale=1.0, k=[0.25], bias=[[0.1, -0.3]], residual_std=[0.0],
                            samples=4)
    q = 1.25 * f + torch.tensor([0.1, -0.3]).view(1, 2, 1, 1)
    assert torch.allclose(corr.apply(0, q), f, atol=1e-6)
    assert torch.allclose(corr.apply(0, q.double()), f.double(), atol=1e-6)  # its own bias per dtype
    assert "_bias" not in corr.to_dict() and OutputCorrection.from_dict(corr.to_dict()) == corr
    with pytest.raises(EdadmError, match="channels"):
        corr.apply(0, torch.zeros(1, 3, 5, 5))


def test_bad_tables_and_files_give_one_line_errors(tmp_path):
    with pytest.raises(EdadmError, match=">= 0"):
        OutputCorrection(steps=1, guidance_scale=1.0, k=[-0.1], bias=[[0.0]], residual_std=[0.0], samples=2)
    with pytest.raises(EdadmError, match="one each per sampler step"):
        OutputCorrection(steps=2, guidance_scale=1.0, k=[0.0, 0.0], bias=[[0.0]], residual_std=[0.0], samples=2)
    with pytest.raises(EdadmError, match="same number of channels"):
        OutputCorrection(steps=2, guidance_scale=1.0, k=[0.0, 0.0], bias=[[0.0], [0.0, 1.0]], residual_std=[0.0, 0.0],
                         samples=2)
    (tmp_path / CORRECTION_FILE).write_text("{not json")
    with pytest.raises(EdadmError, match="cannot read"):
        read_correction(tmp_path)
    (tmp_path / CORRECTION_FILE).write_text(json.dumps({"steps": 1}))
    with pytest.raises(EdadmError, match="bad output correction"):
        read_correction(tmp_path)
    assert read_correction(tmp_path / "nothing") is None


def test_noise_factor_absorbs_the_residual_variance_of_ddim_steps(tiny_pipe_dir):
    import math

    sched = load(tiny_pipe_dir, device="cpu").scheduler
    sched.set_timesteps(4)
    t = sched.timesteps[1]
    prev = int(t) - sched.config.num_train_timesteps // 4
    var = float(sched._get_variance(t, prev))  # diffusers' own DDIM variance
    corr = OutputCorrection(steps=4, guidance_scale=1.0, k=[0.0] * 4, bias=[[0.0]] * 4,
                            residual_std=[0.0, 0.05, 0.0, 0.0], samples=2)
    assert corr.noise_factor(sched, 1, t, 0.0) == 1.0  # eta 0: nothing to absorb
    a_t, a_p = float(sched.alphas_cumprod[int(t)]), float(sched.alphas_cumprod[prev])
    c = math.sqrt(1 - a_p - var) - math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t)
    want = math.sqrt((var - (c * 0.05) ** 2) / var)
    assert corr.noise_factor(sched, 1, t, 1.0) == pytest.approx(want, rel=1e-6) and want < 1
    corr.residual_std[1] = 100.0  # more residual than the sampler's own noise: no noise left
    assert corr.noise_factor(sched, 1, t, 1.0) == 0.0


def _distorted(pipe, k: float, b: float):
    """The pipeline's UNet with its output replaced by (1 + k) eps + b (a known 'quantization error')."""
    def hook(mod, args, out):
        out.sample = (1 + k) * out.sample + b
        return out

    pipe.unet.register_forward_hook(hook)
    return pipe


def test_a_fitted_correction_undoes_a_systematic_output_error(tiny_pipe_dir):
    fp = load(tiny_pipe_dir, device="cpu")
    bad = _distorted(load(tiny_pipe_dir, device="cpu"), 0.2, 0.05)
    corr = fit_ptqd(fp, bad, num=8, batch_size=4, progress=False)
    assert corr.steps == 4 and len(corr.k) == 4 and corr.samples == 8
    assert corr.k == pytest.approx([0.2] * 4, abs=1e-4)
    assert [row[0] for row in corr.bias] == pytest.approx([0.05] * 4, abs=1e-4)
    assert max(corr.residual_std) < 1e-4
    want = generate(fp, 4, seed=3, progress=False)
    raw = generate(bad, 4, seed=3, progress=False)
    bad.correction = corr
    fixed = generate(bad, 4, seed=3, progress=False)
    assert (raw - want).abs().max() > 0.05
    assert (fixed - want).abs().max() < 1e-3
    assert torch.equal(generate(bad, 4, seed=3, progress=False, correct=False), raw)


def test_quantize_with_ptqd_saves_the_table_and_loads_it_back(tiny_pipe_dir, tmp_path, caplog):
    from edadm.cli import main

    cfg = QuantConfig(method="naive", weight_bits=4, act_bits=8, output_correction="ptqd", correction_samples=8,
                      calib=CalibConfig(num_samples=8, num_trajectories=8, uniform_steps=4, batch_size=8))
    q = quantize(load(tiny_pipe_dir, device="cpu"), cfg, progress=False)
    assert q.correction is not None and len(q.correction.k) == 4 and q.correction.samples == 8
    assert q.report.seconds["output_correction"] > 0
    out = tmp_path / "q"
    save(q, out)
    assert (out / CORRECTION_FILE).is_file()
    assert "Output correction: PTQD" in (out / "README.md").read_text()
    for engine in ("fake", "int"):
        back = load(out, device="cpu", engine=engine)
        assert back.correction == q.correction
    back = load(out, device="cpu", engine="fake")
    corrected = generate(back, 4, seed=1, progress=False)
    raw = generate(back, 4, seed=1, progress=False, correct=False)
    assert not torch.equal(corrected, raw)
    with caplog.at_level(logging.WARNING, logger="edadm"):
        other = generate(back, 4, seed=1, steps=3, progress=False)
    assert "runs without it" in caplog.text
    assert torch.equal(other, generate(back, 4, seed=1, steps=3, progress=False, correct=False))
    # the CLI samples with it by default and without it under --no-correction
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", str(out), "-n", "4", "--seed", "1", "--engine", "fake", "--out", str(a), "--no-progress"]) == 0
    assert main(["sample", str(out), "-n", "4", "--seed", "1", "--engine", "fake", "--out", str(b), "--no-progress",
                 "--no-correction"]) == 0
    assert a.read_bytes() != b.read_bytes()


def test_without_ptqd_nothing_is_fitted_or_saved(tiny_quant_dir):
    assert not (tiny_quant_dir / CORRECTION_FILE).exists()
    assert "Output correction" not in (tiny_quant_dir / "README.md").read_text()
    assert load(tiny_quant_dir, device="cpu").correction is None


def test_stochastic_sampling_shrinks_its_noise_by_the_residual(tiny_pipe_dir):
    fp = load(tiny_pipe_dir, device="cpu")
    plain = generate(fp, 2, seed=0, eta=1.0, progress=False)
    fp.correction = OutputCorrection(steps=4, guidance_scale=1.0, k=[0.0] * 4, bias=[[0.0]] * 4,
                                     residual_std=[0.0] * 4, samples=2)
    assert torch.allclose(generate(fp, 2, seed=0, eta=1.0, progress=False), plain, atol=1e-6)  # the identity
    fp.correction.residual_std = [0.5] * 4
    assert (generate(fp, 2, seed=0, eta=1.0, progress=False) - plain).abs().max() > 1e-3
    assert torch.allclose(generate(fp, 2, seed=0, eta=0.0, progress=False),  # eta 0: no noise to shrink
                          generate(fp, 2, seed=0, eta=0.0, progress=False, correct=False), atol=1e-6)
