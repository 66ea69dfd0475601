import pytest

from edadm.config import METHOD_PRESETS, QuantConfig
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
