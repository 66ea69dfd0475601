"""Quantization recipes as data: one TOML file per method in this directory.

A recipe is a whole procedure (calibration set, activation range kind, reconstruction stages,
optimiser, loss), stated with the reference code's values. A file `NAME.toml` registers the
method NAME; nothing else needs editing to add one. Sections map onto QuantConfig:

- ``per_dataset = true``: the EDA-DM scripts' per-dataset values (config.DATASET_PRESETS:
  calibration size, lambda, add_loss, iterations, rounding lr) apply under ``--preset``;
- ``[quant]``: top-level QuantConfig fields (split_shortcut, act_range_kind);
- ``[calib]``: CalibConfig fields;
- ``[recon]``: ReconConfig fields, plus ``reference_iters`` / ``reference_act_iters`` (the
  reference's iterations per unit, scaled by ReconConfig.iters_scale unless iters is set).

A value that depends on the weight bit width is a table ``{ w4 = ..., w8 = ... }``: the entry
for the largest key not above the config's weight bits (w4 serves 2..7 bits, w8 serves 8).
"""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdadmError

_DIR = Path(__file__).parent
_SECTIONS = ("quant", "calib", "recon")


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    reference: str
    per_dataset: bool = False  # the EDA-DM scripts' per-dataset values (config.DATASET_PRESETS) apply
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


# Knobs shown by markdown_table, in order: (label, section, field); section None: QuantConfig.
KNOBS = [
    ("calibration strategy", "calib", "strategy"), ("calibration samples N", "calib", "num_samples"),
    ("FP trajectories B", "calib", "num_trajectories"), ("uniform steps", "calib", "uniform_steps"),
    ("TDAC lambda", "calib", "tdac_lambda"), ("TDAC radius", "calib", "tdac_radius"),
    ("activation range kind", None, "act_range_kind"), ("activation range search", None, "act_range"),
    ("weight range search", None, "weight_range"), ("Lp of the range searches", None, "lp"),
    ("weights symmetric", None, "weight_symmetric"), ("split shortcut", None, "split_shortcut"),
    ("reconstruction", "recon", "enabled"), ("stages", "recon", "stages"),
    ("reference iterations per unit (stage 1 / joint)", "recon", "reference_iters"),
    ("reference iterations per unit (stage 2)", "recon", "reference_act_iters"),
    ("iterations at the default scale (stage 1 / joint)", "recon", "iters"),
    ("iterations at the default scale (stage 2)", "recon", "act_iters"), ("batch", "recon", "batch_size"),
    ("rounding lr (Adam)", "recon", "lr_weight"), ("rounding lr schedule", "recon", "lr_weight_schedule"),
    ("rounding regulariser weight", "recon", "round_weight"), ("regulariser beta", "recon", "b_start"),
    ("regulariser warm-up", "recon", "warmup"), ("step-size lr (Adam, cosine)", "recon", "lr_act"),
    ("step-size lr relative to the initial step", "recon", "lr_act_relative"),
    ("stage-2 loss exponent p", "recon", "act_loss_p"), ("FBR inner-layer weight", "recon", "add_loss"),
    ("QDrop input mixing", "recon", "input_mix_prob"), ("QDrop activation drop", "recon", "act_drop_prob"),
]


def markdown_table() -> str:
    """Every knob of every recipe as QuantConfig resolves it, W4 / W8 where they differ
    (docs/recipes.md embeds this table; a test checks it is current)."""
    from ..config import QuantConfig

    first = ["naive", "ptq4dm", "qdiffusion", "eda-dm"]
    order = [n for n in first if n in names()] + [n for n in names() if n not in first]
    cfgs = {n: (QuantConfig(method=n, weight_bits=4), QuantConfig(method=n, weight_bits=8)) for n in order}
    stage2 = {"reference_act_iters", "act_iters", "act_loss_p"}
    rounding_reg = {"b_start", "warmup"}

    def value(c, section, key):
        r = c.recon
        if section == "recon" and key != "enabled" and not r.enabled:
            return "-"  # no reconstruction: its knobs do not apply
        if (key in stage2 and r.stages != "two-stage") or (key in rounding_reg and r.round_weight == 0):
            return "-"
        if (key == "uniform_steps" and c.calib.strategy != "uniform") or (
                key in ("tdac_lambda", "tdac_radius") and c.calib.strategy != "tdac"):
            return "-"
        if key == "b_start":
            return f"{r.b_start:g} -> {r.b_end:g}"
        if key == "weight_symmetric" and c.weight_symmetric is None:
            return "yes at 8 bits, no below"
        v = getattr(c if section is None else getattr(c, section), key)
        return f"{v:g}" if isinstance(v, float) else str(v)

    def cell(n, section, key):
        vals = [value(c, section, key) for c in cfgs[n]]
        return vals[0] if vals[0] == vals[1] else f"{vals[0]} (W4) / {vals[1]} (W8)"

    lines = ["| knob | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for label, section, key in KNOBS:
        lines.append(f"| {label} | " + " | ".join(cell(n, section, key) for n in order) + " |")
    return "\n".join(lines)

