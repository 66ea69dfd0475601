"""Typed state: a diffusers pipeline with the sampler settings it is meant for and, once
quantized, its config and report. edadm.load and edadm.quantize return it; every function
that takes a pipeline takes this or a plain diffusers pipeline (as_pipeline wraps one with
its class's sampler settings). Nothing edadm needs is hidden on the diffusers object."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# The diffusers pipelines' own __call__ sampler settings, for a pipeline directory without
# edadm_sampling.json (Stable Diffusion guidance 7.5, DiT guidance 4.0); other classes take
# SamplingSettings' defaults. The one table of sampler defaults.
PIPELINE_SAMPLING = {"StableDiffusionPipeline": {"steps": 50, "eta": 0.0, "guidance_scale": 7.5},
                     "DiTPipeline": {"steps": 50, "eta": 0.0, "guidance_scale": 4.0}}


@dataclass
class SamplingSettings:
    """Sampler settings a pipeline samples (and is calibrated) with by default."""

    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0  # classifier-free guidance (conditional models); 1: none
    prompts: list | None = None  # text-to-image: image i gets prompts[i mod len]; None: DEFAULT_PROMPTS

    @classmethod
    def of(cls, d: dict | None) -> "SamplingSettings":
        d = dict(d or {})
        if d.get("prompts") is not None:
            d["prompts"] = list(d["prompts"])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})

    def with_(self, **kw) -> "SamplingSettings":
        return replace(self, **{k: (list(v) if k == "prompts" and v is not None else v) for k, v in kw.items()})

    def to_dict(self) -> dict:
        d = {"steps": self.steps, "eta": self.eta, "guidance_scale": self.guidance_scale}
        if self.prompts is not None:
            d["prompts"] = list(self.prompts)
        return d


@dataclass
class QuantReport:
    """What quantization did and what it cost."""

    config: dict
    steps: int
    eta: float
    counts: list[int]            # calibration samples per sampler step
    timesteps: list[int]         # timestep value of each sampler step
    allocation: dict = field(default_factory=dict)  # strategy details (TDAC density / variety / radius)
    seconds: dict = field(default_factory=dict)
    peak_memory_mb: float | None = None
    recon: list[dict] = field(default_factory=list)  # per-unit reconstruction logs
    plan: dict = field(default_factory=dict)
    resumed: bool = False         # finished stages were read from a checkpoint
    layer_errors: list[dict] = field(default_factory=list)  # per-layer relative errors (quant.diagnostics)
    mixed_precision: dict = field(default_factory=dict)  # --mixed-budget: sensitivities, kept layers, bytes

    extra: dict = field(default_factory=dict)  # keys a caller added (the CLI's "source")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d.pop("extra"), **d}

    @classmethod
    def from_dict(cls, d: dict | None) -> "QuantReport | None":
        """A saved report back as a QuantReport (None stays None; unknown keys go to extra)."""
        if d is None:
            return None
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("config", {})
        for k in ("steps", "eta", "counts", "timesteps"):
            kw.setdefault(k, None)
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})



_OWN = {"pipe", "sampling", "config", "report", "source", "engine", "compiled", "prompt_cache", "correction"}


@dataclass(eq=False)
class Pipeline:
    """A diffusers pipeline and what edadm knows about it. Attribute access other than the
    fields below goes to the diffusers pipeline (`p.unet`, `p.scheduler = ...`)."""

    pipe: Any
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    config: Any = None        # QuantConfig of a quantized pipeline (what the user set, see QuantConfig)
    report: QuantReport | None = None  # what quantization did and cost
    source: Path | None = None  # the directory it was loaded from
    engine: str | None = None   # int / fake / onnxruntime / openvino for quantized directories
    compiled: Any = None        # the dtype compile_denoiser compiled it in
    prompt_cache: dict = field(default_factory=dict, repr=False)  # encode_prompts: prompt -> hidden states
    correction: Any = None      # output_correction.OutputCorrection (PTQD) the sampler applies, if fitted

    @property
    def quantized(self) -> bool:
        return self.config is not None

    def __getattr__(self, name):  # only for names that are not fields
        d = self.__dict__
        if name.startswith("__") or "pipe" not in d:
            raise AttributeError(name)
        return getattr(d["pipe"], name)

    def __setattr__(self, name, value):
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipe, name, value)

    def to(self, device):
        self.pipe.to(device)
        return self


def as_pipeline(obj) -> Pipeline:
    """A Pipeline as it is, or a diffusers pipeline wrapped with its class's sampler settings."""
    if isinstance(obj, Pipeline):
        return obj
    return Pipeline(pipe=obj, sampling=SamplingSettings.of(PIPELINE_SAMPLING.get(type(obj).__name__)))


def diffusers_pipeline(obj):
    """The diffusers pipeline inside a Pipeline (or obj itself)."""
    return obj.pipe if isinstance(obj, Pipeline) else obj


def pipeline_class(obj) -> str:
    """The diffusers class name of a pipeline, wrapped or not (for messages)."""
    return type(diffusers_pipeline(obj)).__name__
