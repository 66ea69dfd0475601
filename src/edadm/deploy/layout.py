"""Pipeline directories on disk: the files of a quantized directory (a diffusers pipeline
directory whose denoiser folder holds edadm's quantization record), the sampler settings
beside a pipeline, and what reading a diffusers directory needs beyond from_pretrained."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdadmError
from ..model.families import components
from ..state import PIPELINE_SAMPLING, SamplingSettings

QUANT_FILE = "edadm_quant.json"
SAMPLING_FILE = "edadm_sampling.json"
TENSOR_FILE = "edadm_quant.safetensors"   # integer codes (4-bit packed), scales, zero points, float params
CARD_FILE = "README.md"
FORMAT_VERSION = 1                        # of QUANT_FILE and TENSOR_FILE
NONPERSISTENT = "_nonpersistent_buffer."  # TENSOR_FILE prefix of non-persistent buffers


def tensor_part(kind: str, i: int) -> str:
    return kind if i == 0 else f"{kind}{i + 1}"
ONNX_DIR = "onnx"                         # exports cached by deploy.runtimes


def quant_subdir(path: str | Path) -> str | None:
    """The denoiser folder of a quantized directory holding edadm's quantization file."""
    for name in components():
        if (Path(path) / name / QUANT_FILE).is_file():
            return name
    return None


def is_quantized_dir(path: str | Path) -> bool:
    return quant_subdir(path) is not None


def read_sampling_defaults(path: Path) -> dict | None:
    """Sampler settings stored beside a pipeline (edadm_sampling.json), if any."""
    f = Path(path) / SAMPLING_FILE
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
        out = {"steps": int(d["steps"]), "eta": float(d.get("eta", 0.0)),
               "guidance_scale": float(d.get("guidance_scale", 1.0))}
        if d.get("prompts") is not None:
            if not isinstance(d["prompts"], list) or not d["prompts"] or not all(isinstance(x, str) for x in d["prompts"]):
                raise ValueError("prompts must be a non-empty list of strings")
            out["prompts"] = list(d["prompts"])
        return out
    except (ValueError, KeyError, TypeError) as exc:
        raise EdadmError(f"{f}: bad sampling settings ({exc})") from exc


def recorded_sampling(pipe, path: Path) -> SamplingSettings:
    """Sampler settings for a loaded directory: edadm_sampling.json beside it, else the
    pipeline class's usual ones (state.PIPELINE_SAMPLING), else SamplingSettings'."""
    return SamplingSettings.of(read_sampling_defaults(path) or PIPELINE_SAMPLING.get(type(pipe).__name__))


def check_component_libraries(path: Path) -> None:
    """One clear line when a component needs a library that is not installed (Stable
    Diffusion's CLIP text encoder and tokenizer need transformers)."""
    import importlib.util

    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise EdadmError(f"{path}/model_index.json: cannot read it ({exc})") from exc
    libs = {v[0] for v in index.values() if isinstance(v, list) and v and isinstance(v[0], str)}
    if "transformers" in libs and importlib.util.find_spec("transformers") is None:
        raise EdadmError(f"{path}: its text encoder / tokenizer need transformers: pip install \"edadm[text]\"")


def restore_scheduler(pipe, path: Path) -> None:
    """Use the scheduler class saved in `path`/scheduler: DDIMPipeline converts whatever it is
    given to DDIM, which would silently replace a calibrated sampler (for example PLMS)."""
    import diffusers

    f = Path(path) / "scheduler" / "scheduler_config.json"
    if getattr(pipe, "scheduler", None) is None or not f.is_file():
        return
    try:
        name = json.loads(f.read_text()).get("_class_name")
    except (OSError, ValueError):
        return  # from_pretrained already read it; nothing better to do here
    cls = getattr(diffusers, str(name), None)
    if cls is not None and type(pipe.scheduler) is not cls:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def quiet_diffusers() -> None:
    """Keep diffusers' own progress bars and advice out of edadm's output."""
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    try:  # text encoders of Stable Diffusion pipelines
        from transformers.utils import logging as tlog
    except ImportError:
        return
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


