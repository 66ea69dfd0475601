import pytest
import torch

from edadm.calib import TdacAccumulator, assemble, auto_radius, strategies, tdac_allocation, uniform_counts
from edadm.calib.trajectories import Trajectories
from edadm.config import QuantConfig


def _feats(vals):
    """One [B=2, C=2, H=1, W=1] feature map per step from (a, b) channel values."""
    return [torch.tensor([[[[a]], [[b]]], [[[a]], [[b]]]], dtype=torch.float64) for a, b in vals]


def test_accumulator_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    acc = TdacAccumulator()
    acc.add([f[:4] for f in feats])  # two batches of trajectories
    acc.add([f[4:] for f in feats])
    for i in range(5):
        for j in range(5):
            direct = ((feats[i] - feats[j]) ** 2).mean()
            assert acc.distances()[i, j] == pytest.approx(float(direct), abs=1e-6)
            cos = torch.nn.functional.cosine_similarity(feats[i], feats[j], dim=1)  # over channels
            assert acc.variety_pairs()[i, j] == pytest.approx(float((1 - cos).sum()), abs=1e-6)


def test_token_features_use_last_dim_as_channels():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 5, 3, generator=g) for _ in range(3)]  # [B, L, C]
    acc = TdacAccumulator()
    acc.add(feats)
    cos = torch.nn.functional.cosine_similarity(feats[0], feats[2], dim=-1)
    assert acc.variety_pairs()[0, 2] == pytest.approx(float((1 - cos).sum()), abs=1e-6)


def test_density_and_variety_ranking_on_hand_made_features():
    # steps 0,1,2 form a tight cluster; step 3 is far away and points in another direction
    acc = TdacAccumulator()
    acc.add(_feats([(1.0, 0.0), (1.05, 0.0), (0.95, 0.0), (0.0, 5.0)]))
    res = tdac_allocation(acc.distances(), acc.variety_pairs(), num_samples=100, lam=1.0, radius=0.1)
    assert res.density.tolist() == [2, 2, 2, 0]  # within r of each other, the outlier alone
    assert res.variety.argmax() == 3  # orthogonal to every other step: most diverse
    assert int(res.counts.sum()) == 100
    # lambda = 0: density only -> the isolated step gets nothing
    dens_only = tdac_allocation(acc.distances(), acc.variety_pairs(), 100, lam=0.0, radius=0.1)
    assert dens_only.counts[3] == 0 and int(dens_only.counts.sum()) == 100
    assert dens_only.counts[:3].tolist() == [34, 33, 33]


@pytest.mark.parametrize("n", [1, 7, 100, 1023])
def test_counts_sum_exactly(n):
    g = torch.Generator().manual_seed(n)
    acc = TdacAccumulator()
    acc.add([torch.randn(3, 4, 2, 2, generator=g) for _ in range(13)])
    res = tdac_allocation(acc.distances(), acc.variety_pairs(), n, lam=1.2)
    assert int(res.counts.sum()) == n and (res.counts >= 0).all()


def test_all_equal_features_fall_back_to_uniform():
    acc = TdacAccumulator()
    acc.add(_feats([(1.0, 2.0)] * 10))
    res = tdac_allocation(acc.distances(), acc.variety_pairs(), 50, lam=1.2)
    assert res.counts.tolist() == [5] * 10
    assert torch.isfinite(res.weights).all()


def test_auto_radius_is_scale_free():
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 4, 2, 2, generator=g) * (1 + i) for i in range(8)]
    a, b = TdacAccumulator(), TdacAccumulator()
    a.add(feats)
    b.add([f * 1000 for f in feats])
    ra, rb = a.distances(), b.distances()
    assert auto_radius(rb) == pytest.approx(auto_radius(ra) * 1e6, rel=1e-6)
    ca = tdac_allocation(ra, a.variety_pairs(), 64).counts
    cb = tdac_allocation(rb, b.variety_pairs(), 64).counts
    assert torch.equal(ca, cb)  # scaling the features does not change the allocation
    # the quantile means: that fraction of off-diagonal pairs lies within the radius
    r = auto_radius(ra, 0.25)
    off = ~torch.eye(8, dtype=torch.bool)
    assert float((ra[off] <= r).float().mean()) == pytest.approx(0.25, abs=0.05)


def test_tdac_set_uses_distinct_trajectories():
    acc = TdacAccumulator()
    g = torch.Generator().manual_seed(4)
    acc.add([torch.randn(2, 4, 2, 2, generator=g) for _ in range(20)])
    res = tdac_allocation(acc.distances(), acc.variety_pairs(), 64)
    traj = Trajectories(xs=torch.randn(20, 64, 1, 2, 2, generator=g), ts=torch.arange(20).flip(0))
    cs = assemble(traj, res.counts, seed=0)
    assert len(set(cs.trajectory.tolist())) == 64
    assert torch.bincount(cs.step, minlength=20).tolist() == res.counts.tolist()


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_uniform_share_is_a_floor_under_tdac(share):
    """calib.tdac_uniform_share: that share of N sits on the evenly spaced steps, the rest is
    TDAC's allocation of the remaining samples; 0 is the reference allocation itself."""
    acc = TdacAccumulator()
    g = torch.Generator().manual_seed(5)
    acc.add([torch.randn(2, 4, 2, 2, generator=g) * (1 + s) for s in range(20)])
    traj = Trajectories(xs=torch.zeros(20, 1, 1, 1, 1), ts=torch.arange(20).flip(0), features=acc)
    cfg = QuantConfig()
    cfg.calib.strategy, cfg.calib.num_samples, cfg.calib.uniform_steps = "tdac", 100, 5
    cfg.calib.tdac_lambda, cfg.calib.tdac_uniform_share = 1.2, share
    counts, details = strategies.get("tdac").allocate(traj, cfg, 1000)
    n_u = round(100 * share)
    expect = tdac_allocation(acc.distances(), acc.variety_pairs(), 100 - n_u).counts + uniform_counts(20, n_u, num_used=5)
    assert counts.tolist() == expect.tolist() and int(counts.sum()) == 100
    assert details["uniform_share"] == share
    if share == 1.0:
        assert counts.tolist() == uniform_counts(20, 100, num_used=5).tolist()
