"""Loading pipelines (zoo names, local diffusers directories, quantized directories) and
the sampling loop shared by generation, calibration and evaluation.

The loop is the scheduler's own (`set_timesteps` / `step`), written out here rather than
calling `pipe(...)` so that calibration can see every x_t and images depend only on
(seed, image index), not on batch size.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .errors import EdadmError
from .utils import image_seed, initial_noise, resolve_device

log = logging.getLogger("edadm")

QUANT_FILE = "edadm_quant.json"
SAMPLING_FILE = "edadm_sampling.json"


@dataclass
class SamplingDefaults:
    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0  # classifier-free guidance (conditional models); 1: none
    prompts: list | None = None  # text-to-image: image i gets prompts[i mod len]; None: DEFAULT_PROMPTS


# the pipeline component that is quantized: UNets (DDPM / DDIM / LDM / Stable Diffusion) or
# the DiT transformer
DENOISER_NAMES = ("unet", "transformer")

# Prompts of text-to-image pipelines when none are given (--prompts FILE, or `prompts` in
# edadm_sampling.json beside the pipeline): short, varied captions in the style of MS-COCO,
# written for this project. Image i gets prompt i mod len(prompts), like class labels.
DEFAULT_PROMPTS = (
    "a cat sitting on a wooden bench", "a red bus driving down a city street", "a bowl of fruit on a kitchen table",
    "a man riding a surfboard on a wave", "a plate of pasta with vegetables", "two dogs playing in the grass",
    "a living room with a couch and a television", "an airplane flying over the mountains",
    "a giraffe standing next to a tree", "a bicycle parked by a brick wall", "a pizza with cheese and tomatoes",
    "a boat on a calm lake at sunset", "a child flying a kite on the beach", "a clock tower in the middle of a town",
    "a horse grazing in a field", "a bathroom with a white sink and a mirror",
)


def denoiser_name(pipe) -> str:
    for name in DENOISER_NAMES:
        if getattr(pipe, name, None) is not None:
            return name
    raise EdadmError(f"pipeline {type(pipe).__name__} has no denoiser (no {' or '.join(DENOISER_NAMES)} component)")


def get_denoiser(pipe) -> torch.nn.Module:
    """The module edadm quantizes: pipe.unet, or pipe.transformer for DiT."""
    return getattr(pipe, denoiser_name(pipe))


def is_transformer(model) -> bool:
    """DiT-style denoisers: per-sample timestep keyword, learned sigma in the upper output channels."""
    return not hasattr(getattr(model, "config", None), "block_out_channels") and hasattr(model, "transformer_blocks")


def call_denoiser(model, x: torch.Tensor, t, **kw) -> torch.Tensor:
    """eps (or v) prediction of any supported denoiser, with x's channels and dtype. DiT
    takes its timestep per sample and predicts a variance in its upper channels, dropped
    here (the samplers edadm drives use fixed variances), as DiTPipeline does. A denoiser
    run in another float dtype (compile_denoiser's bf16) gets its float inputs cast to it."""
    in_dtype = x.dtype
    dt = getattr(model, "dtype", in_dtype)
    if isinstance(dt, torch.dtype) and dt.is_floating_point and dt != in_dtype:
        x = x.to(dt)
        kw = {k: v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    if is_transformer(model):
        tt = torch.as_tensor(t, device=x.device).reshape(-1)
        out = model(x, timestep=tt.expand(x.shape[0]) if tt.numel() == 1 else tt, **kw).sample
    else:
        out = model(x, t, **kw).sample
    out = out[:, :x.shape[1]] if out.shape[1] > x.shape[1] else out
    return out.to(in_dtype)


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
    pipe._edadm_compiled = dtype
    return pipe


def num_classes(unet) -> int | None:
    """Class-conditional denoisers: the number of real classes; the null class used for
    classifier-free guidance is index num_classes. UNet2DModel (the zoo's convention: config
    num_class_embeds = classes + 1) and DiT (num_embeds_ada_norm real classes; its label
    embedding holds one more row, the null class, as in DiTPipeline)."""
    if is_transformer(unet):
        n = getattr(unet.config, "num_embeds_ada_norm", None)
        return int(n) if n and getattr(unet.config, "norm_type", None) == "ada_norm_zero" else None
    n = getattr(unet.config, "num_class_embeds", None)
    return int(n) - 1 if n else None


def is_text_conditional(pipe) -> bool:
    return getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None


def prompts_of(pipe) -> list[str]:
    p = (getattr(pipe, "_edadm_sampling", None) or {}).get("prompts")
    return list(p) if p else list(DEFAULT_PROMPTS)


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states, as StableDiffusionPipeline computes them (max-length
    padding, truncation, last hidden state); the text encoder stays full precision.

    Each distinct prompt is encoded once per text encoder and kept on the pipeline (a
    sampling or calibration loop asks for the same few prompts batch after batch; the
    encoder is deterministic in eval mode, so the cache changes no value)."""
    enc = pipe.text_encoder
    cache = getattr(pipe, "_edadm_prompt_cache", None)
    if cache is None or cache[0] is not enc or len(cache[1]) > 4096:
        cache = (enc, {})
        pipe._edadm_prompt_cache = cache
    table = cache[1]
    new = list(dict.fromkeys(p for p in prompts if p not in table))
    if new:
        tok = pipe.tokenizer(new, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        hidden = enc(tok.input_ids.to(_device_of(enc)))[0].float()
        table.update(zip(new, hidden))
    return torch.stack([table[p] for p in prompts])


def conditioning(pipe, start: int, count: int, labels: torch.Tensor | None = None,
                 guidance_scale: float = 1.0) -> tuple[dict, dict | None]:
    """(cond, uncond) denoiser kwargs of pipeline `pipe` for images start..start+count-1.

    Text-to-image pipelines: image i gets prompt i mod len(prompts) (encoder_hidden_states);
    uncond is the empty prompt. Class-conditional models: image i gets class i mod
    num_classes unless `labels` are given; uncond is the null class. Either depends only on
    the image index, like the noise; uncond only when guidance is on. Unconditional: ({}, None).
    """
    if isinstance(pipe, torch.nn.Module):
        raise TypeError("conditioning() takes the pipeline (text-to-image needs its tokenizer and text encoder), "
                        "not the denoiser")
    if is_text_conditional(pipe):
        ps = prompts_of(pipe)
        cond = {"encoder_hidden_states": encode_prompts(pipe, [ps[i % len(ps)] for i in range(start, start + count)])}
        uncond = ({"encoder_hidden_states": encode_prompts(pipe, [""] * count)} if guidance_scale != 1.0 else None)
        return cond, uncond
    k = num_classes(get_denoiser(pipe))
    if k is None:
        return {}, None
    if labels is None:
        labels = torch.arange(start, start + count) % k
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != count or (labels < 0).any() or (labels >= k).any():
        raise EdadmError(f"class labels must be {count} integers in 0..{k - 1}")
    uncond = {"class_labels": torch.full_like(labels, k)} if guidance_scale != 1.0 else None
    return {"class_labels": labels}, uncond


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


# Sampler settings of a pipeline directory without edadm_sampling.json: the diffusers
# pipeline's own __call__ defaults (Stable Diffusion guidance 7.5, DiT guidance 4.0).
PIPELINE_SAMPLING = {"StableDiffusionPipeline": {"steps": 50, "eta": 0.0, "guidance_scale": 7.5},
                     "DiTPipeline": {"steps": 50, "eta": 0.0, "guidance_scale": 4.0}}
SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline", "LDMPipeline", "StableDiffusionPipeline", "DiTPipeline")


def recorded_sampling(pipe, path: Path) -> dict | None:
    """Sampler settings for a loaded directory: edadm_sampling.json beside it, else the
    pipeline class's usual ones (PIPELINE_SAMPLING), else None (SamplingDefaults)."""
    return read_sampling_defaults(path) or PIPELINE_SAMPLING.get(type(pipe).__name__)


def quant_subdir(path: str | Path) -> str | None:
    """The denoiser folder of a quantized directory holding edadm's quantization file."""
    for name in DENOISER_NAMES:
        if (Path(path) / name / QUANT_FILE).is_file():
            return name
    return None


def is_quantized_dir(path: str | Path) -> bool:
    return quant_subdir(path) is not None


def load_pipeline(model: str | Path, device: str | torch.device | None = None, engine: str = "int",
                  compile: bool = False):
    """Load a zoo model, a diffusers pipeline directory, or an edadm quantized directory.

    engine (quantized directories only): "int" runs integer kernels (edadm.deploy.intengine),
    "fake" the float simulation used during calibration, "onnxruntime" / "openvino" the
    denoiser exported to ONNX on that runtime (edadm.deploy.runtimes). compile: torch.compile in bf16
    where the hardware computes it, else float32 (compile_denoiser), for long sampling runs.
    """
    if compile and engine in ("onnxruntime", "openvino"):
        raise EdadmError(f"--compile applies to edadm's own engines; {engine} compiles the ONNX graph itself")
    pipe = _load_pipeline(model, device, engine)
    return compile_denoiser(pipe) if compile else pipe


def _load_pipeline(model, device, engine):
    dev = resolve_device(device)
    path = resolve_model_path(model)
    if is_quantized_dir(path):
        from .deploy.runtimes import RUNTIME_ENGINES, load_runtime
        from .deploy.serialize import load_quantized

        if engine in RUNTIME_ENGINES:
            return load_runtime(path, engine, dev)
        return load_quantized(path, device=dev, engine=engine)
    if not (path / "model_index.json").is_file():
        raise EdadmError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    from diffusers import DiffusionPipeline

    quiet_diffusers()
    check_component_libraries(path)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types for broken directories
        raise EdadmError(f"cannot load pipeline from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not any(getattr(pipe, n, None) is not None for n in DENOISER_NAMES):
        raise EdadmError(f"{path}: pipeline {type(pipe).__name__} has no unet or transformer; supported: "
                         f"{', '.join(SUPPORTED_PIPELINES)}")
    pipe.set_progress_bar_config(disable=True)
    get_denoiser(pipe).eval()
    restore_scheduler(pipe, path)
    pipe._edadm_sampling = recorded_sampling(pipe, path)
    return pipe.to(dev)


def set_sampler(pipe, name: str) -> None:
    """Put sampler `name` (config.SAMPLERS) in place of the pipeline's scheduler, built from
    the same scheduler config (same training betas and prediction type)."""
    from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

    classes = {"ddim": (DDIMScheduler, {}), "ddpm": (DDPMScheduler, {}),
               "plms": (PNDMScheduler, {"skip_prk_steps": True})}
    if name not in classes:
        raise EdadmError(f"unknown sampler {name!r}; choose from {', '.join(classes)}")
    cls, kw = classes[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)


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


def sampling_defaults(pipe) -> SamplingDefaults:
    """The default sampler settings recorded with a pipeline (edadm key in model_index) or generic ones."""
    d = getattr(pipe, "_edadm_sampling", None)
    return SamplingDefaults(**d) if d else SamplingDefaults()


def _sample_shape(unet) -> tuple[int, int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (unet.config.in_channels, h, w)


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    if p is None:  # a runtime-backed denoiser (deploy.runtimes) has no parameters of its own
        p = next(module.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


@torch.no_grad()
def denoise(unet, scheduler, x: torch.Tensor, steps: int, eta: float = 0.0,
            noise_seeds: list[int] | None = None, callback: StepCallback | None = None,
            cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """Run the scheduler loop from x = x_T; returns x_0.

    callback(step_index, t, x_t, model_output) is called after each denoiser call.
    noise_seeds: one seed per image for stochastic samplers (eta > 0, DDPM).
    cond / uncond: denoiser kwargs (class_labels); with guidance_scale != 1 the denoiser sees
    one batch [uncond half; cond half] and eps = u + s * (c - u).
    """
    cond = {k: v.to(x.device) for k, v in (cond or {}).items()}
    guided = guidance_scale != 1.0 and uncond is not None
    both = _cat({k: v.to(x.device) for k, v in uncond.items()}, cond) if guided else None
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    x = x * sched.init_noise_sigma
    step_params = inspect.signature(sched.step).parameters
    gens = [torch.Generator().manual_seed(s) for s in noise_seeds] if noise_seeds else None
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t)
        if guided:
            u, c = call_denoiser(unet, torch.cat([inp, inp]), t, **both).chunk(2)
            out = u + guidance_scale * (c - u)
        else:
            out = call_denoiser(unet, inp, t, **cond)
        if callback is not None:
            callback(i, t, x, out)
        kwargs = {}
        if "eta" in step_params:
            kwargs["eta"] = eta
        stochastic = "variance_noise" in step_params or "generator" in step_params  # not PNDM / PLMS
        if gens is not None and stochastic and (eta > 0 or "eta" not in step_params):
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device, x.dtype)
            if "variance_noise" in step_params:
                kwargs["variance_noise"] = noise
            else:
                kwargs["generator"] = gens
        x = sched.step(out, t, x, **kwargs).prev_sample
    return x


DECODE_BATCH = 8


def autoencoder(pipe):
    """The latent-space decoder of the pipeline (AutoencoderKL `vae`, VQModel `vqvae`), or None."""
    for name in ("vae", "vqvae"):
        if getattr(pipe, name, None) is not None:
            return getattr(pipe, name)
    return None


@torch.no_grad()
def decode_latents(pipe, x0: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from the sampler's final x_0: decoded by the pipeline's autoencoder
    (which stays full precision) after undoing its scaling factor, as LDMPipeline,
    StableDiffusionPipeline and DiTPipeline do; pixel-space models return x0 unchanged."""
    ae = autoencoder(pipe)
    if ae is None:
        return x0
    sf = getattr(ae.config, "scaling_factor", 1.0) or 1.0
    p = next(ae.parameters())
    # a few latents at a time: a full-size decoder's activations at 512x512 take ~130 MB per
    # image per layer, so a sampling batch of 250 decoded at once would not fit in memory
    return torch.cat([ae.decode((x0[i:i + DECODE_BATCH] / sf).to(p.device, p.dtype)).sample.float()
                      for i in range(0, len(x0), DECODE_BATCH)])


def generate(pipe, num: int, seed: int = 0, steps: int | None = None, eta: float | None = None,
             batch_size: int = 250, start: int = 0, progress: bool = True,
             callback: Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
             guidance_scale: float | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Images start..start+num-1 of run `seed`, as float [num, C, H, W] in [0, 1] on CPU.

    callback(batch_start, step_index, t, x_t, model_output) sees every step of every batch.
    Class-conditional models: `labels` (one per image; default index mod classes) and
    classifier-free guidance (default: the pipeline's recorded guidance_scale).
    """
    if num <= 0:
        raise EdadmError(f"number of images must be positive, got {num}")
    defaults = sampling_defaults(pipe)
    steps = steps or defaults.steps
    eta = defaults.eta if eta is None else eta
    guidance = defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
    if labels is not None and len(labels) != num:
        raise EdadmError(f"{len(labels)} class labels for {num} images")
    unet = get_denoiser(pipe)
    dev = _device_of(unet)
    shape = _sample_shape(unet)
    outs = []
    bar = tqdm(total=num, desc="sampling", unit="img", disable=not progress)
    for b0 in range(start, start + num, batch_size):
        n = min(batch_size, start + num - b0)
        x = initial_noise(seed, b0, n, shape).to(dev)
        seeds = [image_seed(seed, b0 + k) ^ 0x5DEECE66D for k in range(n)]
        cb = (lambda i, t, xt, out, _b=b0: callback(_b, i, t, xt, out)) if callback else None
        lab = None if labels is None else torch.as_tensor(labels)[b0 - start:b0 - start + n]
        cond, uncond = conditioning(pipe, b0, n, labels=lab, guidance_scale=guidance)
        x0 = denoise(unet, pipe.scheduler, x, steps, eta, noise_seeds=seeds, callback=cb, cond=cond, uncond=uncond,
                     guidance_scale=guidance)
        outs.append((decode_latents(pipe, x0).float().cpu() / 2 + 0.5).clamp(0, 1))
        bar.update(n)
    bar.close()
    return torch.cat(outs)
