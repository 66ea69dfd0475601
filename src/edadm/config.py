"""Versioned configuration dataclasses that round-trip to JSON, and the method presets."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import EdadmError

CONFIG_VERSION = 1
CALIB_STRATEGIES = ("uniform", "tdac", "ptq4dm", "random")
RANGE_METHODS = ("mse", "minmax")

# METHOD.md: the first time-embedding Linear and the output layer stay at 8 bits and the
# output layer's input is not quantized. Patterns are fnmatch-style over module names:
# UNets (time_embedding.linear_1, conv_out) and DiT (patch embedding pos_embed.proj, output
# projection proj_out_2); a pattern matching nothing does nothing.
DEFAULT_KEEP_8BIT = ("time_embedding.linear_1", "conv_out", "pos_embed.proj", "proj_out_2")
DEFAULT_NO_ACT_QUANT = ("conv_out", "proj_out_2")

# Each method is a choice of calibration strategy, reconstruction and FBR weight; every
# value can still be overridden. add_loss 0 is BRECQ's block loss; 0.8 the EDA-DM reference.
METHOD_PRESETS: dict[str, dict] = {
    "naive": {"strategy": "uniform", "recon": False, "add_loss": 0.0, "split_shortcut": False},
    "ptq4dm": {"strategy": "ptq4dm", "recon": True, "add_loss": 0.0, "split_shortcut": False},
    "qdiffusion": {"strategy": "uniform", "recon": True, "add_loss": 0.0, "split_shortcut": True},
    "eda-dm": {"strategy": "tdac", "recon": True, "add_loss": 0.8, "split_shortcut": True},
    "eda-dm-tdac-only": {"strategy": "tdac", "recon": True, "add_loss": 0.0, "split_shortcut": True},
    "eda-dm-fbr-only": {"strategy": "uniform", "recon": True, "add_loss": 0.8, "split_shortcut": True},
}
METHODS = tuple(METHOD_PRESETS)

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
# - lr_act stays edadm's (relative to each initial step size, not the reference's absolute).
# fbr_add_loss applies only to methods with FBR (their preset add_loss > 0), so a preset
# never turns Q-Diffusion's BRECQ loss into FBR; lr_weight follows the weight bits
# (reference CIFAR-10: 5e-1 at W4, 5e-2 at W8).
# lr_weight: the AdaRound learning rate per weight bit width, as the reference scripts pass it
# (scripts/for_*.sh of the EDA-DM code: --lr_w differs per dataset and per W4 / W8)
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
    if method not in METHOD_PRESETS:
        raise EdadmError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    p = DATASET_PRESETS[name]
    lrs = p["lr_weight"]
    recon = {"iters": p["iters"], "lr_weight": lrs[4] if weight_bits <= 4 else lrs[8]}
    if METHOD_PRESETS[method]["add_loss"] > 0:
        recon["add_loss"] = p["fbr_add_loss"]
    return {"preset": name, "sampler": p["sampler"], "steps": p["steps"], "eta": p["eta"],
            "guidance_scale": p["guidance_scale"],
            "calib": {"num_samples": p["num_samples"], "num_trajectories": p["num_samples"],
                      "tdac_lambda": p["tdac_lambda"]},
            "recon": recon}


def _check_positive_int(owner: str, name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise EdadmError(f"{owner}{name.replace('_', '-')} must be a positive integer, got {v!r}")


def _check_number(name: str, v, lo: float | None = None, hi: float | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise EdadmError(f"{name.replace('_', '-')} must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise EdadmError(f"{name.replace('_', '-')} must be in [{lo}, {hi}], got {v!r}")


@dataclass
class CalibConfig:
    strategy: str | None = None   # None: the method's
    num_samples: int = 256        # N: calibration samples
    num_trajectories: int = 256   # B: FP trajectories collected (>= N: every sample from its own trajectory)
    uniform_steps: int = 16       # uniform: number of evenly spaced steps used
    batch_size: int = 64          # batch for trajectory collection and calibration passes
    tdac_lambda: float = 1.2      # weight of variety against density (reference: 1.2 CIFAR-10 / ImageNet)
    tdac_radius: float | str = "auto"   # number, or "auto": a quantile of pairwise step distances
    tdac_radius_quantile: float = 0.2
    ptq4dm_mean: float = 0.4      # PTQ4DM: timesteps ~ N(mean*T, std*T)
    ptq4dm_std: float = 0.4

    def validate(self) -> None:
        if self.strategy is not None and self.strategy not in CALIB_STRATEGIES:
            raise EdadmError(f"unknown calibration strategy {self.strategy!r}; choose from {', '.join(CALIB_STRATEGIES)}")
        for name in ("num_samples", "num_trajectories", "uniform_steps", "batch_size"):
            _check_positive_int("calibration ", name, getattr(self, name))
        _check_number("tdac_lambda", self.tdac_lambda, 0.0)
        if self.tdac_radius != "auto":
            _check_number("tdac_radius", self.tdac_radius, 0.0)
        _check_number("tdac_radius_quantile", self.tdac_radius_quantile, 0.0, 1.0)
        _check_number("ptq4dm_std", self.ptq4dm_std, 1e-6)
        _check_number("ptq4dm_mean", self.ptq4dm_mean, 0.0, 1.0)


STEP_BALANCE = ("none", "relative")


@dataclass
class ReconConfig:
    """Block reconstruction (BRECQ) with the FBR loss; AdaRound + LSQ activation steps + QDrop."""

    enabled: bool | None = None   # None: the method's
    iters: int = 1000             # per unit (reference: 5000 CIFAR-10 / LSUN, 1000 ImageNet / SD)
    batch_size: int = 32
    # AdaRound rounding variables (Adam). 0.1, not BRECQ's 1e-3 over 20k iterations: at
    # 1000 iterations a smaller lr leaves most variables soft when rounding is made hard
    # (W4A8 digits-ddpm block: output error after/before 0.49 at 1e-2, 0.29 at 0.1,
    # bench/results/recon_lr.md).
    lr_weight: float = 0.1
    lr_act: float = 1e-3          # activation step sizes (Adam), relative to each initial step size
    learn_act_scale: bool = True
    add_loss: float | None = None  # FBR inner-layer weight; None: the method's (0 BRECQ, 0.8 EDA-DM)
    round_weight: float = 0.01    # AdaRound regulariser weight (0: off)
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2           # fraction of iterations without the rounding regulariser
    input_mix_prob: float = 0.5   # QDrop: probability of the FP input, element-wise
    act_drop_prob: float = 0.5    # QDrop: probability of keeping an activation in float
    # "none": one pooled MSE over the calibration samples (BRECQ, Q-Diffusion, EDA-DM);
    # "relative": each sample's error weighted by 1 / its timestep's error before
    # reconstruction (every timestep counts equally; recon.engine.step_balance_weights)
    step_balance: str = "none"
    seed: int = 0

    def validate(self) -> None:
        _check_positive_int("reconstruction ", "iters", self.iters)
        _check_positive_int("reconstruction ", "batch_size", self.batch_size)
        for name in ("lr_weight", "lr_act", "round_weight", "b_start", "b_end"):
            _check_number(name, getattr(self, name), 0.0)
        if self.add_loss is not None:
            _check_number("add_loss", self.add_loss, 0.0)
        for name in ("warmup", "input_mix_prob", "act_drop_prob"):
            _check_number(name, getattr(self, name), 0.0, 1.0)
        if self.step_balance not in STEP_BALANCE:
            raise EdadmError(f"step_balance must be one of {', '.join(STEP_BALANCE)}, got {self.step_balance!r}")


@dataclass
class QuantConfig:
    """Everything that decides how a denoiser is quantized.

    Fields left at None take the method's preset (METHOD_PRESETS) when the config is made.
    """

    method: str = "eda-dm"
    weight_bits: int = 8
    act_bits: int = 8
    weight_symmetric: bool | None = None  # None: symmetric at 8 bits (int8 kernels), asymmetric below
    act_symmetric: bool = False
    weight_range: str = "mse"
    act_range: str = "mse"
    lp: float = 2.4
    keep_8bit: list[str] = field(default_factory=lambda: list(DEFAULT_KEEP_8BIT))
    no_act_quant: list[str] = field(default_factory=lambda: list(DEFAULT_NO_ACT_QUANT))
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
        if self.method not in METHOD_PRESETS:
            raise EdadmError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        preset = METHOD_PRESETS[self.method]
        if self.calib.strategy is None:
            self.calib.strategy = preset["strategy"]
        if self.recon.enabled is None:
            self.recon.enabled = preset["recon"]
        if self.recon.add_loss is None:
            self.recon.add_loss = preset["add_loss"]
        if self.split_shortcut is None:
            self.split_shortcut = preset["split_shortcut"]
        self.validate()

    def validate(self) -> None:
        for name in ("weight_bits", "act_bits") + (("attn_bits",) if self.attn_bits is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 8:
                raise EdadmError(f"{name.replace('_', '-')} must be an integer in 2..8, got {v!r}")
        if self.method not in METHODS:
            raise EdadmError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in ("weight_range", "act_range"):
            if getattr(self, name) not in RANGE_METHODS:
                raise EdadmError(f"{name.replace('_', '-')} must be one of {', '.join(RANGE_METHODS)}")
        self.calib.validate()
        self.recon.validate()
        if self.steps is not None:
            _check_positive_int("", "steps", self.steps)
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
            if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
                raise EdadmError(f"{name.replace('_', '-')} must be a list of module-name patterns")
        if not isinstance(self.version, int) or self.version > CONFIG_VERSION:
            raise EdadmError(f"config version {self.version!r} is not supported by this edadm ({CONFIG_VERSION})")

    def to_dict(self) -> dict:
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
