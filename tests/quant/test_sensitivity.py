import json

import torch

from edadm import CalibConfig, QuantConfig, load, quantize, save
from edadm.model.families import call_denoiser
from edadm.quant.modules import LayerSpec
from edadm.quant.sensitivity import _quantized_weight, choose, layer_sensitivity, weight_bytes
from edadm.quant.wrap import layer_plan, quant_modules


def test_choose_takes_most_sensitivity_per_byte_within_the_budget():
    sens = {"a": 1.0, "b": 0.5, "c": 0.4, "d": 0.0}
    extra = {"a": 100.0, "b": 10.0, "c": 10.0, "d": 1.0}
    # per byte: b 0.05, c 0.04, a 0.01; budget 0.25 x 200 = 50 bytes: b, c fit, a does not, d has no gain
    assert choose(sens, extra, 200.0, 0.25) == ["b", "c"]
    assert choose(sens, extra, 200.0, 0.6) == ["b", "c", "a"]
    assert choose(sens, extra, 200.0, 0.0) == []
    # a layer that does not fit is skipped, a smaller one after it still taken
    assert choose({"a": 1.0, "b": 0.01}, {"a": 100.0, "b": 5.0}, 100.0, 0.5) == ["b"]


def test_sensitivity_finds_the_one_layer_whose_weights_lose_precision_and_restores_the_model(make_tiny_unet):
    unet = make_tiny_unet()
    cfg = QuantConfig(method="naive", weight_bits=2, act_bits=8)
    plan = layer_plan(unet, cfg)
    low = [n for n, s in plan.items() if isinstance(s, LayerSpec) and s.weight_bits < 8]
    victim = low[len(low) // 2]
    with torch.no_grad():  # every other layer already on its 2-bit grid: quantizing it again changes nothing
        for n in low:
            if n != victim:
                m = unet.get_submodule(n)
                m.weight.data = _quantized_weight(m.weight.data, plan[n], "mse", 2.4)
    torch.manual_seed(1)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([10, 300, 600, 900])
    before = call_denoiser(unet, x, t).clone()
    sens = layer_sensitivity(unet, plan, [((x, t), {})], progress=False)
    assert set(sens) == set(low) and all(v >= 0 for v in sens.values())
    assert sens[victim] > 0 and all(sens[n] < 1e-3 * sens[victim] for n in low if n != victim)
    assert torch.equal(call_denoiser(unet, x, t), before)  # every weight put back


def test_quantize_with_a_budget_keeps_the_chosen_layers_at_8_bits(tiny_pipe_dir, tmp_path):
    calib = CalibConfig(num_samples=16, num_trajectories=16, uniform_steps=4, batch_size=16)
    base = QuantConfig(method="naive", weight_bits=4, act_bits=8, calib=calib)
    q0 = quantize(load(tiny_pipe_dir, device="cpu"), base, progress=False)
    assert q0.report.mixed_precision == {}
    cfg = QuantConfig(method="naive", weight_bits=4, act_bits=8, calib=calib, mixed_budget=0.1, mixed_samples=8)
    q = quantize(load(tiny_pipe_dir, device="cpu"), cfg, progress=False)
    mp = q.report.mixed_precision
    assert mp["kept"] and mp["used_bytes"] <= 0.1 * mp["base_bytes"] + 1e-9
    assert q.report.seconds["mixed_precision"] > 0
    bits = {n: m.spec.weight_bits for n, m in quant_modules(q.unet)}
    bits0 = {n: m.spec.weight_bits for n, m in quant_modules(q0.unet)}
    assert all(bits[n] == 8 and bits0[n] == 4 for n in mp["kept"])
    assert all(bits[n] == bits0[n] for n in bits if n not in mp["kept"])
    # the size it reports is the plan's: base bytes plus what the kept layers added
    assert abs(weight_bytes({n: m.spec for n, m in quant_modules(q.unet)}, q.unet)
               - mp["base_bytes"] - mp["used_bytes"]) < 1e-6
    out = tmp_path / "q"
    save(q, out)
    meta = json.loads((out / "unet" / "edadm_quant.json").read_text())
    assert meta["report"]["mixed_precision"]["kept"] == mp["kept"]
    back = load(out, device="cpu", engine="fake")
    assert {n: m.spec.weight_bits for n, m in quant_modules(back.unet)} == bits


def test_layers_kept_at_8_bits_reconstruct_by_the_recipes_8_bit_settings(tiny_pipe_dir):
    # eda-dm-plus learns rounding (AdaRound) below 8 bits only: in a W4 run the layers mixed
    # precision keeps at 8 bits stay round-to-nearest (their float weights untouched), the
    # 4-bit layers get their learned rounding baked into the weights
    calib = CalibConfig(num_samples=16, num_trajectories=16, batch_size=16)
    cfg = QuantConfig(method="eda-dm-plus", weight_bits=4, act_bits=8, steps=4, calib=calib,
                      recon={"iters": 4, "batch_size": 8}, mixed_budget=0.2, mixed_samples=8)
    fp = {n: p.detach().clone() for n, p in load(tiny_pipe_dir, device="cpu").unet.named_parameters()
          if n.endswith(".weight")}
    q = quantize(load(tiny_pipe_dir, device="cpu"), cfg, progress=False)
    kept = q.report.mixed_precision["kept"]
    assert kept
    layers = dict(quant_modules(q.unet))
    assert all(torch.equal(layers[n].weight, fp[n + ".weight"]) for n in kept)
    low = [n for n, m in layers.items() if m.spec.weight_bits == 4]
    assert low and all(not torch.equal(layers[n].weight, fp[n + ".weight"]) for n in low)


def test_recon_for_bits_resolves_the_recipes_other_bit_width_with_the_runs_iterations():
    from edadm.recipes import recon_for_bits, resolve

    cfg = QuantConfig(method="eda-dm-plus", weight_bits=4, act_bits=8, seed=3, mixed_budget=0.1)
    run, r8 = resolve(cfg).recon, recon_for_bits(cfg, 8)
    assert run.learn_rounding and not r8.learn_rounding
    assert (run.step_balance, r8.step_balance) == ("relative", "none")
    assert (run.lr_act, r8.lr_act) == (5e-4, 1e-3)
    assert (r8.iters, r8.seed) == (run.iters, run.seed)
    # what the user set stays set at the other width
    user = QuantConfig(method="eda-dm-plus", weight_bits=4, recon={"lr_act": 2e-3, "iters": 7})
    assert recon_for_bits(user, 8).lr_act == 2e-3 and recon_for_bits(user, 8).iters == 7
    # a faithful recipe without per-bit values is the same at both widths, lr excepted
    e4, e8 = resolve(QuantConfig(method="eda-dm", weight_bits=4)).recon, recon_for_bits(QuantConfig(method="eda-dm", weight_bits=4), 8)
    assert e4.learn_rounding == e8.learn_rounding and (e4.lr_weight, e8.lr_weight) == (0.5, 0.05)


def test_recon_for_bits_warns_nothing_and_leaves_the_logger_as_it_was(caplog):
    """The second resolve behind recon_for_bits does not repeat the run's warnings, and does
    not silence the edadm logger to avoid them (its level stays what it was)."""
    import logging

    from edadm.recipes import recon_for_bits

    logger = logging.getLogger("edadm")
    cfg = QuantConfig(method="eda-dm-plus", weight_bits=4, mixed_budget=0.1, recon={"act_iters": 5})
    with caplog.at_level(logging.WARNING, logger="edadm"):
        level = logger.level
        recon_for_bits(cfg, 8)
        assert logger.level == level
    assert not caplog.records
