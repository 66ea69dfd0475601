import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edadm.quant.primitives import (candidate_errors, choose_qparams, dequantize, fake_quantize, qrange, quantize,
                                    search_act_range, search_weight_range)

bits_st = st.integers(min_value=2, max_value=8)


def _tensor(seed, shape, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), seed=st.integers(0, 10_000), spread=st.floats(1e-3, 1e3))
def test_fake_quant_is_idempotent(bits, symmetric, seed, spread):
    x = _tensor(seed, (64,), spread)
    s, z = choose_qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    once = fake_quantize(x, s, z, qmin, qmax)
    twice = fake_quantize(once, s, z, qmin, qmax)
    assert torch.allclose(once, twice, rtol=0, atol=float(s) * 1e-4)


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), seed=st.integers(0, 10_000), spread=st.floats(1e-3, 1e3))
def test_error_at_most_half_step_inside_range(bits, symmetric, seed, spread):
    x = _tensor(seed, (256,), spread)
    s, z = choose_qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = dequantize(torch.tensor(float(qmin)), s, z), dequantize(torch.tensor(float(qmax)), s, z)
    inside = (x >= lo) & (x <= hi)
    err = (fake_quantize(x, s, z, qmin, qmax) - x).abs()
    assert inside.any()
    assert (err[inside] <= s / 2 * (1 + 1e-4) + 1e-6).all()


@settings(max_examples=30, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), seed=st.integers(0, 10_000))
def test_codes_in_range_and_zero_exact(bits, symmetric, seed):
    x = torch.cat([_tensor(seed, (100,)), torch.zeros(1)])
    s, z = choose_qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    q = quantize(x, s, z, qmin, qmax)
    assert q.min() >= qmin and q.max() <= qmax
    assert fake_quantize(torch.zeros(1), s, z, qmin, qmax).item() == 0.0


@pytest.mark.parametrize("method", ["mse", "minmax"])
@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (16, 32)])
def test_per_channel_range_shapes(method, shape):
    w = _tensor(0, shape)
    lo, hi = search_weight_range(w, 4, symmetric=False, per_channel=True, method=method)
    assert lo.shape == hi.shape == (shape[0],)
    lo_t, hi_t = search_weight_range(w, 4, symmetric=False, per_channel=False, method=method)
    assert lo_t.shape == hi_t.shape == (1,)
    flat = w.reshape(shape[0], -1)
    assert (lo >= flat.min(1).values - 1e-6).all() and (hi <= flat.max(1).values + 1e-6).all()


def test_mse_search_beats_minmax_on_outliers():
    w = _tensor(1, (4, 512))
    w[:, 0] = 40.0  # one outlier per channel
    qmin, qmax = qrange(4, False)

    def err(lo, hi):
        s, z = choose_qparams(lo, hi, 4, False)
        return ((dequantize(quantize(w, s[:, None], z[:, None], qmin, qmax), s[:, None], z[:, None]) - w).abs() ** 2.4).mean()

    assert err(*search_weight_range(w, 4, False, method="mse")) < err(*search_weight_range(w, 4, False, method="minmax"))


def _reference_weight_search(w, bits, symmetric, grid=100, min_ratio=0.2, p=2.4):
    """The plain definition: every ratio on the whole weight, unfused quantize/dequantize."""
    flat = w.reshape(w.shape[0], -1)
    xmin, xmax = flat.min(1).values, flat.max(1).values
    qmin, qmax = qrange(bits, symmetric)
    errs, cands = [], []
    for r in torch.linspace(1.0, min_ratio, grid).tolist():
        s, z = choose_qparams(xmin * r, xmax * r, bits, symmetric)
        q = dequantize(quantize(flat, s[:, None], z[:, None], qmin, qmax), s[:, None], z[:, None])
        errs.append(((q - flat).abs() ** p).mean(1))
        cands.append((xmin * r, xmax * r))
    k = torch.stack(errs).argmin(0)  # first minimum, as the strict `<` in the search keeps
    rows = torch.arange(flat.shape[0])
    return torch.stack([c[0] for c in cands])[k, rows], torch.stack([c[1] for c in cands])[k, rows]


@pytest.mark.parametrize("bits,symmetric", [(4, True), (8, False)])
@pytest.mark.parametrize("shape", [(1100, 64, 4, 4), (2, 600_000)])  # three row blocks; rows longer than a block
def test_blocked_fused_weight_search_matches_the_plain_definition(bits, symmetric, shape):
    w = _tensor(3, shape) * torch.linspace(0.01, 2.0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    w.reshape(shape[0], -1)[:, 0] += 5.0  # an outlier per channel, so clipping matters
    lo, hi = search_weight_range(w, bits, symmetric)
    rlo, rhi = _reference_weight_search(w, bits, symmetric)
    assert torch.equal(lo, rlo) and torch.equal(hi, rhi)


def test_act_range_search_clips_a_heavy_tail():
    x = torch.cat([_tensor(2, (20000,)).abs(), torch.tensor([100.0])])
    lo, hi = search_act_range(x, float(x.min()), float(x.max()), bits=4, symmetric=False)
    assert hi < 100.0
    assert search_act_range(x, float(x.min()), float(x.max()), 4, False, method="minmax") == (float(x.min()), 100.0)


def test_bits_out_of_range():
    with pytest.raises(ValueError):
        qrange(1, True)
    with pytest.raises(ValueError):
        qrange(9, False)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (4, False), (3, True)])
def test_fused_inference_path_matches_reference_arithmetic(per_channel, bits, symmetric):
    from edadm.quant.quantizer import UniformQuantizer

    x = _tensor(5, (6, 7, 3, 3), 2.0)
    q = UniformQuantizer(bits, symmetric, per_channel=per_channel, channels=6)
    if per_channel:
        q.init_from_weight(x, method="mse")
    else:
        q.set_range(float(x.min()) * 0.7, float(x.max()) * 0.7)
    with torch.no_grad():
        fused = q(x)
    ref = fake_quantize(x, q._view(q.scale.detach(), x), q._view(q.zero_point, x), q.qmin, q.qmax)
    assert torch.equal(fused, ref)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits,symmetric", [(8, False), (4, True)])
def test_learned_step_size_path_has_the_straight_through_gradients(per_channel, bits, symmetric):
    """Reconstruction's learned-step fake-quant (learned_step_fake_quantize): the forward
    values and the gradients to x and to the step size are fake_quantize's (STE, LSQ without
    gradient scaling); the clamp edges are in the data (a range at 0.7 of the extremes)."""
    from edadm.quant.quantizer import UniformQuantizer

    x = _tensor(7, (6, 7, 3, 3), 2.0)
    q = UniformQuantizer(bits, symmetric, per_channel=per_channel, channels=6)
    q.set_range(x.amin(dim=(1, 2, 3)) * 0.7 if per_channel else float(x.min()) * 0.7,
                x.amax(dim=(1, 2, 3)) * 0.7 if per_channel else float(x.max()) * 0.7)
    q.scale.requires_grad_(True)
    gy = _tensor(8, x.shape)
    xa = x.clone().requires_grad_(True)
    ya = q(xa)
    (ya * gy).sum().backward()
    ga_x, ga_s = xa.grad.clone(), q.scale.grad.clone()
    q.scale.grad = None
    xb = x.clone().requires_grad_(True)
    yb = fake_quantize(xb, q._view(q.scale, xb), q._view(q.zero_point, xb), q.qmin, q.qmax)
    (yb * gy).sum().backward()
    assert torch.equal(ya.detach(), yb.detach())
    assert torch.equal(ga_x == 0, xb.grad == 0)  # the same elements clamped
    assert torch.allclose(ga_x, xb.grad, rtol=1e-6, atol=0)  # STE: gy * (1/s) * s in float
    assert torch.allclose(ga_s, q.scale.grad, rtol=1e-4, atol=1e-6)  # sums in another order


def _reference_act_search(x, xmin, xmax, bits, symmetric, grid=20, min_ratio=0.1, p=2.4):
    """The plain definition of the free 2-D search: every (lower, upper) shrink pair,
    unfused quantize / dequantize, mean |error|^p, the first minimum."""
    qmin, qmax = qrange(bits, symmetric)
    ratios = torch.linspace(1.0, min_ratio, grid)
    best, arg = float("inf"), None
    for a in ratios.tolist():
        for b in ratios.tolist():
            lo, hi = torch.tensor([xmin * a]), torch.tensor([xmax * b])
            s, z = choose_qparams(lo, hi, bits, symmetric)
            e = float(((dequantize(quantize(x, s, z, qmin, qmax), s, z) - x).abs() ** p).mean())
            if e < best:
                best, arg = e, (float(lo), float(hi))
    return arg


@pytest.mark.parametrize("bits", [8, 4])
def test_fused_act_range_search_matches_the_plain_definition(bits):
    x = torch.cat([_tensor(9, (30000,)) * 0.5 + 0.2, torch.tensor([-3.0, 9.0])])
    got = search_act_range(x, float(x.min()), float(x.max()), bits, False)
    ref = _reference_act_search(x, float(x.min()), float(x.max()), bits, False)
    assert got == pytest.approx(ref, rel=1e-6)


def test_symmetric_act_range_kind_is_the_references():
    """kind "symmetric": [-a, a] for a signed input, [0, a] for a non-negative one, a searched
    in 1-D; the codes stay unsigned (zero point mid-range or 0)."""
    g = torch.Generator().manual_seed(0)
    signed = torch.cat([torch.randn(20000, generator=g) * 0.5 + 0.3, torch.tensor([-1.0, 4.0])])
    lo, hi = search_act_range(signed, float(signed.min()), float(signed.max()), 8, False, kind="symmetric")
    assert lo == pytest.approx(-hi) and 0 < hi <= 4.0
    assert search_act_range(signed, -1.0, 4.0, 8, False, method="minmax", kind="symmetric") == (-4.0, 4.0)
    pos = signed.abs()
    lo, hi = search_act_range(pos, float(pos.min()), float(pos.max()), 8, False, kind="symmetric")
    assert lo == 0.0 and 0 < hi <= 4.0
    free = search_act_range(signed, float(signed.min()), float(signed.max()), 8, False, kind="free")
    assert free[0] != pytest.approx(-free[1])  # the free search does not tie the bounds
    with pytest.raises(ValueError, match="range kind"):
        search_act_range(signed, -1.0, 4.0, 8, False, kind="odd")


@pytest.mark.parametrize("bits,symmetric", [(8, False), (4, False), (8, True)])
def test_candidate_errors_are_the_float64_sum_of_the_fused_kernels_codes(bits, symmetric):
    """The range search's error of every candidate: the codes of PyTorch's fused fake-quant,
    the |error|^p summed to within 1e-5 of the float64 sum, across block boundaries."""
    qmin, qmax = qrange(bits, symmetric)
    x = torch.cat([_tensor(3, (70001,)) * 0.7 - 0.1, torch.tensor([-4.0, 6.0])]).reshape(1, -1)
    ratios = torch.linspace(1.0, 0.1, 37)
    s, z = choose_qparams(-4.0 * ratios, 6.0 * ratios, bits, symmetric)
    got = candidate_errors(x, s, z.round(), qmin, qmax, 2.4)
    q = torch.fake_quantize_per_channel_affine(x.expand(37, -1), s, z.round().int(), 0, qmin, qmax)
    ref = (q.double() - x.double()).abs().pow(2.4).sum(dim=1)
    assert got.shape == (37,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("bits,symmetric", [(8, False), (4, True)])
def test_learned_step_fake_quant_with_qdrop_is_lerp_of_the_autograd_definition(bits, symmetric):
    """QDrop fused into the learned-step node: values and gradients (x, step size) are those of
    torch.lerp(fake_quantize(x), x, keep) through autograd."""
    from edadm.quant.primitives import keep_mask, learned_step_fake_quantize

    qmin, qmax = qrange(bits, symmetric)
    x = _tensor(11, (4, 5, 6, 6), 2.0)
    s0, z = choose_qparams(torch.tensor([float(x.min()) * 0.6]), torch.tensor([float(x.max()) * 0.6]), bits, symmetric)
    keep = keep_mask(x, 0.5, torch.Generator().manual_seed(3))
    gy = _tensor(12, x.shape)
    xa, sa = x.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    ya = learned_step_fake_quantize(xa, sa, z, qmin, qmax, keep)
    (ya * gy).sum().backward()
    xb, sb = x.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    yb = torch.lerp(fake_quantize(xb, sb, z, qmin, qmax), xb, keep)
    (yb * gy).sum().backward()
    assert torch.equal(ya.detach(), yb.detach())
    assert torch.equal(ya.detach()[keep == 1], x[keep == 1])  # kept elements stay float
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-6, atol=0)
    assert torch.allclose(sa.grad, sb.grad, rtol=1e-4, atol=1e-6)
    # only the step size may be learned: no gradient asked of x
    sc = s0.clone().requires_grad_(True)
    learned_step_fake_quantize(x, sc, z, qmin, qmax, keep).sum().backward()
    assert sc.grad is not None and sc.grad.shape == s0.shape


def test_learned_step_fake_quant_with_per_channel_zero_points_matches_autograd():
    """Tensor clamp bounds (a zero point per channel) and the one-number fast path give the
    autograd definition's values and gradients alike."""
    from edadm.quant.primitives import keep_mask, learned_step_fake_quantize

    qmin, qmax = qrange(8, False)
    x = _tensor(13, (3, 4, 5, 5), 2.0)
    lo, hi = x.amin(dim=(0, 2, 3)) * 0.5, x.amax(dim=(0, 2, 3)) * 0.5
    s, z = choose_qparams(lo, hi, 8, False)
    s, z = s.reshape(1, 4, 1, 1), z.reshape(1, 4, 1, 1)
    assert len(set(z.flatten().tolist())) > 1
    keep = keep_mask(x, 0.5, torch.Generator().manual_seed(2))
    gy = _tensor(14, x.shape)
    xa, sa = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    (learned_step_fake_quantize(xa, sa, z, qmin, qmax, keep) * gy).sum().backward()
    xb, sb = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    (torch.lerp(fake_quantize(xb, sb, z, qmin, qmax), xb, keep) * gy).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-6, atol=0)
    assert torch.allclose(sa.grad, sb.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("with_keep", [False, True])
def test_fused_learned_step_kernels_equal_the_eager_node(with_keep, monkeypatch):
    """The compiled kernels (primitives.FUSED) give the eager node's values and x-gradient bit
    for bit and its step-size gradient up to summation order, for tensors of any rank (one
    compilation serves all)."""
    from edadm.quant import primitives as P

    def run(fused, shape, seed, make=lambda t: t):
        monkeypatch.setattr(P.FUSED, "enabled", fused)
        x = make(_tensor(seed, shape, 3.0)).requires_grad_(True)
        s = torch.tensor([0.04], requires_grad=True)
        keep = P.keep_mask(x, 0.5, torch.Generator().manual_seed(seed)) if with_keep else None
        y = P.learned_step_fake_quantize(x, s, torch.tensor([5.0]), 0, 255, keep)
        y.backward(_tensor(seed + 1, tuple(y.shape)))
        return y.detach(), x.grad, s.grad

    for shape in [(6, 5), (4, 3, 7, 7), (2, 9, 11)]:
        a, b = run(False, shape, 21), run(True, shape, 21)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.allclose(a[2], b[2], rtol=1e-5, atol=1e-6)
    # a strided input (a split shortcut's channel half) is copied and fused
    a = run(False, (4, 6, 5), 3, lambda t: t[:, :4])
    b = run(True, (4, 6, 5), 3, lambda t: t[:, :4])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.allclose(a[2], b[2], rtol=1e-5, atol=1e-6)
    # inside a dispatch mode (FlopCounterMode, tracing) the node runs eagerly and the kernels
    # stay on for later calls
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        c = run(True, (4, 3, 7, 7), 21)
    assert P.FUSED.enabled and torch.equal(c[0], run(False, (4, 3, 7, 7), 21)[0])


def test_fused_kernels_fall_back_to_eager_when_compilation_fails(monkeypatch, caplog):
    """A compiler failure (no C++ compiler, no Triton) warns once and runs eagerly, with the
    same values."""
    from edadm.quant import primitives as P

    def broken(which, device):
        def fn(*args):
            raise RuntimeError("no compiler here")
        return fn

    x = _tensor(5, (3, 4, 5), 2.0)
    s = torch.tensor([0.05], requires_grad=True)
    monkeypatch.setattr(P.FUSED, "enabled", False)
    ref = P.learned_step_fake_quantize(x, s, torch.tensor([2.0]), 0, 255).detach()
    fresh = P._Fused()
    monkeypatch.setattr(fresh, "get", broken)
    monkeypatch.setattr(P, "FUSED", fresh)
    with caplog.at_level("WARNING", logger="edadm"):
        got = P.learned_step_fake_quantize(x, s, torch.tensor([2.0]), 0, 255)
    got.sum().backward()
    assert torch.equal(got.detach(), ref) and s.grad is not None
    assert not fresh.enabled and "running eagerly" in caplog.text


def test_mask_pool_windows_are_bernoulli_reproducible_and_redrawn():
    """MaskPool: masks shaped and typed like the input, 0 / 1 with mean p, the same sequence
    from the same seed, different windows between calls; the pool grows for a larger mask
    and is redrawn after serving `reuse` times its size."""
    from edadm.quant.primitives import MaskPool

    like = torch.zeros(4, 3, 50, 50)
    a, b = MaskPool("cpu", seed=7), MaskPool("cpu", seed=7)
    ma = [a(like, 0.5) for _ in range(5)]
    mb = [b(like, 0.5) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert all(m.shape == like.shape and m.dtype == like.dtype for m in ma)
    assert set(torch.cat([m.flatten() for m in ma]).unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(ma[0], ma[1])
    assert abs(float(torch.stack(ma).mean()) - 0.5) < 0.01
    assert not torch.equal(MaskPool("cpu", seed=8)(like, 0.5), ma[0])
    p3 = torch.stack([a(like, 0.3) for _ in range(8)])  # a second p has its own pool
    assert abs(float(p3.mean()) - 0.3) < 0.01
    pool = MaskPool("cpu", seed=1, reuse=2)
    small = torch.zeros(100)
    pool(small, 0.5)
    first = pool.pools[(0.5, torch.float32)][0]
    assert first.numel() == 200
    for _ in range(3):        # 400 served in all: 2 x the pool's 200
        pool(small, 0.5)
    assert pool.pools[(0.5, torch.float32)][0] is first
    pool(small, 0.5)          # redrawn before this one
    assert pool.pools[(0.5, torch.float32)][0] is not first
    pool(torch.zeros(1000), 0.5)  # larger than half the pool: grows
    assert pool.pools[(0.5, torch.float32)][0].numel() == 2000


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_keep_mask_is_bernoulli_p_in_the_inputs_dtype(p):
    """QDrop's mask: 0 / 1 in x's dtype and shape, mean p; at p = 0.5 element 8j + k is bit k
    of the j-th random byte (the same stream as drawing the bytes by hand)."""
    from edadm.quant.primitives import keep_mask

    x = torch.zeros(7, 11, 13, dtype=torch.float64)
    m = keep_mask(x, p, torch.Generator().manual_seed(4))
    assert m.shape == x.shape and m.dtype == x.dtype and set(m.unique().tolist()) <= {0.0, 1.0}
    big = keep_mask(torch.zeros(200_000), p, torch.Generator().manual_seed(5))
    assert abs(float(big.mean()) - p) < 0.005
    if p == 0.5:
        g = torch.Generator().manual_seed(4)
        r = torch.randint(0, 256, ((x.numel() + 7) // 8,), dtype=torch.uint8, generator=g)
        bits = torch.stack([(r.long() >> k) & 1 for k in range(8)], dim=1).reshape(-1)[:x.numel()]
        assert torch.equal(m.reshape(-1), bits.to(m.dtype))


def test_every_fake_quant_path_rounds_ties_by_the_one_rule():
    """Exact half-step ties with an odd zero point: round(x / s) + z and round(x / s + z)
    differ there. The learned-step node (reconstruction), the range search's errors and the
    fused inference kernels all give quantize()'s codes."""
    from edadm.quant.primitives import learned_step_fake_quantize

    qmin, qmax = qrange(8, False)
    s, z = torch.tensor([0.5]), torch.tensor([3.0])
    x = (torch.arange(-20, 20, dtype=torch.float32) * 0.5 + 0.25)  # x / s = odd + 0.5: ties
    ref = dequantize(quantize(x, s, z, qmin, qmax), s, z)
    assert not torch.equal(ref, (torch.clamp(torch.round(x / s + z), qmin, qmax) - z) * s)  # the test can fail
    assert torch.equal(learned_step_fake_quantize(x, s, z, qmin, qmax), ref)
    assert torch.equal(torch.fake_quantize_per_tensor_affine(x, 0.5, 3, qmin, qmax), ref)
    err = candidate_errors(x.reshape(1, -1), s, z, qmin, qmax, 2.0)
    assert float(err[0]) == pytest.approx(float((ref - x).pow(2).sum()), rel=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (4, False), (4, True)])
def test_inference_path_is_bit_identical_to_torch_fused_kernels(per_channel, bits, symmetric):
    """UniformQuantizer's no-grad chain against torch.fake_quantize_per_*_affine (which it
    replaced for speed): equal on random values, on exact ties (k + 1/2) * s and beyond the
    clamp edges."""
    from edadm.quant.quantizer import UniformQuantizer

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, 8, 8, generator=g) * 3
    q = UniformQuantizer(bits, symmetric, per_channel=per_channel, channels=6)
    if per_channel:
        q.init_from_weight(x, method="mse")
    else:
        q.set_range(float(x.min()) * 0.6, float(x.max()) * 0.6)
    s = q._view(q.scale.detach(), x)
    ties = (torch.randint(-300, 300, x.shape, generator=g).float() + 0.5) * s
    zp = q.zero_point.round().to(torch.int32)
    for v in (x, ties):
        with torch.no_grad():
            got = q(v)
        if per_channel:
            ref = torch.fake_quantize_per_channel_affine(v, q.scale.detach(), zp, 0, q.qmin, q.qmax)
        else:
            ref = torch.fake_quantize_per_tensor_affine(v, q.scale.detach(), zp, q.qmin, q.qmax)
        assert torch.equal(got, ref)


def test_frozen_scale_with_gradients_is_torch_straight_through_estimator():
    """With gradients on and the step size frozen (a reconstruction stage that learns only
    the rounding), the values and the gradient to x are torch's fused kernel's (1 inside the
    range, 0 outside), and the scale gets none."""
    from edadm.quant.quantizer import UniformQuantizer

    x = (torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_(True)
    q = UniformQuantizer(8, False)
    q.set_range(-1.5, 2.0)
    y = q(x)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.fake_quantize_per_tensor_affine(x2, q.scale.detach(), q.zero_point.round().to(torch.int32),
                                                q.qmin, q.qmax)
    (ref * w).sum().backward()
    assert torch.equal(y, ref) and torch.equal(x.grad, x2.grad)
    assert q.scale.grad is None
