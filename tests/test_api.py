"""edadm.api: trajectories collected once serve several quantizations."""
import pytest
import torch

from edadm import CalibConfig, EdadmError, QuantConfig, load, quantize
from edadm.api import calibration_trajectories


def _cfg(w):
    return QuantConfig(method="naive", weight_bits=w, act_bits=8,
                       calib=CalibConfig(num_samples=8, num_trajectories=8, uniform_steps=4, batch_size=8))


def test_given_trajectories_give_the_same_quantization(tiny_pipe_dir):
    fp = load(tiny_pipe_dir, device="cpu")
    traj = calibration_trajectories(fp, _cfg(8), progress=False)
    a = quantize(load(tiny_pipe_dir, device="cpu"), _cfg(4), progress=False)
    b = quantize(load(tiny_pipe_dir, device="cpu"), _cfg(4), progress=False, trajectories=traj)
    ra, rb = a.report, b.report
    assert ra.counts == rb.counts and ra.timesteps == rb.timesteps
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_trajectories_that_do_not_match_the_config_are_refused(tiny_pipe_dir):
    fp = load(tiny_pipe_dir, device="cpu")
    traj = calibration_trajectories(fp, _cfg(8), progress=False)
    cfg = _cfg(4)
    cfg.calib.num_samples = cfg.calib.num_trajectories = 16
    with pytest.raises(EdadmError, match="do not match"):
        quantize(load(tiny_pipe_dir, device="cpu"), cfg, progress=False, trajectories=traj)


def test_quantize_to_dir_saves_what_quantize_gives_and_refuses_a_quantized_source(tiny_pipe_dir, tmp_path):
    from edadm.api import quantize_to_dir

    out = tmp_path / "q"
    q = quantize_to_dir(tiny_pipe_dir, _cfg(8), out, device="cpu", progress=False)
    ref = quantize(load(tiny_pipe_dir, device="cpu"), _cfg(8), progress=False)
    sq, sr = q.unet.state_dict(), ref.unet.state_dict()  # the same seed: the same quantization
    assert sq.keys() == sr.keys() and all(torch.equal(sq[k], sr[k]) for k in sr)
    assert load(out, device="cpu").report.counts == ref.report.counts
    assert not any(p.name.endswith(".ckpt") for p in tmp_path.iterdir())  # the checkpoint is removed once saved
    with pytest.raises(EdadmError, match="already quantized"):
        quantize_to_dir(out, _cfg(8), tmp_path / "again", device="cpu", progress=False)


def test_two_stage_without_learned_rounding_runs_only_the_activation_stage(tiny_pipe_dir):
    """A two-stage recipe with learn_rounding=False: the weight stage has nothing to learn, so
    it is skipped (no input capture per unit), and every logged unit is the activation stage's."""
    from edadm.config import ReconConfig

    cfg = QuantConfig(method="qdiffusion", weight_bits=8, act_bits=8,
                      calib=CalibConfig(num_samples=8, num_trajectories=8, uniform_steps=4, batch_size=8),
                      recon=ReconConfig(learn_rounding=False, iters=2, act_iters=2, batch_size=8))
    q = quantize(load(tiny_pipe_dir, device="cpu"), cfg, progress=False)
    assert q.report.recon and {u["stage"] for u in q.report.recon} == {"acts"}
    assert "reconstruction_weights" in q.report.seconds
