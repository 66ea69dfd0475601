import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edadm.calib import Trajectories, assemble, fix_rounding, uniform_counts


@settings(max_examples=50, deadline=None)
@given(steps=st.integers(1, 200), n=st.integers(1, 2000), used=st.integers(1, 50))
def test_uniform_counts_sum_and_spacing(steps, n, used):
    c = uniform_counts(steps, n, num_used=used)
    assert c.shape == (steps,)
    assert int(c.sum()) == n
    nz = c[c > 0]
    assert nz.max() - nz.min() <= 1  # the same number of samples at each used step
    assert c[0] > 0  # x_T is among the used steps


@settings(max_examples=50, deadline=None)
@given(w=st.lists(st.floats(0, 10), min_size=1, max_size=100), n=st.integers(0, 5000))
def test_fix_rounding_sums_exactly(w, n):
    c = fix_rounding(torch.tensor(w), n)
    assert int(c.sum()) == n and (c >= 0).all()


def test_fix_rounding_is_proportional():
    c = fix_rounding(torch.tensor([1.0, 2.0, 1.0]), 100)
    assert c.tolist() == [25, 50, 25]


def _traj(steps=10, b=64):
    xs = torch.arange(steps * b, dtype=torch.float32).reshape(steps, b, 1, 1, 1).expand(steps, b, 1, 2, 2).clone()
    return Trajectories(xs=xs, ts=torch.arange(steps).flip(0) * 100)


def test_assemble_uses_distinct_trajectories_and_counts():
    traj = _traj()
    counts = uniform_counts(10, 40, num_used=5)
    cs = assemble(traj, counts, seed=3)
    assert len(cs) == 40
    assert len(set(cs.trajectory.tolist())) == 40  # every sample from a different trajectory
    assert torch.bincount(cs.step, minlength=10).tolist() == counts.tolist()
    # the samples are really x[step, trajectory] and t[step]
    for k in range(40):
        s, b = int(cs.step[k]), int(cs.trajectory[k])
        assert torch.equal(cs.x[k], traj.xs[s, b]) and cs.t[k] == traj.ts[s]


def test_assemble_gives_the_latest_steps_to_the_stored_trajectories():
    """4 of 40 trajectories stored whole, the rest sampled on demand (only up to their step):
    the stored ones serve the 4 latest-step samples, every sample still from its own
    trajectory and equal to that trajectory's state at its step."""
    steps, total, stored = 10, 40, 4
    full = torch.arange(steps * total, dtype=torch.float32).reshape(steps, total, 1, 1, 1)
    asked = []

    def sampler(trajs, at):
        asked.extend(zip(trajs.tolist(), at.tolist()))
        return full[at, trajs]

    traj = Trajectories(xs=full[:, :stored].clone(), ts=torch.arange(steps).flip(0) * 100, total=total,
                        sampler=sampler)
    counts = torch.tensor([4] * steps)
    cs = assemble(traj, counts, seed=3)
    assert sorted(cs.trajectory.tolist()) == list(range(total))
    on_stored = cs.step[cs.trajectory < stored]
    assert on_stored.min() >= cs.step[cs.trajectory >= stored].max()  # the latest steps
    assert all(t >= stored for t, _ in asked) and len(asked) == total - stored
    for k in range(total):
        assert float(cs.x[k]) == float(full[int(cs.step[k]), int(cs.trajectory[k])])
    assert torch.equal(assemble(traj, counts, seed=3).trajectory, cs.trajectory)


def test_assemble_is_seeded():
    traj = _traj()
    counts = uniform_counts(10, 40, num_used=5)
    assert torch.equal(assemble(traj, counts, seed=1).step, assemble(traj, counts, seed=1).step)
    assert not torch.equal(assemble(traj, counts, seed=1).step, assemble(traj, counts, seed=2).step)


def test_assemble_rejects_wrong_length():
    from edadm.errors import EdadmError

    with pytest.raises(EdadmError):
        assemble(_traj(), torch.ones(3, dtype=torch.long))


def test_assemble_with_fewer_trajectories_keeps_each_step_distinct():
    """Q-Diffusion's set: every one of 16 trajectories at each of 5 steps (80 samples)."""
    traj = _traj(steps=10, b=16)
    counts = uniform_counts(10, 80, num_used=5)
    cs = assemble(traj, counts, seed=0)
    assert len(cs) == 80 and torch.bincount(cs.step, minlength=10).tolist() == counts.tolist()
    for s in cs.step.unique():
        trajs = cs.trajectory[cs.step == s].tolist()
        assert sorted(trajs) == list(range(16))  # all trajectories, none twice
    for k in range(80):
        assert torch.equal(cs.x[k], traj.xs[int(cs.step[k]), int(cs.trajectory[k])])


def test_strategies_come_from_one_registry():
    """Config validation, CLI choices and api.allocate all read calib.strategies."""
    from edadm.calib import strategies
    from edadm.cli import build_parser
    from edadm.config import CALIB_STRATEGIES
    from edadm.errors import EdadmError

    assert set(CALIB_STRATEGIES) == {"tdac", "uniform", "ptq4dm", "random"} == set(strategies.names())
    q = next(a for a in build_parser()._subparsers._group_actions[0].choices["quantize"]._actions
             if "--strategy" in a.option_strings)
    assert q.metavar == "{" + ",".join(CALIB_STRATEGIES) + "}" and q.type("tdac") == "tdac"
    with pytest.raises(Exception, match="unknown strategy 'best'"):
        q.type("best")
    assert strategies.get("tdac").needs_features and not strategies.get("uniform").needs_features
    with pytest.raises(EdadmError, match="unknown calibration strategy"):
        strategies.get("nope")


@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_input_rows_line_up_with_the_denoiser_batches(guidance):
    """input_rows lays per-sample values out as model_inputs' rows (CFG doubles each batch)."""
    from edadm.calib import CalibrationSet

    n = 7
    cs = CalibrationSet(x=torch.randn(n, 1, 2, 2), t=torch.arange(n) * 10, step=torch.arange(n),
                        trajectory=torch.arange(n), counts=torch.ones(n, dtype=torch.long),
                        cond={"class_labels": torch.arange(n)}, uncond={"class_labels": torch.full((n,), 10)},
                        guidance_scale=guidance)
    t_rows = torch.cat([args[1] for args, _ in cs.model_inputs(3, "cpu")])
    assert torch.equal(cs.input_rows(cs.t, 3), t_rows)
    assert len(t_rows) == (2 * n if guidance != 1.0 else n)
    assert torch.equal(cs.input_rows(cs.step, 3), t_rows // 10)


def test_each_strategy_declares_its_own_options():
    """The tdac_* and ptq4dm_* calibration fields are registered with their strategy (the CLI
    groups them under it); setting one for another strategy is a warning, not silence."""
    import logging
    from dataclasses import fields

    from edadm import QuantConfig
    from edadm.calib import strategies
    from edadm.config import CalibConfig
    from edadm.recipes import resolve

    names = {f.name for f in fields(CalibConfig)}
    for s in strategies.names():
        assert set(strategies.get(s).options) <= names
    for f in names:
        prefix = f.split("_")[0]
        if prefix in ("tdac", "ptq4dm"):  # uniform_steps is shared: TDAC's uniform share uses it too
            assert strategies.owner_of(f) == prefix, f

    class Seen(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    seen = Seen()
    logging.getLogger("edadm").addHandler(seen)
    try:
        resolve(QuantConfig(method="qdiffusion", calib={"tdac_lambda": 2.0}))
        resolve(QuantConfig(method="eda-dm", calib={"tdac_lambda": 2.0}))
    finally:
        logging.getLogger("edadm").removeHandler(seen)
    assert seen.lines == ["tdac-lambda is set but the calibration strategy is uniform: it only applies to tdac"]
