"""recon/stages.py: each reconstruction family declares its own options."""
import logging
from dataclasses import fields

from edadm import QuantConfig
from edadm.config import RECON_STAGES, ReconConfig
from edadm.recipes import resolve
from edadm.recon import stages


def test_families_come_from_one_registry_and_own_real_fields():
    assert RECON_STAGES == stages.names() == ("joint", "two-stage")
    names = {f.name for f in fields(ReconConfig)}
    for fam in stages.FAMILIES.values():
        assert set(fam.options) <= names
    assert stages.owner_of("act_iters") == "two-stage" and stages.owner_of("iters") is None


def test_an_option_of_the_other_family_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="edadm"):
        resolve(QuantConfig(method="qdiffusion", recon={"act_iters": 5}))  # two-stage: applies
        resolve(QuantConfig(method="eda-dm", recon={"act_iters": 5}))      # joint: does nothing
    assert [r.getMessage() for r in caplog.records] == [
        "act-iters is set but the reconstruction is joint: it only applies to two-stage"]
