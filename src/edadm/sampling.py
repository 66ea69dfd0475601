"""Sampling: conditioning (class labels, prompts), the scheduler loop, generation and
decoding, and the one resolver of sampler settings.

The loop is the scheduler's own (`set_timesteps` / `step`), written out here rather than
calling `pipe(...)` so that calibration can see every x_t and images depend only on
(seed, image index), not on batch size.
"""
from __future__ import annotations

import copy
import inspect
import logging
from typing import Callable

import torch
from tqdm.auto import tqdm

from .errors import EdadmError
from .model.families import call_denoiser, get_denoiser, num_classes, sample_shape
from .state import SamplingSettings, as_pipeline, pipeline_class
from .utils import device_of, image_seed, initial_noise

log = logging.getLogger("edadm")

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


def sampling_defaults(pipe) -> SamplingSettings:
    """The sampler settings a pipeline samples with by default (recorded beside it, or its class's)."""
    return as_pipeline(pipe).sampling


def resolve_sampling(pipe, steps: int | None = None, eta: float | None = None,
                     guidance_scale: float | None = None) -> SamplingSettings:
    """The one place sampler settings are resolved: what the caller gives, else the
    pipeline's defaults."""
    d = sampling_defaults(pipe)
    return d.with_(steps=steps or d.steps, eta=d.eta if eta is None else float(eta),
                   guidance_scale=d.guidance_scale if guidance_scale is None else float(guidance_scale))


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


def is_text_conditional(pipe) -> bool:
    return getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None


def prompts_of(pipe) -> list[str]:
    p = sampling_defaults(pipe).prompts
    return list(p) if p else list(DEFAULT_PROMPTS)


def with_prompts(pipe, prompts: list[str]):
    """The pipeline (as a Pipeline) sampling and calibrating with these prompts."""
    if not is_text_conditional(pipe):
        raise EdadmError(f"sampling with prompts needs a text-to-image pipeline; {pipeline_class(pipe)} "
                         "has no text encoder")
    if not prompts:
        raise EdadmError("the prompt list is empty")
    pipe = as_pipeline(pipe)
    pipe.sampling = pipe.sampling.with_(prompts=list(prompts))
    return pipe


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states, as StableDiffusionPipeline computes them (max-length
    padding, truncation, last hidden state); the text encoder stays full precision.

    Each distinct prompt is encoded once per text encoder and kept on the pipeline (a
    sampling or calibration loop asks for the same few prompts batch after batch; the
    encoder is deterministic in eval mode, so the cache changes no value)."""
    p = as_pipeline(pipe)
    enc = p.text_encoder
    if p.prompt_cache.get("encoder") is not enc or len(p.prompt_cache.get("table", ())) > 4096:
        p.prompt_cache.clear()
        p.prompt_cache.update(encoder=enc, table={})
    table = p.prompt_cache["table"]
    new = list(dict.fromkeys(p for p in prompts if p not in table))
    if new:
        tok = p.tokenizer(new, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        hidden = enc(tok.input_ids.to(device_of(enc)))[0].float()
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


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _guided(unet, inp, t, cond: dict, both: dict | None, guidance_scale: float) -> torch.Tensor:
    if both is not None:
        u, c = call_denoiser(unet, torch.cat([inp, inp]), t, **both).chunk(2)
        return u + guidance_scale * (c - u)
    return call_denoiser(unet, inp, t, **cond)


def guided_output(unet, inp: torch.Tensor, t, cond: dict | None, uncond: dict | None,
                  guidance_scale: float = 1.0) -> torch.Tensor:
    """The denoiser output one sampler step uses: with guidance, u + s * (c - u) from one
    batch [uncond half; cond half], as `denoise` computes it."""
    cond = {k: v.to(inp.device) for k, v in (cond or {}).items()}
    guided = guidance_scale != 1.0 and uncond is not None
    both = _cat({k: v.to(inp.device) for k, v in uncond.items()}, cond) if guided else None
    return _guided(unet, inp, t, cond, both, guidance_scale)


def active_correction(pipe, steps: int, guidance_scale: float):
    """The pipeline's saved output correction if it fits these sampler settings, else None
    (with a warning when one is saved but belongs to another step count or guidance)."""
    corr = getattr(as_pipeline(pipe), "correction", None)
    if corr is None:
        return None
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    if corr.matches(steps, guidance_scale, len(sched.timesteps)):
        return corr
    log.warning("the saved output correction (PTQD) was fitted for %d steps, guidance %g; sampling with %d steps, "
                "guidance %g runs without it", corr.steps, corr.guidance_scale, steps, guidance_scale)
    return None


@torch.no_grad()
def denoise(unet, scheduler, x: torch.Tensor, steps: int, eta: float = 0.0,
            noise_seeds: list[int] | None = None, callback: StepCallback | None = None,
            cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0,
            until: int | None = None, correction=None) -> torch.Tensor:
    """Run the scheduler loop from x = x_T; returns x_0 (with `until`: x_t of that step index,
    the loop stopped after its denoiser call and callback).

    callback(step_index, t, x_t, model_output) is called after each denoiser call.
    noise_seeds: one seed per image for stochastic samplers (eta > 0, DDPM).
    cond / uncond: denoiser kwargs (class_labels); with guidance_scale != 1 the denoiser sees
    one batch [uncond half; cond half] and eps = u + s * (c - u).
    correction: an output_correction.OutputCorrection (PTQD) applied to each step's output
    (the callback sees the corrected one); with eta > 0 it also scales DDIM's variance noise.
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
        out = _guided(unet, inp, t, cond, both, guidance_scale)
        if correction is not None:
            out = correction.apply(i, out)
        if callback is not None:
            callback(i, t, x, out)
        if until is not None and i >= until:
            return x
        kwargs = {}
        if "eta" in step_params:
            kwargs["eta"] = eta
        stochastic = "variance_noise" in step_params or "generator" in step_params  # not PNDM / PLMS
        if gens is not None and stochastic and (eta > 0 or "eta" not in step_params):
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device, x.dtype)
            if correction is not None and "variance_noise" in step_params:
                noise = noise * correction.noise_factor(sched, i, t, eta)
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
             guidance_scale: float | None = None, labels: torch.Tensor | None = None,
             correct: bool = True) -> torch.Tensor:
    """Images start..start+num-1 of run `seed`, as float [num, C, H, W] in [0, 1] on CPU.

    correct: apply the quantized pipeline's saved output correction (PTQD, if it has one and
    it was fitted for these sampler settings); False samples the denoiser's raw outputs.

    callback(batch_start, step_index, t, x_t, model_output) sees every step of every batch.
    Class-conditional models: `labels` (one per image; default index mod classes) and
    classifier-free guidance (default: the pipeline's recorded guidance_scale).
    """
    if num <= 0:
        raise EdadmError(f"number of images must be positive, got {num}")
    pipe = as_pipeline(pipe)  # one wrapper for the whole run: its prompt cache lives as long
    settings = resolve_sampling(pipe, steps, eta, guidance_scale)
    steps, eta, guidance = settings.steps, settings.eta, settings.guidance_scale
    if labels is not None and len(labels) != num:
        raise EdadmError(f"{len(labels)} class labels for {num} images")
    unet = get_denoiser(pipe)
    dev = device_of(unet)
    shape = sample_shape(unet)
    correction = active_correction(pipe, steps, guidance) if correct else None
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
                     guidance_scale=guidance, correction=correction)
        outs.append((decode_latents(pipe, x0).float().cpu() / 2 + 0.5).clamp(0, 1))
        bar.update(n)
    bar.close()
    return torch.cat(outs)


@torch.no_grad()
def states_at(pipe, indices, at_steps, seed: int = 0, steps: int | None = None, eta: float | None = None,
              batch_size: int = 64, guidance_scale: float | None = None, progress: bool = True) -> torch.Tensor:
    """x_t of image indices[k] of run `seed` at sampler step at_steps[k] (step 0 is x_T), as
    float [K, ...] on CPU: what `generate`'s callback sees for that image and step.

    Each image is denoised only up to its own step: images are batched in the order of their
    steps, and a batch stops at its last image's step. A calibration set of one sample per
    trajectory at uniformly spread steps costs about half of the whole trajectories (issue 34).
    An image depends only on (seed, index), so the states are those of `generate` up to the
    float rounding of other batch compositions."""
    pipe = as_pipeline(pipe)
    settings = resolve_sampling(pipe, steps, eta, guidance_scale)
    steps, eta, guidance = settings.steps, settings.eta, settings.guidance_scale
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    at = torch.as_tensor(at_steps, dtype=torch.long).reshape(-1)
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    n_steps = len(sched.timesteps)  # PLMS runs one more denoiser call than `steps`
    if idx.numel() != at.numel() or (at < 0).any() or (at >= n_steps).any():
        raise EdadmError(f"states_at: {idx.numel()} indices need as many steps in 0..{n_steps - 1}")
    unet = get_denoiser(pipe)
    dev = device_of(unet)
    shape = sample_shape(unet)
    out = torch.empty((idx.numel(), *shape))
    order = torch.argsort(at, stable=True)
    bar = tqdm(total=int((at + 1).sum()), desc="trajectories", unit="step", disable=not progress)
    for b in range(0, order.numel(), batch_size):
        sel = order[b:b + batch_size]
        ids, want = idx[sel].tolist(), at[sel]
        x = torch.cat([initial_noise(seed, i, 1, shape) for i in ids]).to(dev)
        seeds = [image_seed(seed, i) ^ 0x5DEECE66D for i in ids]
        parts = [conditioning(pipe, i, 1, guidance_scale=guidance) for i in ids]
        cond = {k: torch.cat([c[k] for c, _ in parts]) for k in parts[0][0]}
        uncond = ({k: torch.cat([u[k] for _, u in parts]) for k in parts[0][1]} if parts[0][1] is not None else None)

        def keep(i, t, xt, o, _sel=sel, _want=want):
            rows = (_want == i).nonzero().flatten()
            if rows.numel():
                out[_sel[rows]] = xt[rows.to(xt.device)].float().cpu()
            bar.update(int((_want >= i).sum()))

        denoise(unet, pipe.scheduler, x, steps, eta, noise_seeds=seeds, callback=keep, cond=cond, uncond=uncond,
                guidance_scale=guidance, until=int(want.max()))
    bar.close()
    return out
