import pytest

from edadm.config import DATASET_PRESETS, METHOD_PRESETS, QuantConfig, preset_config
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
    cfg = QuantConfig(method=method)
    assert (cfg.calib.strategy, cfg.recon.enabled, cfg.recon.add_loss, cfg.split_shortcut) == (
        strategy, recon, add_loss, split)


def test_explicit_values_override_the_preset_and_round_trip():
    cfg = QuantConfig.from_dict({"method": "eda-dm", "calib": {"strategy": "uniform", "tdac_lambda": 5.0},
                                 "recon": {"add_loss": 1.0, "iters": 7}})
    assert cfg.calib.strategy == "uniform" and cfg.recon.add_loss == 1.0 and cfg.recon.iters == 7
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert set(METHOD_PRESETS) == {"naive", "ptq4dm", "qdiffusion", "eda-dm", "eda-dm-tdac-only", "eda-dm-fbr-only"}


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
    for method in METHOD_PRESETS:
        for wbits, lr in ((4, ref["lr_weight"][4]), (8, ref["lr_weight"][8])):
            cfg = QuantConfig.from_dict({**preset_config(name, method, wbits), "method": method, "weight_bits": wbits})
            assert (cfg.steps, cfg.eta, cfg.sampler, cfg.preset) == (ref["steps"], ref["eta"], ref["sampler"], name)
            assert cfg.calib.tdac_lambda == ref["tdac_lambda"] and cfg.recon.iters == ref["iters"]
            assert cfg.recon.lr_weight == lr and cfg.calib.num_trajectories >= cfg.calib.num_samples
            fbr = METHOD_PRESETS[method]["add_loss"] > 0
            assert cfg.recon.add_loss == (ref["fbr_add_loss"] if fbr else 0.0)


def test_paper_reference_values():
    """METHOD.md: N 1024 (256 SD); CIFAR-10 100 steps lambda 1.2; SD PLMS 50 steps guidance 7.5 lambda 5."""
    assert (DATASET_PRESETS["cifar10"]["steps"], DATASET_PRESETS["cifar10"]["num_samples"]) == (100, 1024)
    coco = DATASET_PRESETS["coco"]
    assert (coco["sampler"], coco["steps"], coco["guidance_scale"], coco["tdac_lambda"], coco["num_samples"]) == (
        "plms", 50, 7.5, 5.0, 256)
    assert DATASET_PRESETS["lsun-bedroom"]["eta"] == 1.0 and DATASET_PRESETS["imagenet"]["guidance_scale"] == 3.0
    with pytest.raises(EdadmError, match="unknown preset 'x'"):
        preset_config("x")
