"""The reconstruction families a recipe chooses between (ReconConfig.stages), each registered
with the ReconConfig fields only it reads: `edadm quantize --help` groups their flags under it,
and recipes.resolve warns when one is set for a run of the other family."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReconFamily:
    name: str
    about: str
    options: tuple[str, ...] = ()  # the ReconConfig fields only this family reads


FAMILIES: dict[str, ReconFamily] = {}


def register(name: str, about: str, options: tuple[str, ...] = ()) -> ReconFamily:
    if name in FAMILIES:
        raise ValueError(f"reconstruction family {name!r} registered twice")
    FAMILIES[name] = ReconFamily(name, about, tuple(options))
    return FAMILIES[name]


def names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def owner_of(option: str) -> str | None:
    """The family that declares a ReconConfig field as its own option, if any."""
    return next((f.name for f in FAMILIES.values() if option in f.options), None)


register("joint", "EDA-DM / BRECQ: rounding and activation step sizes learned together, one pass per unit")
register("two-stage", "Q-Diffusion: rounding with activations in float, then the activation step sizes alone",
         options=("act_iters", "reference_act_iters", "act_loss_p"))
