import pytest

from edadm import recipes
from edadm.recipes import resolve
from edadm.config import DATASET_PRESETS, DEFAULT_ITERS_SCALE, METHODS, QuantConfig, preset_config
from edadm.errors import EdadmError


@pytest.mark.parametrize("method,strategy,recon,add_loss,split", [
    ("naive", "uniform", False, 0.0, False),
    ("ptq4dm", "ptq4dm", True, 0.0, False),
    ("qdiffusion", "uniform", True, 0.0, True),
    ("eda-dm", "tdac", True, 0.8, True),
    ("eda-dm-tdac-only", "tdac", True, 0.0, True),
    ("eda-dm-fbr-only", "uniform", True, 0.8, True),
])
def test_method_presets(method, strategy, recon, add_loss, split):
    cfg = resolve(QuantConfig(method=method))
    assert (cfg.calib.strategy, cfg.recon.enabled, cfg.recon.add_loss, cfg.split_shortcut) == (
        strategy, recon, add_loss, split)


def test_explicit_values_override_the_preset_and_round_trip():
    cfg = resolve(QuantConfig.from_dict({"method": "eda-dm", "calib": {"strategy": "uniform", "tdac_lambda": 5.0},
                                         "recon": {"add_loss": 1.0, "iters": 7}}))
    assert cfg.calib.strategy == "uniform" and cfg.recon.add_loss == 1.0 and cfg.recon.iters == 7
    assert resolve(QuantConfig.from_dict(cfg.to_dict())) == cfg
    assert {"naive", "ptq4dm", "qdiffusion", "eda-dm", "eda-dm-tdac-only", "eda-dm-fbr-only"} <= set(METHODS)
    assert set(METHODS) == {p.stem for p in (recipes._DIR).glob("*.toml")}  # one file per method


@pytest.mark.parametrize("wbits", [4, 8])
def test_qdiffusion_recipe_is_its_cifar10_script(wbits):
    """Q-Diffusion's README CIFAR-10 command (METHOD.md, two reference recipes)."""
    cfg = resolve(QuantConfig(method="qdiffusion", weight_bits=wbits))
    c, r = cfg.calib, cfg.recon
    assert (c.strategy, c.num_samples, c.num_trajectories, c.uniform_steps) == ("uniform", 5120, 256, 20)
    assert (cfg.act_range_kind, cfg.split_shortcut) == ("symmetric", True)
    assert (r.stages, r.reference_iters, r.reference_act_iters) == ("two-stage", 20000, 5000)
    assert (r.lr_weight, r.lr_weight_schedule, r.round_weight, r.b_start, r.b_end, r.warmup) == (
        1e-3, "constant", 0.01, 20.0, 2.0, 0.2)
    assert (r.lr_act, r.lr_act_relative, r.act_loss_p, r.add_loss, r.input_mix_prob, r.act_drop_prob) == (
        4e-4, False, 2.4, 0.0, 0.0, 0.0)
    assert (r.iters, r.act_iters) == (round(20000 * DEFAULT_ITERS_SCALE), round(5000 * DEFAULT_ITERS_SCALE))
    assert r.batch_size == 32


@pytest.mark.parametrize("wbits,lr_w,lr_a", [(4, 5e-1, 5e-4), (8, 5e-2, 1e-3)])
def test_eda_dm_recipe_is_its_cifar10_script(wbits, lr_w, lr_a):
    cfg = resolve(QuantConfig(method="eda-dm", weight_bits=wbits))
    c, r = cfg.calib, cfg.recon
    assert (c.strategy, c.num_samples, c.num_trajectories, c.tdac_lambda) == ("tdac", 1024, 1024, 1.2)
    assert (cfg.act_range_kind, cfg.split_shortcut) == ("symmetric", True)
    assert (r.stages, r.reference_iters, r.lr_weight, r.lr_weight_schedule, r.round_weight) == (
        "joint", 5000, lr_w, "cosine", 0.0)
    assert (r.lr_act, r.lr_act_relative, r.add_loss, r.input_mix_prob, r.act_drop_prob) == (lr_a, False, 0.8, 0.5, 0.5)


def test_iters_scale_and_seed_reach_the_reconstruction():
    cfg = resolve(QuantConfig(method="qdiffusion", seed=3, recon={"iters_scale": 1.0}))
    assert (cfg.recon.iters, cfg.recon.act_iters, cfg.recon.seed) == (20000, 5000, 3)
    assert resolve(QuantConfig(method="eda-dm", recon={"iters": 7})).recon.iters == 7
    assert recipes.per_bits({"w4": 1, "w8": 2}, 3) == 1 and recipes.per_bits({"w4": 1, "w8": 2}, 6) == 1
    assert recipes.per_bits({"w4": 1, "w8": 2}, 8) == 2


@pytest.mark.parametrize("bad,needle", [
    ({"weight_bits": 1}, "weight-bits"), ({"act_bits": 9}, "act-bits"), ({"weight_bits": "4"}, "weight-bits"),
    ({"method": "gptq"}, "unknown method"), ({"calib": {"strategy": "best"}}, "strategy"),
    ({"calib": {"num_samples": 0}}, "num-samples"), ({"recon": {"iters": -1}}, "iters"),
    ({"recon": {"input_mix_prob": 2}}, "input-mix-prob"), ({"calib": {"tdac_radius": -1}}, "tdac-radius"),
    ({"version": 99}, "version"), ({"keep_fp": "conv_in"}, "keep-fp"), ({"eta": 3}, "eta"),
    ({"recon": {"lr": 1}}, "unknown recon config keys"), ([], "JSON object"),
])
def test_bad_configs_are_user_errors(bad, needle):
    with pytest.raises(EdadmError, match=needle):
        QuantConfig.from_dict(bad)


@pytest.mark.parametrize("name", sorted(DATASET_PRESETS))
def test_dataset_presets_are_valid_configs_with_the_papers_values(name):
    ref = DATASET_PRESETS[name]
    for method in METHODS:
        recipe = recipes.get(method)
        for wbits, lr in ((4, ref["lr_weight"][4]), (8, ref["lr_weight"][8])):
            cfg = resolve(QuantConfig.from_dict({**preset_config(name, method, wbits), "method": method,
                                                 "weight_bits": wbits}))
            plain = resolve(QuantConfig(method=method, weight_bits=wbits))
            assert (cfg.steps, cfg.eta, cfg.sampler, cfg.preset) == (ref["steps"], ref["eta"], ref["sampler"], name)
            if recipe.per_dataset:  # the EDA-DM scripts' per-dataset values
                assert cfg.calib.tdac_lambda == ref["tdac_lambda"] and cfg.recon.reference_iters == ref["iters"]
                assert cfg.recon.iters == max(1, round(ref["iters"] * DEFAULT_ITERS_SCALE))
                assert cfg.recon.lr_weight == lr and cfg.calib.num_trajectories >= cfg.calib.num_samples
                fbr = (recipe.recon.get("add_loss") or 0) > 0
                assert cfg.recon.add_loss == (ref["fbr_add_loss"] if fbr else 0.0)
            else:  # other recipes keep their own calibration and reconstruction
                assert (cfg.calib, cfg.recon) == (plain.calib, plain.recon)


def test_paper_reference_values():
    """METHOD.md: N 1024 (256 SD); CIFAR-10 100 steps lambda 1.2; SD PLMS 50 steps guidance 7.5 lambda 5."""
    assert (DATASET_PRESETS["cifar10"]["steps"], DATASET_PRESETS["cifar10"]["num_samples"]) == (100, 1024)
    coco = DATASET_PRESETS["coco"]
    assert (coco["sampler"], coco["steps"], coco["guidance_scale"], coco["tdac_lambda"], coco["num_samples"]) == (
        "plms", 50, 7.5, 5.0, 256)
    assert DATASET_PRESETS["lsun-bedroom"]["eta"] == 1.0 and DATASET_PRESETS["imagenet"]["guidance_scale"] == 3.0
    with pytest.raises(EdadmError, match="unknown preset 'x'"):
        preset_config("x")


def test_saved_config_records_what_was_set_and_resolves_the_same():
    """The recipe overlays the config without being written back: to_dict() holds what the
    user set, resolved_dict() what ran, and from_dict(to_dict()) resolves to the same."""
    cfg = QuantConfig(method="qdiffusion", weight_bits=4)
    user, full = cfg.to_dict(), cfg.resolved_dict()
    assert user["calib"]["num_samples"] is None and full["calib"]["num_samples"] == 5120
    assert user["recon"]["stages"] is None and full["recon"]["stages"] == "two-stage"
    assert user["weight_bits"] == 4 and user["method"] == "qdiffusion"
    assert QuantConfig.from_dict(user).resolved_dict() == full
    # another method over the same user values takes that method's recipe
    other = resolve(QuantConfig.from_dict({**user, "method": "eda-dm"}))
    assert other.calib.strategy == "tdac" and other.recon.stages == "joint"
    # a value changed after construction is what the user set now
    cfg.calib.num_samples = 64
    assert cfg.to_dict()["calib"]["num_samples"] == 64
    set_explicitly = QuantConfig(method="qdiffusion", calib={"num_samples": 5120})
    assert set_explicitly.to_dict()["calib"]["num_samples"] == 5120


def test_resolve_leaves_the_users_config_as_set_and_is_idempotent():
    """recipes.resolve returns a new config; the user's keeps its Nones, and resolving the
    resolved one changes nothing."""
    user = QuantConfig(method="eda-dm", weight_bits=4, calib={"num_samples": 64})
    full = resolve(user)
    assert user.calib.strategy is None and user.recon.iters is None and not user.is_resolved
    assert full.calib.strategy == "tdac" and full.calib.num_samples == 64 and full.is_resolved
    assert resolve(full) is full and full.to_dict() == user.to_dict()
    assert QuantConfig.from_dict(full.resolved_dict()) == full
