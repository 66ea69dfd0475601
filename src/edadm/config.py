"""Versioned configuration dataclasses that round-trip to JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import EdadmError

CONFIG_VERSION = 1
METHODS = ("naive",)
CALIB_STRATEGIES = ("uniform",)
RANGE_METHODS = ("mse", "minmax")

# METHOD.md: the first time-embedding Linear and the output conv stay at 8 bits and the
# output conv's input is not quantized. Patterns are fnmatch-style over module names.
DEFAULT_KEEP_8BIT = ("time_embedding.linear_1", "conv_out")
DEFAULT_NO_ACT_QUANT = ("conv_out",)


@dataclass
class CalibConfig:
    strategy: str = "uniform"
    num_samples: int = 256        # N: calibration samples
    num_trajectories: int = 256   # B: FP trajectories collected (>= N gives distinct trajectories)
    uniform_steps: int = 16       # uniform: number of evenly spaced steps used
    batch_size: int = 64          # batch for trajectory collection and calibration passes


@dataclass
class QuantConfig:
    """Everything that decides how a denoiser is quantized."""

    method: str = "naive"
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
    split_shortcut: bool = False   # Q-Diffusion split of skip-concatenation convs
    steps: int | None = None   # sampler steps for calibration trajectories; None: model default
    eta: float | None = None
    seed: int = 0
    calib: CalibConfig = field(default_factory=CalibConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if isinstance(self.calib, dict):
            self.calib = CalibConfig(**self.calib)
        self.validate()

    def validate(self) -> None:
        for name in ("weight_bits", "act_bits") + (("attn_bits",) if self.attn_bits is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 8:
                raise EdadmError(f"{name.replace('_', '-')} must be an integer in 2..8, got {v!r}")
        if self.method not in METHODS:
            raise EdadmError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.calib.strategy not in CALIB_STRATEGIES:
            raise EdadmError(f"unknown calibration strategy {self.calib.strategy!r}; choose from {', '.join(CALIB_STRATEGIES)}")
        for name in ("weight_range", "act_range"):
            if getattr(self, name) not in RANGE_METHODS:
                raise EdadmError(f"{name.replace('_', '-')} must be one of {', '.join(RANGE_METHODS)}")
        for name in ("num_samples", "num_trajectories", "uniform_steps", "batch_size"):
            v = getattr(self.calib, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise EdadmError(f"calibration {name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps <= 0):
            raise EdadmError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.lp > 0:
            raise EdadmError(f"lp must be positive, got {self.lp!r}")
        if self.version > CONFIG_VERSION:
            raise EdadmError(f"config version {self.version} is newer than this edadm ({CONFIG_VERSION}); upgrade edadm")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        if not isinstance(d, dict):
            raise EdadmError("quantization config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EdadmError(f"unknown quantization config keys: {', '.join(unknown)}")
        calib = d.get("calib", {})
        if not isinstance(calib, dict):
            raise EdadmError("calib must be a JSON object")
        cknown = {f.name for f in fields(CalibConfig)}
        if set(calib) - cknown:
            raise EdadmError(f"unknown calibration config keys: {', '.join(sorted(set(calib) - cknown))}")
        try:
            return cls(**{**d, "calib": CalibConfig(**calib)})
        except TypeError as exc:
            raise EdadmError(f"bad quantization config: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "QuantConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise EdadmError(f"cannot read config {path}: {exc}") from exc
