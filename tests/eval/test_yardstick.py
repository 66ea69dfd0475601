import numpy as np
import pytest
import torch

from edadm.eval.yardstick import Features, Reference, class_tv, kid, measure, pair_metrics, precision_recall


def _gauss(n, d=8, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(shift, 1.0, (n, d))


def test_kid_is_unbiased_near_zero_for_the_same_distribution_and_grows_with_a_shift():
    ref = Reference.of(_gauss(600, seed=1))
    same = [kid(_gauss(300, seed=s), ref) for s in range(2, 12)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-3  # unbiased: mean ~ 0
    assert kid(_gauss(300, shift=0.5, seed=3), ref) > 10 * max(abs(v) for v in same)


def test_kid_matches_the_direct_formula():
    x, y = _gauss(5, 3, seed=0), _gauss(7, 3, seed=1)
    ref = Reference.of(y)
    assert ref.kid_scale == pytest.approx(np.sqrt(np.mean(y ** 2)))  # features brought to order 1 ...
    x, y = x / ref.kid_scale, y / ref.kid_scale  # ... by one constant, the real features' RMS
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / 35
    assert kid(x * ref.kid_scale, ref) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)


def test_precision_recall_see_a_dropped_mode_as_lost_recall_not_lost_precision():
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(0, 0.3, (300, 2)), rng.normal(5, 0.3, (300, 2))])
    ref = Reference.of(real)
    one_mode = rng.normal(0, 0.3, (300, 2))
    p, r = precision_recall(one_mode, ref)
    assert p > 0.9 and r < 0.6
    off = rng.normal(10, 0.3, (300, 2))
    assert precision_recall(off, ref)[0] < 0.05


def test_class_tv_counts_moved_probability_mass():
    ref = Reference.of(_gauss(20), labels=np.repeat(np.arange(2), 10), num_classes=2)
    assert class_tv(np.array([0, 1] * 5), ref) == pytest.approx(0.0)
    assert class_tv(np.array([0] * 8 + [1] * 2), ref) == pytest.approx(0.3)


def test_pair_metrics_of_identical_sets_and_of_one_flipped_image():
    f = _gauss(10)
    imgs = torch.rand(10, 1, 4, 4)
    a = Features(f, np.arange(10) % 3, imgs)
    same = pair_metrics(a, a)
    assert same["psnr"] == float("inf") and same["class_flip"] == 0 and same["feat_dist"] == 0
    pred = a.pred.copy()
    pred[0] = 2 if pred[0] != 2 else 0
    assert pair_metrics(Features(f, pred, imgs), a)["class_flip"] == pytest.approx(0.1)


def test_measure_gives_paired_intervals_that_contain_zero_for_a_copy_and_exclude_it_for_a_shift():
    ref = Reference.of(_gauss(400, seed=1), labels=np.arange(400) % 4, num_classes=4)
    fp = Features(_gauss(300, seed=2), np.arange(300) % 4)
    copy_ = measure(Features(fp.feats + 1e-3 * _gauss(300, seed=3), fp.pred), ref, fp, reps=60)
    for k in ("fid", "kid_x1e3", "precision"):
        lo, hi = copy_["delta"][k]["ci"]
        assert lo <= 0 <= hi or abs(copy_["delta"][k]["value"]) < 1e-2
    shifted = measure(Features(fp.feats + 0.7, fp.pred), ref, fp, reps=60)
    assert shifted["delta"]["fid"]["ci"][0] > 0 and shifted["delta"]["kid_x1e3"]["ci"][0] > 0
    assert shifted["set"]["fid"]["se"] > 0 and "recall" in shifted["set"]
    with pytest.raises(ValueError, match="differ in size"):
        measure(Features(fp.feats[:10]), ref, fp, reps=2)


def test_kid_of_a_bootstrap_resample_is_unbiased_for_the_full_set():
    ref = Reference.of(_gauss(300, d=4, seed=1))
    full = Features(_gauss(200, d=4, shift=0.3, seed=2))
    rng = np.random.default_rng(0)
    draws = [full.take(rng.integers(0, 200, 200)) for _ in range(300)]
    fair = np.mean([kid(d.feats, ref, d.src) for d in draws])
    naive = np.mean([kid(d.feats, ref) for d in draws])  # copies of one image counted as a pair
    target = kid(full.feats, ref)
    assert abs(fair - target) < 0.1 * abs(naive - target)
