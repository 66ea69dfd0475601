import pytest
import torch

from edadm.calib import CalibrationSet
from edadm.config import QuantConfig, ReconConfig
from edadm.errors import EdadmError
from edadm.model.structure import forward_order, reconstruction_units
from edadm.quant.calibrate import init_act_ranges, init_weight_ranges
from edadm.quant.modules import QuantMixin
from edadm.quant.wrap import quant_modules, wrap_model
from edadm.recipes import resolve
from edadm.recon.adaround import AdaRoundQuantizer
from edadm.recon.engine import (FPInputs, QInputs, reconstruct, _inner_layers, _nbytes, _Rows, capture_inputs, channel_mse, fbr_loss, full_precision_copy,
                                per_sample_mse, reconstruct_unit, step_balance_weights)


def _calib(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (n,), generator=g)
    return CalibrationSet(x=torch.randn(n, 1, 32, 32, generator=g), t=t, step=torch.zeros(n, dtype=torch.long),
                          trajectory=torch.arange(n), counts=torch.tensor([n]))


def _quantized_tiny(make_tiny_unet, wbits=4, split=True):
    unet = make_tiny_unet()
    cfg = QuantConfig(method="qdiffusion", weight_bits=wbits, act_bits=8, split_shortcut=split)
    wrap_model(unet, cfg)
    calib = _calib()
    init_weight_ranges(unet)
    init_act_ranges(unet, calib, batch_size=16, progress=False)
    return unet, calib


def test_fbr_loss_equals_block_loss_when_add_loss_is_zero():
    g = torch.Generator().manual_seed(0)
    out, tgt = torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 8, 5, 5, generator=g)
    inner = [torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 16, generator=g)]
    inner_t = [torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 16, generator=g)]
    total, block, inner_term = fbr_loss(out, tgt, inner, inner_t, add_loss=0.0)
    assert torch.equal(total, block) and torch.equal(block, channel_mse(out, tgt))
    total8, _, _ = fbr_loss(out, tgt, inner, inner_t, add_loss=0.8)
    expected = channel_mse(out, tgt) + 0.8 * (channel_mse(inner[0], inner_t[0]) + channel_mse(inner[1], inner_t[1]))
    assert torch.allclose(total8, expected)
    assert inner_term > 0


def test_channel_mse_sums_channels_and_averages_the_rest():
    x = torch.ones(2, 3, 4, 4)
    assert channel_mse(x, torch.zeros_like(x)) == pytest.approx(3.0)
    tokens = torch.ones(2, 7, 5)  # [N, L, C]: channels last
    assert channel_mse(tokens, torch.zeros_like(tokens)) == pytest.approx(5.0)


@pytest.mark.parametrize("shape,ch", [((4, 3, 5, 5), 1), ((4, 7, 6), 2), ((4, 6), 1)])
def test_channel_mse_and_its_gradient_are_the_plain_definition(shape, ch):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(shape, generator=g, requires_grad=True), torch.randn(shape, generator=g)
    got = channel_mse(a, b)
    (ga,) = torch.autograd.grad(got, a)
    a2 = a.detach().clone().requires_grad_(True)
    ref = (a2 - b).pow(2).sum(ch).mean()
    ref.backward()
    assert torch.allclose(got, ref, rtol=1e-5) and torch.allclose(ga, a2.grad, rtol=1e-5, atol=1e-8)


def test_per_sample_weights_of_the_channel_mse():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    e = per_sample_mse(a, b)
    assert e.shape == (4,) and torch.allclose(e.mean(), channel_mse(a, b))
    assert torch.allclose(e[1], channel_mse(a[1:2], b[1:2]))
    w = torch.tensor([0.0, 1.0, 0.0, 3.0])
    assert torch.allclose(channel_mse(a, b, w), (e[1] + 3 * e[3]) / 4)


def test_step_balance_weights_give_every_timestep_the_same_total_say():
    # timestep 10 starts with errors 100x those of timestep 500
    err = torch.tensor([1.0, 3.0, 0.01, 0.03, 0.02])
    t = torch.tensor([10, 10, 500, 500, 500])
    w = step_balance_weights(err, t)
    assert torch.allclose(w[:2], w[0].expand(2)) and torch.allclose(w[2:], w[2].expand(3))
    # weighted mean error of each timestep equals the overall mean: both count the same
    assert torch.allclose((w * err)[:2].mean(), err.mean()) and torch.allclose((w * err)[2:].mean(), err.mean())
    assert torch.allclose(step_balance_weights(torch.full((4,), 2.0), torch.tensor([1, 1, 2, 2])), torch.ones(4))


def test_trajectory_bins_group_steps_into_equal_stretches():
    from types import SimpleNamespace

    from edadm.recon.engine import trajectory_bins

    # 10 sampler steps; samples from steps 9, 0, 5, 4, 1, 0
    calib = SimpleNamespace(step=torch.tensor([9, 0, 5, 4, 1, 0]), counts=torch.ones(10, dtype=torch.long))
    assert trajectory_bins(calib, 2).tolist() == [1, 0, 1, 0, 0, 0]
    assert trajectory_bins(calib, 10).tolist() == [9, 0, 5, 4, 1, 0]  # one step per bin: the steps
    # binned weights: steps 4 and 5 (one bin of 5) share one weight
    err = torch.tensor([1.0, 2.0, 4.0, 0.5, 0.25, 1.0])
    w = step_balance_weights(err, trajectory_bins(calib, 2))
    assert torch.allclose(w[[0, 2]], w[0].expand(2)) and torch.allclose(w[[1, 3, 4, 5]], w[1].expand(4))


def test_timestep_balanced_reconstruction_lowers_block_error(make_tiny_unet):
    torch.manual_seed(0)
    unet, calib = _quantized_tiny(make_tiny_unet, wbits=3)
    calib.t = torch.tensor([5, 900]).repeat(16)  # two timesteps
    cfg = ReconConfig(enabled=True, iters=150, batch_size=16, add_loss=0.8, lr_weight=1e-2, step_balance="relative")
    ulog = reconstruct_unit(unet, full_precision_copy(unet), "down_blocks.1.resnets.0", "block", calib, cfg,
                            calib_batch=16)
    assert ulog.fallback is None and ulog.after < 0.9 * ulog.before, (ulog.before, ulog.after)


def test_step_balance_must_be_known():
    with pytest.raises(EdadmError, match="step-balance"):
        ReconConfig(step_balance="sideways").validate()


def test_inner_layers_of_a_resnet_block(make_tiny_unet):
    unet, _ = _quantized_tiny(make_tiny_unet)
    names = {id(m): n for n, m in unet.named_modules()}
    block = unet.get_submodule("up_blocks.1.resnets.0")  # has a shortcut conv
    inner = [names[id(m)].rsplit(".", 1)[-1] for m in _inner_layers(block)]
    assert inner == ["conv1", "time_emb_proj", "conv2"]
    attn = unet.get_submodule("mid_block.attentions.0")
    assert [names[id(m)].rsplit(".", 1)[-1] for m in _inner_layers(attn)] == ["to_q", "to_k", "to_v"]


def test_units_cover_every_quantized_layer_once_in_forward_order(make_tiny_unet):
    unet, calib = _quantized_tiny(make_tiny_unet)
    units = reconstruction_units(unet, lambda m: isinstance(m, QuantMixin))
    covered = []
    for name, kind in units:
        mod = unet.get_submodule(name)
        covered += [id(m) for m in mod.modules() if isinstance(m, QuantMixin)]
    assert sorted(covered) == sorted(id(m) for _, m in quant_modules(unet))
    assert len(covered) == len(set(covered))
    order = forward_order(unet, [n for n, _ in units], (calib.x[:1], calib.t[:1]))
    assert order.index("mid_block.resnets.0") < order.index("mid_block.attentions.0") < order.index("mid_block.resnets.1")
    assert order[0].startswith("time_embedding") or order[0] == "conv_in"
    assert order[-1] == "conv_out"


@pytest.mark.parametrize("add_loss", [0.0, 0.8])
def test_reconstruction_lowers_block_error(make_tiny_unet, add_loss):
    torch.manual_seed(0)
    unet, calib = _quantized_tiny(make_tiny_unet, wbits=3)
    cfg = ReconConfig(enabled=True, iters=150, batch_size=16, add_loss=add_loss, lr_weight=1e-2, lr_act=1e-3)
    ulog = reconstruct_unit(unet, full_precision_copy(unet), "down_blocks.1.resnets.0", "block", calib, cfg,
                            calib_batch=16)
    assert ulog.fallback is None
    assert ulog.after < 0.9 * ulog.before, (ulog.before, ulog.after)
    assert ulog.history and all(k in ulog.history[0] for k in ("block", "inner", "round"))
    if add_loss == 0:
        assert all(h["inner"] == 0 for h in ulog.history)
    else:
        assert all(h["inner"] > 0 for h in ulog.history)
    # rounding decisions are baked: weights are exactly on the quantization grid
    for m in unet.get_submodule("down_blocks.1.resnets.0").modules():
        if isinstance(m, QuantMixin):
            assert m.rounding is None
            for wq, sl in m.weight_quantizers():
                w = m.weight[:, sl] if m.split else m.weight
                assert torch.allclose(wq(w), w, atol=1e-6)


def test_adaround_starts_at_the_fp_weight_and_rounds_to_floor_or_ceil():
    from edadm.quant.quantizer import UniformQuantizer

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=g)
    q = UniformQuantizer(4, False, per_channel=True, channels=4, role="weight")
    q.init_from_weight(w, method="minmax")
    ada = AdaRoundQuantizer(q, w)
    s, z = q.scale.view(-1, 1), q.zero_point.view(-1, 1)
    err = (ada(w) - w).abs() / s
    assert (err < 1e-3).float().mean() > 0.9  # soft rounding reproduces w at init ...
    assert (err <= 0.5 + 1e-4).all()  # ... except values clipped at the range ends (zero-point rounding)
    ada.hard = True
    codes = ada(w) / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert ((codes.round() - (torch.floor(w / s) + z)).abs() <= 1).all()


def test_nan_during_reconstruction_falls_back(make_tiny_unet, caplog):
    unet, calib = _quantized_tiny(make_tiny_unet)
    name = "down_blocks.0.resnets.0"
    block = unet.get_submodule(name)
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    handle = block.conv2.register_forward_hook(lambda m, a, o: o * float("nan"))
    cfg = ReconConfig(enabled=True, iters=5, batch_size=8, add_loss=0.8)
    ulog = reconstruct_unit(unet, full_precision_copy(unet), name, "block", calib, cfg, calib_batch=16)
    handle.remove()
    assert ulog.fallback and "non-finite" in ulog.fallback
    assert name in caplog.text
    for n, p in block.named_parameters():
        assert torch.equal(p, before[n]), n


def test_targets_stay_full_precision_after_earlier_units_are_rounded(make_tiny_unet):
    """Rounding is baked into the quantized model's weights; the targets of later units
    must still come from the untouched FP weights (regression: they came from the
    rounded ones, and reconstruction made W4A8 worse than no reconstruction)."""
    torch.manual_seed(0)
    reference = make_tiny_unet()
    unet, calib = _quantized_tiny(make_tiny_unet)  # same seed: the same FP weights as the reference
    fp = full_precision_copy(unet)
    x, t = calib.x[:8], calib.t[:8]
    with torch.no_grad():
        want = reference(x, t).sample
        assert torch.allclose(fp(x, t).sample, want, atol=1e-5)
    cfg = ReconConfig(enabled=True, iters=20, batch_size=8, add_loss=0.8)
    name = "down_blocks.0.resnets.0"
    reconstruct_unit(unet, fp, name, "block", calib, cfg, calib_batch=16)
    q_w = unet.get_submodule(f"{name}.conv1").weight
    fp_w = fp.get_submodule(f"{name}.conv1").weight
    assert not torch.equal(q_w, fp_w)  # the quantized model now holds rounded weights ...
    assert torch.equal(fp_w, reference.get_submodule(f"{name}.conv1").weight)  # ... the FP copy does not
    with torch.no_grad():
        assert torch.allclose(fp(x, t).sample, want, atol=1e-5)


def test_two_stage_weight_stage_learns_rounding_with_activations_in_float(make_tiny_unet):
    """Q-Diffusion's stage 1: activations in float, only the rounding moves."""
    from edadm.quant.wrap import set_quant_state
    from edadm.recon.engine import reconstruct

    unet, calib = _quantized_tiny(make_tiny_unet)
    scales = {n: p.detach().clone() for n, p in unet.named_parameters() if n.endswith("act_quantizer.scale")}
    w0 = {n: p.detach().clone() for n, p in unet.named_parameters() if n.endswith(".weight")}
    seen = []
    h = unet.get_submodule("down_blocks.0.resnets.0.conv1").act_quantizer.register_forward_pre_hook(
        lambda m, a: seen.append(m.enabled))
    cfg = ReconConfig(enabled=True, stages="two-stage", iters=5, act_iters=5, batch_size=8, lr_weight=1e-3,
                      lr_weight_schedule="constant", input_mix_prob=0.0, act_drop_prob=0.0)
    logs = reconstruct(unet, calib, cfg, calib_batch=16, progress=False, stage="weights")
    h.remove()
    assert seen and not any(seen)  # the activation quantizer stayed off throughout
    assert all(torch.equal(p, scales[n]) for n, p in unet.named_parameters() if n in scales)
    assert any(not torch.equal(p, w0[n]) for n, p in unet.named_parameters() if n in w0)  # rounded
    assert len(logs) == len(list(reconstruction_units(unet, lambda m: isinstance(m, QuantMixin))))
    set_quant_state(unet, weight=True, act=True)


def test_two_stage_activation_stage_moves_only_step_sizes(make_tiny_unet):
    from edadm.recon.engine import reconstruct

    unet, calib = _quantized_tiny(make_tiny_unet)
    cfg = ReconConfig(enabled=True, stages="two-stage", iters=3, act_iters=10, batch_size=8, lr_act=4e-4,
                      lr_act_relative=False, act_loss_p=2.4, input_mix_prob=0.0, act_drop_prob=0.0)
    reconstruct(unet, calib, cfg, calib_batch=16, progress=False, stage="weights")
    w1 = {n: p.detach().clone() for n, p in unet.named_parameters() if n.endswith(".weight")}
    s1 = {n: p.detach().clone() for n, p in unet.named_parameters() if "act_quantizer" in n and n.endswith("scale")}
    logs = reconstruct(unet, calib, cfg, calib_batch=16, progress=False, stage="acts")
    assert all(torch.equal(p, w1[n]) for n, p in unet.named_parameters() if n in w1)  # weights fixed
    moved = [n for n, p in unet.named_parameters() if n in s1 and not torch.equal(p, s1[n])]
    assert moved  # step sizes learned
    assert all(u.iters in (10, 0) for u in logs)


def test_channel_mse_with_p():
    x = torch.full((2, 3, 4, 4), 2.0)
    assert channel_mse(x, torch.zeros_like(x), p=2.4) == pytest.approx(3 * 2.0 ** 2.4)


def test_joint_pass_without_learned_rounding_keeps_nearest_weights_and_learns_step_sizes(make_tiny_unet):
    """learn_rounding=False (eda-dm-plus at W8): weights stay the FP tensors, so the saved codes
    are round-to-nearest; only the activation step sizes move."""
    from edadm.recon.engine import reconstruct

    unet, calib = _quantized_tiny(make_tiny_unet, wbits=8)
    w0 = {n: p.detach().clone() for n, p in unet.named_parameters() if n.endswith(".weight")}
    s0 = {n: p.detach().clone() for n, p in unet.named_parameters() if "act_quantizer" in n and n.endswith("scale")}
    cfg = ReconConfig(enabled=True, stages="joint", learn_rounding=False, iters=10, batch_size=8, lr_act=1e-3,
                      lr_act_relative=False, input_mix_prob=0.5, act_drop_prob=0.5)
    logs = reconstruct(unet, calib, cfg, calib_batch=16, progress=False)
    assert all(torch.equal(p, w0[n]) for n, p in unet.named_parameters() if n in w0)
    assert any(not torch.equal(p, s0[n]) for n, p in unet.named_parameters() if n in s0)
    assert all(m.rounding is None for m in unet.modules() if isinstance(m, QuantMixin))
    assert any(u.iters == 10 for u in logs)


def test_eda_dm_plus_learns_rounding_below_8_bits_only():
    assert resolve(QuantConfig(method="eda-dm-plus", weight_bits=4)).recon.learn_rounding is True
    assert resolve(QuantConfig(method="eda-dm-plus", weight_bits=8)).recon.learn_rounding is False
    assert resolve(QuantConfig(method="eda-dm", weight_bits=8)).recon.learn_rounding is True


def test_eda_dm_plus_balances_timesteps_below_8_bits_only_and_the_references_never():
    assert resolve(QuantConfig(method="eda-dm-plus", weight_bits=4)).recon.step_balance == "relative"
    assert resolve(QuantConfig(method="eda-dm-plus", weight_bits=8)).recon.step_balance == "none"
    for ref in ("eda-dm", "qdiffusion", "naive"):
        assert resolve(QuantConfig(method=ref, weight_bits=4)).recon.step_balance == "none"
    # what the user sets wins over the recipe
    assert resolve(QuantConfig(method="eda-dm-plus", weight_bits=4, recon={"step_balance": "none"})).recon.step_balance == "none"


def test_rows_join_nested_batches_like_cat_in_one_contiguous_buffer():
    g = torch.Generator().manual_seed(0)
    batches = [((torch.randn(n, 3, 4, 4, generator=g).to(memory_format=torch.channels_last), torch.tensor(7.0)),
                {"temb": torch.randn(n, 5, generator=g), "scale": 1.0}) for n in (4, 4, 3)]
    rows = _Rows(3)
    for b in batches:
        rows.add(b)
    (x, zero_d), kw = rows.result()
    assert torch.equal(x, torch.cat([b[0][0] for b in batches])) and x.is_contiguous()
    assert torch.equal(kw["temb"], torch.cat([b[1]["temb"] for b in batches]))
    assert zero_d is batches[0][0][1] and kw["scale"] == 1.0
    with pytest.raises(ValueError, match="more rows"):
        rows.add(batches[0])  # a fourth batch does not fit the three it was sized for


def test_capture_inputs_holds_every_calibration_row_once(make_tiny_unet):
    torch.manual_seed(0)
    unet = make_tiny_unet()
    calib = _calib(n=20)
    name = "down_blocks.0.resnets.0"
    seen = []
    h = unet.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        for x, t in calib.batches(8):
            unet(x, t)
    h.remove()
    args, kwargs = capture_inputs(unet, unet.get_submodule(name), calib, batch_size=8)
    assert args[0].shape[0] == 20
    assert torch.equal(args[0], torch.cat(seen))


def _nested_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_nested_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nested_equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("budget_mb,passes", [(1e6, 1), (0.0, None), ("half", None)])
def test_fp_inputs_of_several_units_in_one_pass_equal_each_unit_captured_alone(make_tiny_unet, budget_mb, passes):
    unet, calib = _quantized_tiny(make_tiny_unet)
    fp = full_precision_copy(unet)
    units = [n for n, _ in reconstruction_units(fp, lambda m: isinstance(m, QuantMixin))]
    args, kwargs = next(iter(calib.model_inputs(1, torch.device("cpu"))))
    order = forward_order(fp, units, args, kwargs)
    alone = {n: capture_inputs(fp, fp.get_submodule(n), calib, batch_size=12) for n in order}
    total_mb = sum(_nbytes(v) for v in alone.values()) / 2 ** 20
    if budget_mb == "half":  # about two groups
        budget_mb = total_mb / 2
    shared = FPInputs(fp, order, calib, batch_size=12, budget_mb=budget_mb)
    for n in order:
        assert _nested_equal(shared.take(n), alone[n]), n
    assert not shared.cache  # every entry handed out once and dropped
    expected = passes if passes is not None else (len(order) if budget_mb == 0 else None)
    if expected is not None:
        assert shared.passes == expected
    else:
        assert 1 < shared.passes < len(order)


@pytest.mark.parametrize("budget_mb", [1e6, 0.0, "some"])
def test_q_inputs_with_reconstructed_units_replayed_equal_a_full_prefix_pass(make_tiny_unet, budget_mb):
    """QInputs against BRECQ's capture (the quantized model run up to the unit) while units
    change one by one as reconstruction changes them: bit-identical inputs at every unit,
    whether every finished unit is replayed, none (budget 0) or some (the budget runs out)."""
    from edadm.quant.wrap import set_quant_state

    unet, calib = _quantized_tiny(make_tiny_unet)
    set_quant_state(unet, weight=True, act=True)
    units = [n for n, _ in reconstruction_units(unet, lambda m: isinstance(m, QuantMixin))]
    args, kwargs = next(iter(calib.model_inputs(1, torch.device("cpu"))))
    order = forward_order(unet, units, args, kwargs)
    if budget_mb == "some":  # room for the outputs of about a third of the units
        budget_mb = sum(_nbytes(capture_inputs(unet, unet.get_submodule(n), calib, 12)) for n in order) / 3 / 2 ** 20
    q = QInputs(unet, calib, batch_size=12, budget_mb=budget_mb)
    g = torch.Generator().manual_seed(0)
    for n in order:
        ref = capture_inputs(unet, unet.get_submodule(n), calib, batch_size=12)
        assert _nested_equal(q.take(n), ref), n
        with torch.no_grad():  # "reconstruct" the unit: its weights change, then are final
            for m in unet.get_submodule(n).modules():
                if isinstance(m, QuantMixin):
                    m.weight.add_(0.05 * torch.randn(m.weight.shape, generator=g))
        q.mark_final(n)
    assert all("forward" not in unet.get_submodule(n).__dict__ for n in order)  # replay undone
    if budget_mb == 0:
        assert not q.outs
    elif budget_mb == 1e6:
        assert len(q.outs) == len(order) - 1  # every unit but the last was replayed later on
    else:
        assert 0 < len(q.outs) < len(order) - 1 and q.used <= q.budget


def test_reconstruction_is_the_same_with_and_without_the_capture_caches(make_tiny_unet):
    """recon.capture_mb only changes how inputs are captured: 0 (BRECQ's passes) and a large
    budget (one FP pass, replayed outputs) give bit-identical reconstructed models."""
    from edadm.quant.wrap import set_quant_state

    states = []
    for mb in (0.0, 1e6):
        unet, calib = _quantized_tiny(make_tiny_unet)
        set_quant_state(unet, weight=True, act=True)
        cfg = resolve(QuantConfig(method="eda-dm", weight_bits=4, act_bits=8)).recon
        cfg.iters, cfg.batch_size, cfg.capture_mb, cfg.step_balance = 4, 8, mb, "none"
        cfg.fill_defaults(0)
        reconstruct(unet, calib, cfg, calib_batch=12, progress=False)
        states.append(unet.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
