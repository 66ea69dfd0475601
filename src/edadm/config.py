"""The quantization config: versioned dataclasses that hold what the user set and round-trip
to JSON. `recipes.resolve(config)` returns what a run uses (the method's recipe, the dataset
preset and the fallbacks filled in); both are saved with a quantized model.

Every field is declared once, with `option(...)`: its default, help, choices and range. The
checks below (`check`) and the `edadm quantize` flags (cli/quantize.py) are generated from
those declarations, so a new option is one field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from . import recipes
from .calib import strategies
from .errors import EdadmError
from .output_correction import METHODS as OUTPUT_CORRECTIONS
from .recon import stages as recon_stages
from .recipes.presets import DATASET_PRESETS, PRESETS, preset_config  # noqa: F401  (re-exported)

CONFIG_VERSION = 1
CALIB_STRATEGIES = strategies.names()  # one file each under calib/strategies
RANGE_METHODS = ("mse", "minmax")

# Which layers stay at 8 bits and which inputs stay float (METHOD.md: the first
# time-embedding layer and the output layer) is the denoiser family's (model/families);
# keep_8bit / no_act_quant in a config replace the family's patterns.

# Methods are recipes: one data file each under edadm/recipes (the reference's calibration
# set, range kind, reconstruction stages and optimiser); a config field left at None takes
# the recipe's value, and a field the recipe does not name takes the section's _FALLBACK.
METHODS = recipes.names()
DEFAULT_METHOD = "eda-dm-plus"  # the best measured recipe (docs/recipes.md, "Measured")
ACT_RANGE_KINDS = ("free", "symmetric")
RECON_STAGES = recon_stages.names()  # recon/stages.py: one registered family each
LR_SCHEDULES = ("cosine", "constant")
STEP_BALANCE = ("none", "relative")
# Reconstruction iterations per unit are the reference's (recipe reference_iters) times this
# one factor, the same for every recipe, so CPU runs scale all methods alike; 1.0 is the
# reference's own count (Q-Diffusion 20000 + 5000, EDA-DM 5000 per unit). 0.16 (EDA-DM 800
# per unit) is the largest budget at which `edadm quantize digits-ddpm` with the default method
# stays under 10 minutes on 2 CPU cores (docs/recipes.md, "Iterations").
DEFAULT_ITERS_SCALE = 0.16
# `edadm demo`'s smaller budget (README command 1 must stay under 10 minutes on 2 cores with
# four models sampled): calibration samples and iteration factor of the methods it quantizes.
DEMO_NUM_SAMPLES = 256
DEMO_ITERS_SCALE = 0.04

# Samplers a preset (or --sampler) can put in place of the pipeline's own scheduler; the
# scheduler is rebuilt from the pipeline's scheduler config (same betas), so only the update
# rule changes. "plms" is Stable Diffusion's PNDM without Runge-Kutta warm-up steps.
SAMPLERS = ("ddim", "ddpm", "plms")


# ---- declaring a field --------------------------------------------------------------------

def option(default: Any = None, help: str = "", *, kind: str | None = None, lo: float | None = None,
           hi: float | None = None, choices: tuple | Callable[[], tuple] | None = None, flag: str | None = None,
           cli: bool = True, factory: Callable | None = None, nullable: bool | None = None):
    """A config field with what its checks and its command-line flag need.

    kind: "int", "float", "bool", "str", "radius" (a number or "auto") or "patterns" (a list
    of module-name patterns; comma-separated on the command line); default: from the default
    value. lo / hi: inclusive range; choices: allowed values (or a function returning them,
    for registries). flag: the command-line name (default: the field name with dashes);
    cli=False: no flag. nullable: None is a valid value (default: when the default is None,
    which means "the recipe's value")."""
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(default), "str")
    meta = {"help": help, "kind": kind, "lo": lo, "hi": hi, "choices": choices, "flag": flag, "cli": cli,
            "nullable": default is None if nullable is None else nullable}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _label(name: str) -> str:
    return name.replace("_", "-")


def choices_of(meta) -> tuple | None:
    c = meta.get("choices")
    return c() if callable(c) else c


def check(name: str, value: Any, meta) -> None:
    """One field's value against its declaration (EdadmError naming the field)."""
    label, kind, lo, hi = _label(name), meta["kind"], meta["lo"], meta["hi"]
    if value is None:
        if meta["nullable"]:
            return
        raise EdadmError(f"{label} must be set")
    if kind == "radius" and value == "auto":
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise EdadmError(f"{label} must be true or false, got {value!r}")
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise EdadmError(f"{label} must be an integer, got {value!r}")
    elif kind in ("float", "radius"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise EdadmError(f"{label} must be a number{' or auto' if kind == 'radius' else ''}, got {value!r}")
    elif kind == "patterns":
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise EdadmError(f"{label} must be a list of module-name patterns")
    elif not isinstance(value, str):
        raise EdadmError(f"{label} must be a string, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise EdadmError(f"{label} must be {span}, got {value!r}")
    allowed = choices_of(meta)
    if allowed is not None and value not in allowed:
        raise EdadmError(f"unknown {label} {value!r}; choose from {', '.join(map(str, allowed))}")


def check_fields(obj) -> None:
    """Every field of a config dataclass against its declaration."""
    for f in fields(obj):
        if "kind" in f.metadata:
            check(f.name, getattr(obj, f.name), f.metadata)


# ---- the three sections -------------------------------------------------------------------

@dataclass
class CalibConfig:
    """Calibration set. Fields at None take the recipe's value (edadm/recipes), else _FALLBACK.
    The options of one strategy name it first (tdac_*, ptq4dm_*); calib.strategies lists them."""

    strategy: str | None = option(None, "calibration strategy (default: the method's)", kind="str",
                                  choices=strategies.names)
    num_samples: int | None = option(None, "calibration samples N", kind="int", lo=1)
    num_trajectories: int | None = option(None, "FP trajectories B (>= N: every sample from its own trajectory)",
                                          kind="int", lo=1)
    uniform_steps: int | None = option(None, "steps used by uniform calibration", kind="int", lo=1)
    batch_size: int = option(64, "batch for trajectory collection and calibration passes", lo=1)
    tdac_lambda: float | None = option(None, "TDAC: weight of variety against density (reference 1.2)",
                                       kind="float", lo=0.0)
    tdac_radius: float | str = option("auto", "TDAC density radius: 'auto' (a quantile of pairwise step "
                                      "distances) or a number", kind="radius", lo=0.0)
    tdac_radius_quantile: float = option(0.2, "TDAC: the quantile 'auto' takes", lo=0.0, hi=1.0)
    # TDAC's min-max weights can leave whole stretches of the trajectory with no sample; this
    # is a floor under them
    tdac_uniform_share: float = option(0.0, "TDAC: share of N placed uniformly (on --uniform-steps steps), "
                                       "the rest by TDAC (0: the reference)", lo=0.0, hi=1.0)
    # issue 34: the others are run only up to the step their calibration sample is taken at
    tdac_trajectories: int = option(256, "TDAC: its statistics come from the first K trajectories, each "
                                    "collected whole (0: all of them)", lo=0)
    ptq4dm_mean: float = option(0.4, "PTQ4DM: timesteps ~ N(mean*T, std*T)", lo=0.0, hi=1.0)
    ptq4dm_std: float = option(0.4, "PTQ4DM: see --ptq4dm-mean", lo=1e-6)

    _FALLBACK = {"strategy": "uniform", "num_samples": 256, "num_trajectories": 256, "uniform_steps": 16,
                 "tdac_lambda": 1.2}

    def fill_defaults(self) -> "CalibConfig":
        """Fields still at None (no recipe named them) take _FALLBACK; returns self."""
        for k, v in self._FALLBACK.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        return self

    def validate(self) -> None:
        check_fields(self)


@dataclass
class ReconConfig:
    """Block reconstruction (BRECQ, + FBR inner-layer terms): AdaRound rounding and LSQ
    activation step sizes, jointly (EDA-DM) or in two stages (Q-Diffusion: rounding with
    activations in float, then activation step sizes alone). Fields at None take the recipe's
    value (edadm/recipes), else _FALLBACK."""

    enabled: bool | None = option(None, "block reconstruction (default: the method's)", kind="bool",
                                  flag="recon")
    stages: str | None = option(None, "joint or two-stage (Q-Diffusion: weights, then activations)",
                                kind="str", choices=recon_stages.names, flag="recon-stages")
    iters: int | None = option(None, "iterations per unit (two-stage: of the weight stage); default: the "
                               "recipe's reference count x --iters-scale", kind="int", lo=1)
    act_iters: int | None = option(None, "two-stage: iterations per unit of the activation stage", kind="int",
                                   lo=1)
    iters_scale: float = option(DEFAULT_ITERS_SCALE, "one factor on every recipe's reference iterations "
                                f"(default {DEFAULT_ITERS_SCALE}, for CPU; 1: the reference codes' counts)",
                                lo=1e-6, hi=100.0)
    reference_iters: int | None = option(None, "the reference's iterations per unit", kind="int", lo=1)
    reference_act_iters: int | None = option(None, "the reference's activation-stage iterations per unit",
                                             kind="int", lo=1)
    batch_size: int = option(32, "reconstruction batch", lo=1, flag="recon-batch-size")
    learn_rounding: bool | None = option(None, "AdaRound: learn each weight's rounding (off: round to "
                                         "nearest; the step sizes are still learned)", kind="bool")
    lr_weight: float | None = option(None, "AdaRound learning rate (Adam)", kind="float", lo=0.0)
    lr_weight_schedule: str | None = option(None, "AdaRound learning-rate schedule", kind="str",
                                            choices=LR_SCHEDULES)
    lr_act: float | None = option(None, "activation step-size learning rate (Adam, cosine decay)",
                                  kind="float", lo=0.0)
    lr_act_relative: bool | None = option(None, "lr-act times each quantizer's initial step size (edadm) "
                                          "or absolute", kind="bool")
    act_loss_p: float | None = option(None, "two-stage, stage 2: Lp loss exponent (2: MSE)", kind="float",
                                      lo=1.0, hi=10.0)
    learn_act_scale: bool = option(True, "learn activation step sizes (LSQ)")
    add_loss: float | None = option(None, "FBR inner-layer loss weight (0: BRECQ block loss)", kind="float",
                                    lo=0.0)
    round_weight: float | None = option(None, "AdaRound regulariser weight (0: off)", kind="float", lo=0.0)
    b_start: float = option(20.0, "AdaRound regulariser: annealed exponent, start", lo=0.0)
    b_end: float = option(2.0, "AdaRound regulariser: annealed exponent, end", lo=0.0)
    warmup: float = option(0.2, "fraction of iterations without the rounding regulariser", lo=0.0, hi=1.0)
    input_mix_prob: float | None = option(None, "QDrop: probability of the FP input, element-wise",
                                          kind="float", lo=0.0, hi=1.0, flag="qdrop")
    act_drop_prob: float | None = option(None, "QDrop: probability of keeping an activation in float",
                                         kind="float", lo=0.0, hi=1.0)
    # "none": one pooled MSE over the calibration samples (BRECQ, Q-Diffusion, EDA-DM);
    # "relative": recon.engine.step_balance_weights
    step_balance: str | None = option(None, "loss over timesteps: none (pooled MSE, the methods' own) or "
                                      "relative (each timestep's error relative to its error before "
                                      "reconstruction)", kind="str", choices=STEP_BALANCE)
    step_balance_bins: int = option(0, "relative step balance: weigh by the error of K equal stretches of "
                                    "the trajectory instead of each timestep's own (0: per timestep)", lo=0)
    temporal: bool = option(False, "TFMQ-DM: reconstruct the temporal information block (time embedding and "
                            "every ResBlock's time_emb_proj) on its own, over every sampler timestep, before the "
                            "blocks (recon/temporal.py)", flag="temporal-recon")
    seed: int | None = option(None, "reconstruction seed (default: --seed)", kind="int", flag="recon-seed")
    capture_mb: float = option(2048.0, "host memory (MB) for each of reconstruction's two capture caches: the FP "
                               "inputs of consecutive units captured in one forward pass of the FP model, and the "
                               "outputs of reconstructed units replayed in the quantized model's passes (0: every "
                               "unit's inputs by its own prefix passes, as BRECQ)", lo=0.0)

    _FALLBACK = {"enabled": False, "stages": "joint", "reference_iters": 1000, "reference_act_iters": 1000,
                 "learn_rounding": True, "lr_weight": 0.1, "lr_weight_schedule": "cosine", "lr_act": 1e-3,
                 "lr_act_relative": True, "act_loss_p": 2.0, "add_loss": 0.0, "round_weight": 0.01,
                 "input_mix_prob": 0.5, "act_drop_prob": 0.5, "step_balance": "none"}

    def fill_defaults(self, seed: int = 0) -> "ReconConfig":
        """Fields still at None (no recipe named them) take _FALLBACK, the seed `seed`, and the
        iterations the reference counts x iters_scale; returns self (a ReconConfig used on
        its own, without a QuantConfig and its recipe, is filled the same way)."""
        for k, v in self._FALLBACK.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.seed is None:
            self.seed = seed
        if self.iters is None:
            self.iters = max(1, round(self.reference_iters * self.iters_scale))
        if self.act_iters is None:
            self.act_iters = max(1, round(self.reference_act_iters * self.iters_scale))
        return self

    def validate(self) -> None:
        check_fields(self)


@dataclass
class QuantConfig:
    """Everything that decides how a denoiser is quantized, as the user set it: fields at None
    take the method's recipe (edadm/recipes/METHOD.toml) when `recipes.resolve` makes the
    config a run uses."""

    method: str = option(DEFAULT_METHOD, "recipe (edadm/recipes, docs/recipes.md)", choices=recipes.names)
    weight_bits: int = option(8, "weight bits", lo=2, hi=8)
    act_bits: int = option(8, "activation bits", lo=2, hi=8)
    weight_symmetric: bool | None = option(None, "symmetric weights (default: at 8 bits, for int8 kernels)",
                                           kind="bool")
    act_symmetric: bool = option(False, "signed activation codes with zero point 0 (the int engine needs "
                                 "unsigned)")
    act_range_kind: str | None = option(None, "activation range search: free (2-D) or symmetric (the "
                                        "references'); default: the recipe's", kind="str", choices=ACT_RANGE_KINDS)
    weight_range: str = option("mse", "weight range search", choices=RANGE_METHODS)
    act_range: str = option("mse", "activation range search", choices=RANGE_METHODS)
    lp: float = option(2.4, "Lp exponent of the range search", lo=1e-6)
    keep_8bit: list[str] | None = option(None, "layers kept at 8 bits, comma-separated module-name patterns "
                                         "(default: the family's)", kind="patterns")
    no_act_quant: list[str] | None = option(None, "layers whose input is not quantized (default: the family's)",
                                            kind="patterns")
    keep_fp: list[str] = option(None, "layers left in floating point", kind="patterns", factory=list)
    attn_bits: int | None = option(8, "bits of attention q, k, v and probabilities (None in a config file: "
                                   "attention matmuls in float)", kind="int", lo=2, hi=8, nullable=True)
    split_shortcut: bool | None = option(None, "split quantizers of skip-concatenation convs (Q-Diffusion; "
                                         "default: the method's)", kind="bool")
    steps: int | None = option(None, "sampler steps of the calibration trajectories (default: the model's)",
                               kind="int", lo=1)
    eta: float | None = option(None, "DDIM eta (default: the model's)", kind="float", lo=0.0, hi=1.0)
    guidance_scale: float | None = option(None, "classifier-free guidance of the trajectories (default: the "
                                          "pipeline's)", kind="float", lo=0.0, hi=100.0)
    sampler: str | None = option(None, "calibrate (and save) with this sampler instead of the pipeline's "
                                 "scheduler", kind="str", choices=SAMPLERS)
    preset: str | None = option(None, "the paper's settings for a dataset (sampler, steps, eta, guidance, "
                                "lambda, add-loss, iterations, learning rate, calibration size); a config file "
                                "and flags override it", kind="str", choices=PRESETS)
    mixed_budget: float = option(0.0, "mixed precision: keep the low-bit layers whose weights move the output "
                                 "most at 8 bits, adding at most this fraction of the weight codes' bytes "
                                 "(0: off; quant/sensitivity.py)", lo=0.0, hi=1.0)
    mixed_samples: int = option(64, "mixed precision: calibration samples the sensitivities are measured on",
                                lo=1)
    output_correction: str = option("none", "correct the quantized output noise at sampling time: none, or ptqd "
                                    "(PTQD's per-step slope and bias, fitted on held-out FP trajectories)",
                                    choices=OUTPUT_CORRECTIONS)
    correction_samples: int = option(64, "PTQD: held-out FP trajectories the per-step table is fitted on", lo=2)
    seed: int = option(0, "one seed for the whole quantization")
    calib: CalibConfig = field(default_factory=CalibConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    version: int = option(CONFIG_VERSION, "config format version", lo=0, hi=CONFIG_VERSION, cli=False)

    def __post_init__(self):
        if isinstance(self.calib, dict):
            self.calib = CalibConfig(**self.calib)
        if isinstance(self.recon, dict):
            self.recon = ReconConfig(**self.recon)
        self.validate()

    def validate(self) -> None:
        """Every value that is set (None: the recipe's, filled by recipes.resolve)."""
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version > CONFIG_VERSION:
            raise EdadmError(f"config version {self.version!r} is not supported by this edadm ({CONFIG_VERSION})")
        check_fields(self)
        self.calib.validate()
        self.recon.validate()

    @property
    def is_resolved(self) -> bool:
        return getattr(self, "_user", None) is not None

    def to_dict(self) -> dict:
        """What the user set (for a resolved config: the config it was resolved from);
        QuantConfig.from_dict of it resolves to the same config under the same recipes."""
        return asdict(self._user if self.is_resolved else self)

    def resolved_dict(self) -> dict:
        """Every value as quantization uses it (recipe and fallbacks applied)."""
        return asdict(recipes.resolve(self))

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        if not isinstance(d, dict):
            raise EdadmError("quantization config must be a JSON object")
        d = dict(d)
        subs = {}
        for key, sub_cls in (("calib", CalibConfig), ("recon", ReconConfig)):
            sub = d.pop(key, {}) or {}
            if not isinstance(sub, dict):
                raise EdadmError(f"{key} must be a JSON object")
            unknown = set(sub) - {f.name for f in fields(sub_cls)}
            if unknown:
                raise EdadmError(f"unknown {key} config keys: {', '.join(map(repr, sorted(unknown)))}")
            try:
                subs[key] = sub_cls(**sub)
            except TypeError as exc:
                raise EdadmError(f"bad {key} config: {exc}") from exc
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise EdadmError(f"unknown quantization config keys: {', '.join(map(repr, sorted(unknown)))}")
        try:
            return cls(**d, **subs)
        except TypeError as exc:
            raise EdadmError(f"bad quantization config: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "QuantConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdadmError(f"cannot read config {path}: {exc}") from exc
