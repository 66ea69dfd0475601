"""Quantization recipes as data: one TOML file per method in this directory.

A recipe is a whole procedure (calibration set, activation range kind, reconstruction stages,
optimiser, loss), stated with the reference code's values. A file `NAME.toml` registers the
method NAME; nothing else needs editing to add one. Sections map onto QuantConfig:

- ``per_dataset = true``: the EDA-DM scripts' per-dataset values (recipes/presets.py:
  calibration size, lambda, add_loss, iterations, rounding lr) apply under ``--preset``;
- ``[quant]``: top-level QuantConfig fields (split_shortcut, act_range_kind);
- ``[calib]``: CalibConfig fields;
- ``[recon]``: ReconConfig fields, plus ``reference_iters`` / ``reference_act_iters`` (the
  reference's iterations per unit, scaled by ReconConfig.iters_scale unless iters is set).

A value that depends on the weight bit width is a table ``{ w4 = ..., w8 = ... }``: the entry
for the largest key not above the config's weight bits (w4 serves 2..7 bits, w8 serves 8).
"""
from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from ..errors import EdadmError

log = logging.getLogger("edadm")

_DIR = Path(__file__).parent
_SECTIONS = ("quant", "calib", "recon")


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    reference: str
    per_dataset: bool = False  # the EDA-DM scripts' per-dataset values (recipes/presets.py) apply
    quant: dict = field(default_factory=dict)
    calib: dict = field(default_factory=dict)
    recon: dict = field(default_factory=dict)

    def section(self, name: str, weight_bits: int) -> dict:
        """The values of one section with per-bit-width tables resolved for `weight_bits`."""
        return {k: per_bits(v, weight_bits) for k, v in getattr(self, name).items()}

    @property
    def reconstructs(self) -> bool:
        return bool(self.recon.get("enabled", False))


def per_bits(value, weight_bits: int):
    """`value`, or from a {"w4": a, "w8": b} table the entry for the largest key <= weight_bits
    (the smallest key when every key is above it)."""
    if not isinstance(value, dict):
        return value
    keys = sorted((int(k.lstrip("w")), k) for k in value)
    chosen = keys[0][1]
    for bits, k in keys:
        if bits <= weight_bits:
            chosen = k
    return value[chosen]


def _read(path: Path) -> Recipe:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EdadmError(f"cannot read recipe {path.name}: {exc}") from exc
    unknown = set(data) - {"about", "reference", "per_dataset", *_SECTIONS}
    if unknown:
        raise EdadmError(f"recipe {path.name}: unknown keys {', '.join(sorted(unknown))}")
    return Recipe(name=path.stem, about=data.get("about", ""), reference=data.get("reference", ""),
                  per_dataset=bool(data.get("per_dataset", False)),
                  **{s: dict(data.get(s, {})) for s in _SECTIONS})


@functools.cache
def registry() -> dict[str, Recipe]:
    """Every recipe file of this directory, by name (sorted)."""
    return {p.stem: _read(p) for p in sorted(_DIR.glob("*.toml"))}


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Recipe:
    recipes = registry()
    if name not in recipes:
        raise EdadmError(f"unknown method {name!r}; choose from {', '.join(recipes)}")
    return recipes[name]


def resolve(config, warn: bool = True):
    """The config a run uses: `config` (a QuantConfig, what the user set) with the dataset
    preset's values, then the method's recipe, then each section's fallbacks filled into the
    fields left at None, and the iterations per unit computed. Returns a new config (its
    to_dict() is still what the user set); a resolved config resolves to itself. warn: log
    the options the method does not use (off for a second resolve of the same options)."""
    if config.is_resolved:
        return config
    from .presets import preset_config

    cfg = copy.deepcopy(config)
    recipe = get(cfg.method)
    bits = cfg.weight_bits
    if cfg.preset is not None:  # the dataset preset overlays what the user left unset, then the recipe
        _overlay(cfg, preset_config(cfg.preset, cfg.method, bits))
    quant = recipe.section("quant", bits)
    for key, fallback in (("split_shortcut", False), ("act_range_kind", "free")):
        if getattr(cfg, key) is None:
            setattr(cfg, key, quant.get(key, fallback))
    for sub, section in ((cfg.calib, "calib"), (cfg.recon, "recon")):
        values = recipe.section(section, bits)
        names_ = {f.name for f in fields(sub)}
        unknown = set(values) - names_
        if unknown:
            raise EdadmError(f"recipe {cfg.method}: unknown {section} keys {', '.join(sorted(unknown))}")
        for name in sorted(names_ & set(values)):
            if getattr(sub, name) is None:
                setattr(sub, name, values[name])
    cfg.calib.fill_defaults()
    cfg.recon.fill_defaults(seed=cfg.seed)
    cfg.validate()
    r = cfg.recon
    if r.temporal and (not r.enabled or r.stages != "joint"):
        raise EdadmError(f"--temporal-recon needs the joint block reconstruction; method {cfg.method} "
                         + ("does not reconstruct" if not r.enabled else f"reconstructs in {r.stages} stages"))
    if warn:
        _warn_unused_options(config, cfg.calib.strategy, cfg.recon.stages if cfg.recon.enabled else None)
    cfg._user = copy.deepcopy(config)
    return cfg


def recon_for_bits(config, weight_bits: int):
    """The ReconConfig the same run would use at `weight_bits` (the recipe's per-bit-width
    tables resolved there, everything else as the user set it), for the layers a run holds
    at other bits than its own (mixed precision's 8-bit layers). Iterations and seed are the
    run's: only the per-bit values may differ."""
    user = copy.deepcopy(config._user if config.is_resolved else config)
    user.weight_bits, user.mixed_budget = weight_bits, 0.0
    other = resolve(user, warn=False).recon  # the run's own resolve already warned about its options
    run = resolve(config, warn=False).recon
    other.iters, other.act_iters, other.seed = run.iters, run.act_iters, run.seed
    return other


def _overlay(cfg, values: dict) -> None:
    for key, v in values.items():
        if key in ("calib", "recon"):
            sub = getattr(cfg, key)
            for k, x in v.items():
                if getattr(sub, k) is None:
                    setattr(sub, k, x)
        elif key != "preset" and getattr(cfg, key) is None:
            setattr(cfg, key, v)


def _warn_unused_options(user, strategy: str, recon_family: str | None) -> None:
    """A calibration strategy's or reconstruction family's own option set by the user while
    another one runs does nothing: say so."""
    from dataclasses import MISSING

    from ..calib import strategies
    from ..recon import stages

    for sub, owner_of, running, what in ((user.calib, strategies.owner_of, strategy, "the calibration strategy"),
                                         (user.recon, stages.owner_of, recon_family, "the reconstruction")):
        for f in fields(sub):
            owner = owner_of(f.name)
            default = f.default if f.default is not MISSING else None
            if owner is not None and owner != running and getattr(sub, f.name) != default:
                log.warning("%s is set but %s is %s: it only applies to %s", f.name.replace("_", "-"), what,
                            running or "off", owner)
