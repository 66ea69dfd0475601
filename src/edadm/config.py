"""Versioned configuration dataclasses that round-trip to JSON, and the method presets."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import recipes
from .calib import strategies
from .errors import EdadmError

CONFIG_VERSION = 1
CALIB_STRATEGIES = strategies.names()  # one file each under calib/strategies
RANGE_METHODS = ("mse", "minmax")

# Which layers stay at 8 bits and which inputs stay float (METHOD.md: the first
# time-embedding layer and the output layer) is the denoiser family's (model/families);
# keep_8bit / no_act_quant in a config replace the family's patterns.

# Methods are recipes: one data file each under edadm/recipes (the reference's calibration
# set, range kind, reconstruction stages and optimiser); a config field left at None takes
# the recipe's value, and a field the recipe does not name takes the fallback below.
METHODS = recipes.names()
DEFAULT_METHOD = "eda-dm-plus"  # the best measured recipe (docs/recipes.md, "Measured")
ACT_RANGE_KINDS = ("free", "symmetric")
RECON_STAGES = ("joint", "two-stage")
LR_SCHEDULES = ("cosine", "constant")
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

# The paper's per-dataset settings (METHOD.md "Reference settings", reconstruction details).
# Every value is the base of the config: a config file and flags override it. Deliberate
# differences from the reference code, documented in the README:
# - tdac_radius stays "auto": the reference radii (3.0 pixel CIFAR-10 / ImageNet LDM, 0.3
#   LSUN / SD) depend on each model's feature scale; pass --tdac-radius to use them.
# - DDIM "quadratic skip" has no diffusers equivalent; diffusers' spacing is used.
# The sampler settings apply to every method (they are the evaluation's). The calibration
# and reconstruction values are the EDA-DM scripts' per dataset (scripts/for_*.sh: --lr_w per
# dataset and per W4 / W8, iterations, N, lambda, add_loss), so they apply only to recipes
# that declare `per_dataset = true` (eda-dm and its ablations); Q-Diffusion's recipe keeps
# its own. fbr_add_loss applies only where the recipe has FBR (add_loss > 0).
DATASET_PRESETS: dict[str, dict] = {
    "cifar10": {"about": "DDIM CIFAR-10 32x32, pixel space (google/ddpm-cifar10-32)", "sampler": "ddim",
                "steps": 100, "eta": 0.0, "guidance_scale": 1.0, "num_samples": 1024, "tdac_lambda": 1.2,
                "reference_radius": 3.0, "fbr_add_loss": 0.8, "iters": 5000, "lr_weight": {4: 0.5, 8: 0.05}},
    "lsun-bedroom": {"about": "LDM-4 LSUN-Bedroom 256x256", "sampler": "ddim", "steps": 200, "eta": 1.0,
                     "guidance_scale": 1.0, "num_samples": 1024, "tdac_lambda": 1.0, "reference_radius": 0.3,
                     "fbr_add_loss": 1.0, "iters": 5000, "lr_weight": {4: 1e-2, 8: 5e-4}},
    "lsun-church": {"about": "LDM-8 LSUN-Church 256x256", "sampler": "ddim", "steps": 500, "eta": 0.0,
                    "guidance_scale": 1.0, "num_samples": 1024, "tdac_lambda": 1.0, "reference_radius": 0.3,
                    "fbr_add_loss": 1.0, "iters": 5000, "lr_weight": {4: 5e-2, 8: 5e-2}},
    "imagenet": {"about": "LDM-4 ImageNet 256x256, class-conditional, classifier-free guidance",
                 "sampler": "ddim", "steps": 20, "eta": 0.0, "guidance_scale": 3.0, "num_samples": 1024,
                 "tdac_lambda": 1.2, "reference_radius": 3.0, "fbr_add_loss": 0.8, "iters": 1000,
                 "lr_weight": {4: 0.5, 8: 1e-4}},
    "coco": {"about": "Stable Diffusion v1.4 512x512 on MS-COCO prompts", "sampler": "plms", "steps": 50,
             "eta": 0.0, "guidance_scale": 7.5, "num_samples": 256, "tdac_lambda": 5.0, "reference_radius": 0.3,
             "fbr_add_loss": 0.8, "iters": 1000, "lr_weight": {4: 3e-2, 8: 5e-4}},
}
PRESETS = tuple(DATASET_PRESETS)


def preset_config(name: str, method: str = "eda-dm", weight_bits: int = 8) -> dict:
    """The config dict (QuantConfig.from_dict form) of dataset preset `name` for a method and
    weight bit width; merge a config file and flags over it."""
    if name not in DATASET_PRESETS:
        raise EdadmError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    recipe = recipes.get(method)
    p = DATASET_PRESETS[name]
    out = {"preset": name, "sampler": p["sampler"], "steps": p["steps"], "eta": p["eta"],
           "guidance_scale": p["guidance_scale"]}
    if recipe.per_dataset:
        lrs = p["lr_weight"]
        out["calib"] = {"num_samples": p["num_samples"], "num_trajectories": p["num_samples"],
                        "tdac_lambda": p["tdac_lambda"]}
        recon = {"reference_iters": p["iters"], "lr_weight": lrs[4] if weight_bits <= 4 else lrs[8]}
        if (recipe.recon.get("add_loss") or 0) > 0:
            recon["add_loss"] = p["fbr_add_loss"]
        out["recon"] = recon
    return out


def _check_int(owner: str, name: str, v, lo: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise EdadmError(f"{owner}{name.replace('_', '-')} must be {what}, got {v!r}")


def _check_number(name: str, v, lo: float | None = None, hi: float | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise EdadmError(f"{name.replace('_', '-')} must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise EdadmError(f"{name.replace('_', '-')} must be in [{lo}, {hi}], got {v!r}")


@dataclass
class CalibConfig:
    """Calibration set. Fields at None take the recipe's value (edadm/recipes), else _FALLBACK."""

    strategy: str | None = None          # uniform / tdac / ptq4dm / random
    num_samples: int | None = None       # N: calibration samples
    num_trajectories: int | None = None  # B: FP trajectories collected (>= N: every sample from its own trajectory)
    uniform_steps: int | None = None     # uniform: number of evenly spaced steps used
    batch_size: int = 64          # batch for trajectory collection and calibration passes
    tdac_lambda: float | None = None  # weight of variety against density (reference: 1.2 CIFAR-10 / ImageNet)
    tdac_radius: float | str = "auto"   # number, or "auto": a quantile of pairwise step distances
    tdac_radius_quantile: float = 0.2
    # TDAC: share of N placed as uniform calibration (on uniform_steps evenly spaced steps), the
    # rest by TDAC; 0 is the reference. TDAC's min-max weights can leave whole stretches of the
    # trajectory with no sample; this is a floor under them.
    tdac_uniform_share: float = 0.0
    # TDAC: its statistics come from the first tdac_trajectories trajectories, each collected
    # whole (every step's features); the others are run only up to the step their calibration
    # sample is taken at (issue 34). 0: every trajectory whole, the statistics over all B.
    tdac_trajectories: int = 256
    ptq4dm_mean: float = 0.4      # PTQ4DM: timesteps ~ N(mean*T, std*T)
    ptq4dm_std: float = 0.4

    _FALLBACK = {"strategy": "uniform", "num_samples": 256, "num_trajectories": 256, "uniform_steps": 16,
                 "tdac_lambda": 1.2}

    def fill_defaults(self) -> "CalibConfig":
        """Fields still at None (no recipe named them) take _FALLBACK; returns self."""
        for k, v in self._FALLBACK.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        return self

    def validate(self) -> None:
        if self.strategy is not None and self.strategy not in CALIB_STRATEGIES:
            raise EdadmError(f"unknown calibration strategy {self.strategy!r}; choose from {', '.join(CALIB_STRATEGIES)}")
        for name in ("num_samples", "num_trajectories", "uniform_steps", "batch_size"):
            if getattr(self, name) is not None:
                _check_int("calibration ", name, getattr(self, name))
        if self.tdac_lambda is not None:
            _check_number("tdac_lambda", self.tdac_lambda, 0.0)
        if self.tdac_radius != "auto":
            _check_number("tdac_radius", self.tdac_radius, 0.0)
        _check_number("tdac_radius_quantile", self.tdac_radius_quantile, 0.0, 1.0)
        _check_number("tdac_uniform_share", self.tdac_uniform_share, 0.0, 1.0)
        _check_int("calibration ", "tdac_trajectories", self.tdac_trajectories, lo=0)
        _check_number("ptq4dm_std", self.ptq4dm_std, 1e-6)
        _check_number("ptq4dm_mean", self.ptq4dm_mean, 0.0, 1.0)


STEP_BALANCE = ("none", "relative")


@dataclass
class ReconConfig:
    """Block reconstruction (BRECQ, + FBR inner-layer terms): AdaRound rounding and LSQ
    activation step sizes, jointly (EDA-DM) or in two stages (Q-Diffusion: rounding with
    activations in float, then activation step sizes alone). Fields at None take the recipe's
    value (edadm/recipes), else _FALLBACK."""

    enabled: bool | None = None
    stages: str | None = None          # "joint" or "two-stage"
    # iterations per unit: `iters` (stage 1 / joint) and `act_iters` (stage 2) when given,
    # else the recipe's reference count x iters_scale (one factor for every recipe)
    iters: int | None = None
    act_iters: int | None = None
    iters_scale: float = DEFAULT_ITERS_SCALE
    reference_iters: int | None = None
    reference_act_iters: int | None = None
    batch_size: int = 32
    # AdaRound: learn each weight's up / down rounding; False keeps round-to-nearest weights
    # (the step sizes are still learned in the joint stage; the "weights" stage has nothing to do)
    learn_rounding: bool | None = None
    lr_weight: float | None = None     # AdaRound rounding variables (Adam)
    lr_weight_schedule: str | None = None  # "cosine" (decay to 0) or "constant"
    lr_act: float | None = None        # activation step sizes (Adam, cosine decay)
    lr_act_relative: bool | None = None  # lr_act times each quantizer's initial step size (edadm) or absolute
    act_loss_p: float | None = None    # two-stage, stage 2: Lp loss exponent (2: MSE)
    learn_act_scale: bool = True
    add_loss: float | None = None      # FBR inner-layer weight (0: BRECQ block loss)
    round_weight: float | None = None  # AdaRound regulariser weight (0: off)
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2                # fraction of iterations without the rounding regulariser
    input_mix_prob: float | None = None  # QDrop: probability of the FP input, element-wise
    act_drop_prob: float | None = None   # QDrop: probability of keeping an activation in float
    # "none": one pooled MSE over the calibration samples (BRECQ, Q-Diffusion, EDA-DM);
    # "relative": each sample's error weighted by 1 / its timestep's error before
    # reconstruction (every timestep counts equally; recon.engine.step_balance_weights)
    step_balance: str | None = None
    # "relative" only: 0 weighs by each timestep's own error; K > 0 by the error of the
    # sample's K-th of the trajectory (K equal stretches of sampler steps), so a step with a
    # handful of samples (TDAC spreads N over every step) does not get a noisy weight.
    step_balance_bins: int = 0
    seed: int | None = None            # None: QuantConfig.seed (one seed for the whole quantization)

    _FALLBACK = {"enabled": False, "stages": "joint", "reference_iters": 1000, "reference_act_iters": 1000,
                 "learn_rounding": True, "lr_weight": 0.1, "lr_weight_schedule": "cosine", "lr_act": 1e-3, "lr_act_relative": True,
                 "act_loss_p": 2.0, "add_loss": 0.0, "round_weight": 0.01, "input_mix_prob": 0.5,
                 "act_drop_prob": 0.5, "step_balance": "none"}

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
        """Checks the values that are set (None: still to come from the recipe)."""
        for name in ("iters", "act_iters", "reference_iters", "reference_act_iters", "batch_size"):
            if getattr(self, name) is not None:
                _check_int("reconstruction ", name, getattr(self, name))
        _check_number("iters_scale", self.iters_scale, 1e-6, 100.0)
        for name in ("lr_weight", "lr_act", "round_weight", "b_start", "b_end", "add_loss"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0.0)
        if self.act_loss_p is not None:
            _check_number("act_loss_p", self.act_loss_p, 1.0, 10.0)
        for name in ("warmup", "input_mix_prob", "act_drop_prob"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0.0, 1.0)
        if self.stages is not None and self.stages not in RECON_STAGES:
            raise EdadmError(f"stages must be one of {', '.join(RECON_STAGES)}, got {self.stages!r}")
        if self.lr_weight_schedule is not None and self.lr_weight_schedule not in LR_SCHEDULES:
            raise EdadmError(f"lr_weight_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_weight_schedule!r}")
        _check_int("", "step_balance_bins", self.step_balance_bins, lo=0)
        if self.step_balance is not None and self.step_balance not in STEP_BALANCE:
            raise EdadmError(f"step_balance must be one of {', '.join(STEP_BALANCE)}, got {self.step_balance!r}")


@dataclass
class QuantConfig:
    """Everything that decides how a denoiser is quantized.

    Fields left at None take the method's recipe (edadm/recipes/METHOD.toml) when the config
    is made; what the recipe does not name takes the section's _FALLBACK.
    """

    method: str = DEFAULT_METHOD
    weight_bits: int = 8
    act_bits: int = 8
    weight_symmetric: bool | None = None  # None: symmetric at 8 bits (int8 kernels), asymmetric below
    act_symmetric: bool = False   # signed codes with zero point 0 (the int engine needs unsigned: False)
    # activation range search: "free" (lower and upper bound shrunk independently, 2-D) or
    # "symmetric" (the references': [-a, a], or [0, a] for non-negative inputs, 1-D); None: the recipe's
    act_range_kind: str | None = None
    weight_range: str = "mse"
    act_range: str = "mse"
    lp: float = 2.4
    keep_8bit: list[str] | None = None     # fnmatch patterns over module names; None: the family's
    no_act_quant: list[str] | None = None  # layers whose input is not quantized; None: the family's
    keep_fp: list[str] = field(default_factory=list)
    attn_bits: int | None = 8      # q, k, v and softmax probabilities; None: attention matmuls in float
    split_shortcut: bool | None = None  # Q-Diffusion split of skip-concatenation convs; None: the method's
    steps: int | None = None   # sampler steps for calibration trajectories; None: model default
    eta: float | None = None
    guidance_scale: float | None = None  # classifier-free guidance of the trajectories; None: the pipeline's
    sampler: str | None = None  # one of SAMPLERS in place of the pipeline's scheduler; None: keep it
    preset: str | None = None   # the dataset preset this config started from (record only)
    seed: int = 0
    calib: CalibConfig = field(default_factory=CalibConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if isinstance(self.calib, dict):
            self.calib = CalibConfig(**self.calib)
        if isinstance(self.recon, dict):
            self.recon = ReconConfig(**self.recon)
        recipe = recipes.get(self.method)  # one-line error for an unknown method
        self.calib.validate()  # what the user set, before the recipe fills the rest
        self.recon.validate()
        unset = self._unset_paths()
        bits = self.weight_bits if isinstance(self.weight_bits, int) else 8
        if self.preset is not None:  # the dataset preset overlays what the user left unset, then the recipe
            self._overlay(preset_config(self.preset, self.method, bits))
        quant = recipe.section("quant", bits)
        for key, fallback in (("split_shortcut", False), ("act_range_kind", "free")):
            if getattr(self, key) is None:
                setattr(self, key, quant.get(key, fallback))
        for sub, section in ((self.calib, "calib"), (self.recon, "recon")):
            values = recipe.section(section, bits)
            unknown = set(values) - {f.name for f in fields(sub)}
            if unknown:
                raise EdadmError(f"recipe {self.method}: unknown {section} keys {', '.join(sorted(unknown))}")
            for f in fields(sub):
                if getattr(sub, f.name) is None and f.name in values:
                    setattr(sub, f.name, values[f.name])
        self.calib.fill_defaults()
        self.recon.fill_defaults(seed=self.seed)
        # what the recipe and the fallbacks filled in: to_dict() leaves it out again, so a
        # saved config records what the user set and resolved_dict() what ran
        self._filled = {p: self._get(p) for p in unset if self._get(p) is not None}
        self.validate()

    def _overlay(self, values: dict) -> None:
        for key, v in values.items():
            if key in ("calib", "recon"):
                sub = getattr(self, key)
                for k, x in v.items():
                    if getattr(sub, k) is None:
                        setattr(sub, k, x)
            elif key != "preset" and getattr(self, key) is None:
                setattr(self, key, v)

    def _unset_paths(self) -> list[tuple[str | None, str]]:
        out = [(None, f.name) for f in fields(self) if getattr(self, f.name) is None]
        for section in ("calib", "recon"):
            sub = getattr(self, section)
            out += [(section, f.name) for f in fields(sub) if getattr(sub, f.name) is None]
        return out

    def _get(self, path):
        section, key = path
        return getattr(self if section is None else getattr(self, section), key)

    def validate(self) -> None:
        for name in ("weight_bits", "act_bits") + (("attn_bits",) if self.attn_bits is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 8:
                raise EdadmError(f"{name.replace('_', '-')} must be an integer in 2..8, got {v!r}")
        recipes.get(self.method)  # one-line error for an unknown method
        if self.act_range_kind not in ACT_RANGE_KINDS:
            raise EdadmError(f"act-range-kind must be one of {', '.join(ACT_RANGE_KINDS)}, got {self.act_range_kind!r}")
        for name in ("weight_range", "act_range"):
            if getattr(self, name) not in RANGE_METHODS:
                raise EdadmError(f"{name.replace('_', '-')} must be one of {', '.join(RANGE_METHODS)}")
        self.calib.validate()
        self.recon.validate()
        if self.steps is not None:
            _check_int("", "steps", self.steps)
        if self.eta is not None:
            _check_number("eta", self.eta, 0.0, 1.0)
        if self.guidance_scale is not None:
            _check_number("guidance_scale", self.guidance_scale, 0.0, 100.0)
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise EdadmError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.preset is not None and self.preset not in DATASET_PRESETS:
            raise EdadmError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        _check_number("lp", self.lp, 1e-6)
        for name in ("keep_8bit", "no_act_quant", "keep_fp"):
            v = getattr(self, name)
            if v is None and name != "keep_fp":
                continue
            if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
                raise EdadmError(f"{name.replace('_', '-')} must be a list of module-name patterns")
        if not isinstance(self.version, int) or self.version > CONFIG_VERSION:
            raise EdadmError(f"config version {self.version!r} is not supported by this edadm ({CONFIG_VERSION})")

    def to_dict(self) -> dict:
        """What the user set: fields the recipe filled are None again (unless changed since);
        QuantConfig.from_dict of it resolves to the same config under the same recipes."""
        d = asdict(self)
        for (section, key), filled in getattr(self, "_filled", {}).items():
            target = d if section is None else d[section]
            if target[key] == filled:
                target[key] = None
        return d

    def resolved_dict(self) -> dict:
        """Every value as quantization uses it (recipe and fallbacks applied)."""
        return asdict(self)

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
