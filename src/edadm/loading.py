"""Loading: zoo names and local directories (diffusers pipelines, edadm quantized
directories on any engine) into a Pipeline, and compilation of its denoiser. The room above
deploy: it chooses the engine; deploy reads the files."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .deploy.layout import (
    check_component_libraries,
    is_quantized_dir,
    quiet_diffusers,
    recorded_sampling,
    restore_scheduler,
)
from .errors import EdadmError
from .model.families import components, get_denoiser
from .state import Pipeline, as_pipeline
from .utils import resolve_device

log = logging.getLogger("edadm")

SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline", "LDMPipeline", "StableDiffusionPipeline", "DiTPipeline")


def resolve_model_path(model: str | Path) -> Path:
    """A zoo name or an existing directory."""
    from . import zoo

    p = Path(model)
    if p.is_dir():
        return p
    if str(model) in zoo.PIPELINES or str(model) in zoo.CLASSIFIERS:
        return zoo.zoo_path(str(model))
    if p.exists():
        raise EdadmError(f"{model} is not a directory; pass a diffusers pipeline directory or a zoo name")
    raise EdadmError(f"model {str(model)!r} not found: not a directory and not a zoo name "
                     f"(zoo: {', '.join(zoo.PIPELINES)})")


def load_pipeline(model: str | Path, device: str | torch.device | None = None, engine: str = "int",
                  compile: bool = False, dtype: torch.dtype | str | None = "auto") -> Pipeline:
    """Load a zoo model, a diffusers pipeline directory, or an edadm quantized directory.

    engine (quantized directories only): "int" runs integer kernels (edadm.deploy.intengine),
    "fake" the float simulation used during calibration, "onnxruntime" / "openvino" the
    denoiser exported to ONNX on that runtime (edadm.deploy.runtimes). compile: torch.compile in bf16
    where the hardware computes it, else float32 (compile_denoiser), for long sampling runs.
    dtype (quantized directories, torch engines): the denoiser's float dtype; "auto" is
    float16 for the integer engine on CUDA and float32 elsewhere (deploy.load.default_dtype).
    """
    if compile and engine in ("onnxruntime", "openvino"):
        raise EdadmError(f"--compile applies to edadm's own engines; {engine} compiles the ONNX graph itself")
    pipe = _load_pipeline(model, device, engine, dtype)
    return compile_denoiser(pipe) if compile else pipe


def _load_pipeline(model, device, engine, dtype="auto"):
    dev = resolve_device(device)
    path = resolve_model_path(model)
    if is_quantized_dir(path):
        from .deploy.runtimes import RUNTIME_ENGINES, load_runtime
        from .deploy.load import load_quantized

        if engine in RUNTIME_ENGINES:
            return load_runtime(path, engine, dev)
        return load_quantized(path, device=dev, engine=engine, dtype=dtype)
    if not (path / "model_index.json").is_file():
        raise EdadmError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    from diffusers import DiffusionPipeline

    quiet_diffusers()
    check_component_libraries(path)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types for broken directories
        raise EdadmError(f"cannot load pipeline from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not any(getattr(pipe, n, None) is not None for n in components()):
        raise EdadmError(f"{path}: pipeline {type(pipe).__name__} has no unet or transformer; supported: "
                         f"{', '.join(SUPPORTED_PIPELINES)}")
    pipe.set_progress_bar_config(disable=True)
    get_denoiser(pipe).eval()
    restore_scheduler(pipe, path)
    return Pipeline(pipe=pipe.to(dev), sampling=recorded_sampling(pipe, path), source=path)


def compile_dtype(device: torch.device | str) -> torch.dtype:
    """The float dtype `compile_denoiser` picks: bf16 on CUDA and on CPUs that compute it
    natively (AVX512_BF16, AMX); float32 elsewhere, where bf16 convolutions are emulated
    (measured 11-25x slower than float32 on an AVX2-only AMD EPYC)."""
    from .deploy.kernels import fast_float_dtype

    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return fast_float_dtype()


def compile_denoiser(pipe, dtype: torch.dtype | None = None):
    """Run the pipeline's denoiser on the fastest path bench/speed.py found: weights and
    activations in `dtype` (default `compile_dtype`: bf16 where the hardware has it, else
    float32), channels_last, torch.compile with inductor freezing (the
    weights become constants, prepacked once). Shapes are static: the first call for each
    input shape compiles (tens of seconds for small UNets, minutes for Stable Diffusion's),
    later calls reuse it. Works for FP, fake-quant and integer-engine denoisers; numerics
    change to bf16 (integer layers still take the same uint8 / int8 codes). Returns pipe."""
    import warnings

    import torch._inductor.config as inductor_config

    # inductor's int8 conv lowering copy-constructs a tensor and warns about it on every
    # compile: torch-internal noise, not actionable for users
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                            module=r"torch\._inductor")
    if not hasattr(torch, "compile"):  # pragma: no cover - torch is pinned
        raise EdadmError("this PyTorch has no torch.compile")
    model = get_denoiser(pipe)
    if dtype is None:
        first = next(iter(model.parameters()), None)
        dtype = compile_dtype(first.device if first is not None else next(model.buffers()).device)
    log.info("compiling the denoiser in %s, channels_last", str(dtype).replace("torch.", ""))
    # freezing is a process-wide inductor switch; it only affects graphs compiled in inference mode
    inductor_config.freezing = True
    model.to(dtype=dtype, memory_format=torch.channels_last)
    model.compile(dynamic=False)
    pipe = as_pipeline(pipe)
    pipe.compiled = dtype
    return pipe
