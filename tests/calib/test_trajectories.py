"""Trajectories sampled on demand: each run only up to the step its calibration sample is
taken at (issue 34), with the states of whole trajectories."""
import pytest
import torch

from edadm import CalibConfig, EdadmError, QuantConfig, load, quantize
from edadm.api import allocate, calibration_trajectories
from edadm.calib import assemble, collect_trajectories
from edadm.sampling import states_at


def test_states_at_are_the_states_of_whole_trajectories(tiny_pipe_dir):
    pipe = load(tiny_pipe_dir, device="cpu")
    whole = collect_trajectories(pipe, 6, seed=3, steps=4, batch_size=6, progress=False)
    idx, at = torch.tensor([5, 0, 3, 1, 4]), torch.tensor([2, 0, 3, 1, 3])
    got = states_at(pipe, idx, at, seed=3, steps=4, batch_size=2, progress=False)
    assert torch.allclose(got, whole.xs[at, idx], rtol=1e-4, atol=1e-4)  # other batches: float last bits
    with pytest.raises(EdadmError, match="indices need as many steps"):
        states_at(pipe, idx, at + 1, seed=3, steps=4, progress=False)  # step 4 of 4 does not exist


def _cfg(strategy, **calib):
    return QuantConfig(method="naive", weight_bits=8, act_bits=8, steps=4,
                       calib=CalibConfig(strategy=strategy, num_samples=8, num_trajectories=8, batch_size=8,
                                         uniform_steps=4, **calib))


@pytest.mark.parametrize("strategy,stored", [("uniform", 0), ("ptq4dm", 0), ("tdac", 4)])
def test_calibration_set_from_partly_sampled_trajectories_is_the_whole_ones(tiny_pipe_dir, strategy, stored):
    pipe = load(tiny_pipe_dir, device="cpu")
    cfg = _cfg(strategy, tdac_trajectories=4)
    traj = calibration_trajectories(pipe, cfg, progress=False)
    assert traj.stored == stored and traj.num_trajectories == 8 and traj.num_steps == 4
    whole = collect_trajectories(pipe, 8, seed=cfg.seed + 10_000, steps=4, batch_size=8, progress=False)
    assert torch.equal(traj.ts, whole.ts)
    counts, _ = allocate(traj, cfg, pipe.scheduler.config.num_train_timesteps)
    got, ref = assemble(traj, counts, seed=0), assemble(whole, counts, seed=0, stored=traj.stored)
    assert torch.equal(got.step, ref.step) and torch.equal(got.trajectory, ref.trajectory)
    assert torch.allclose(got.x, ref.x, rtol=1e-4, atol=1e-4)
    if strategy == "tdac":  # the statistics come from the 4 stored trajectories, not all 8
        every = calibration_trajectories(pipe, _cfg("tdac", tdac_trajectories=0), progress=False)
        assert every.stored == 8 and 2 * traj.features.elements == every.features.elements


def test_all_trajectories_are_stored_when_samples_reuse_them(tiny_pipe_dir):
    pipe = load(tiny_pipe_dir, device="cpu")
    cfg = _cfg("uniform")
    cfg.calib.num_samples = 16  # N > B: Q-Diffusion's layout, every trajectory at several steps
    assert calibration_trajectories(pipe, cfg, progress=False).stored == 8
    cfg = _cfg("tdac", tdac_trajectories=0)  # 0: TDAC's statistics over every trajectory, all whole
    assert calibration_trajectories(pipe, cfg, progress=False).stored == 8


def test_trajectories_of_a_pipeline_quantized_since_are_refused(tiny_pipe_dir):
    pipe = load(tiny_pipe_dir, device="cpu")
    traj = calibration_trajectories(pipe, _cfg("uniform"), progress=False)
    quantize(pipe, _cfg("uniform"), progress=False)  # in place: pipe's denoiser is quantized now
    with pytest.raises(EdadmError, match="quantized since"):
        assemble(traj, torch.tensor([2, 2, 2, 2]), seed=1)


def test_on_demand_sampling_counts_as_the_trajectories_stage(tiny_pipe_dir, monkeypatch):
    """The states sampled inside assemble are part of the reported trajectories seconds."""
    import time

    pipe = load(tiny_pipe_dir, device="cpu")
    traj = calibration_trajectories(pipe, _cfg("uniform"), progress=False)
    inner = traj.sampler

    def slow(idx, at):
        time.sleep(0.3)
        return inner(idx, at)

    traj.sampler = slow
    q = quantize(pipe, _cfg("uniform"), progress=False, trajectories=traj)
    assert traj.sampler_seconds >= 0.3
    assert q.report.seconds["trajectories"] >= 0.3
