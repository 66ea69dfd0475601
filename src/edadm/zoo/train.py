"""Training of the demo zoo on scikit-learn's bundled digits (``edadm zoo train NAME``).

Every run is seeded, so the shipped weights are reproducible on the same software stack.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..utils import atomic_dir, resolve_device
from .data import digits_images, split_indices
from .models import DigitsClassifier, digits_cond_unet_config, digits_ddpm_unet_config, digits_scheduler_config

log = logging.getLogger("edadm")

TRAIN_DEFAULTS = {
    "digits-ddpm": dict(steps=6000, batch_size=64, lr=2e-3, ema_decay=0.999, seed=0),
    # class labels dropped to the null class 10% of the time, as classifier-free guidance needs
    "digits-cond": dict(steps=6000, batch_size=64, lr=2e-3, ema_decay=0.999, seed=0, label_dropout=0.1),
    "digits-classifier": dict(steps=3000, batch_size=128, lr=1e-3, seed=0),
    # latent models: the autoencoder first (ae_steps), then the denoiser on its latents
    "digits-ldm": dict(steps=6000, batch_size=64, lr=2e-3, ema_decay=0.999, seed=0, ae_steps=3000),
    # the RGB photos domain (zoo/photos.py): digits-ddpm's recipe on 8000 fixed crops
    "photos-ddpm": dict(steps=6000, batch_size=64, lr=2e-3, ema_decay=0.999, seed=0),
    "photos-classifier": dict(steps=3000, batch_size=128, lr=1e-3, seed=0),
    "digits-t2i": dict(steps=8000, batch_size=64, lr=2e-3, ema_decay=0.999, seed=0, ae_steps=3000,
                       label_dropout=0.1),
}


def _cosine_lr(step: int, total: int, warmup: int = 200) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by up to max_shift pixels (zero fill): cheap augmentation."""
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_digits_ddpm(out: Path, steps: int, batch_size: int, lr: float, ema_decay: float, seed: int,
                      device: str | None = None, label_dropout: float | None = None,
                      sampling: dict | None = None, name: str = "digits-ddpm") -> dict:
    """Epsilon-prediction DDPM training; with label_dropout set, class-conditional (labels
    replaced by the null class with that probability: classifier-free guidance)."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    dev = resolve_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = digits_images()
    data = (x * 2 - 1)  # [-1, 1]
    conditional = label_dropout is not None
    unet = UNet2DModel(**(digits_cond_unet_config() if conditional else digits_ddpm_unet_config())).to(dev)
    null = unet.config.num_class_embeds - 1 if conditional else None

    def cond(idx):
        if not conditional:
            return {}
        labels = y[idx].clone()
        labels[torch.rand(len(idx), generator=g) < label_dropout] = null
        return {"class_labels": labels.to(dev)}

    t0 = time.time()
    res = _train_denoiser(unet, data, cond, unet.parameters(), steps, batch_size, lr, ema_decay, g, dev, name)
    unet = unet.to("cpu").eval()
    # Guided sampling must not clip x0: DDIM's clip_sample clamps the predicted x0 but keeps
    # the guided (extrapolated) eps, and with guidance 3 that mismatch drives every sample
    # to grey (classifier agreement 0.66 vs 1.0 unclipped, 100 images); LDM and Stable
    # Diffusion sample unclipped for the same reason. The unconditional model keeps DDPM's clip.
    scheduler = DDIMScheduler(**{**digits_scheduler_config(), "clip_sample": not conditional})
    info = dict(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                final_loss=res["final_loss"], train_seconds=round(time.time() - t0, 1),
                torch=torch.__version__, **({"label_dropout": label_dropout} if conditional else {}))
    with atomic_dir(out) as tmp:
        DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        (tmp / "edadm_sampling.json").write_text(json.dumps(sampling or {"steps": 100, "eta": 0.0}))
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
    return info


def train_digits_classifier(out: Path, steps: int, batch_size: int, lr: float, seed: int,
                            device: str | None = None) -> dict:
    from safetensors.torch import save_file

    dev = resolve_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = digits_images()
    tr, ho = split_indices(len(x), holdout=0.2, seed=seed)
    model = DigitsClassifier().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps, warmup=100))
    t0 = time.time()
    for step in tqdm(range(steps), desc="train digits-classifier"):
        idx = tr[torch.randint(0, len(tr), (batch_size,), generator=g)]
        xb = _random_shift(x[idx], g)
        # mild intensity noise so generated samples (never exactly on the data) stay in-domain
        xb = (xb + 0.05 * torch.randn(xb.shape, generator=g)).clamp(0, 1)
        loss = F.cross_entropy(model(xb.to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model = model.to("cpu").eval()
    with torch.no_grad():
        acc = (model(x[ho]).argmax(1) == y[ho]).float().mean().item()
    info = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, holdout_accuracy=round(acc, 4),
                holdout_size=len(ho), train_seconds=round(time.time() - t0, 1), torch=torch.__version__)
    with atomic_dir(out) as tmp:
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"architecture": "DigitsClassifier", "num_classes": 10,
                                                      "feature_dim": DigitsClassifier.feature_dim}, indent=2))
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
    return info


def train_digits_cond(out: Path, device: str | None = None, **kw) -> dict:
    """Class-conditional digits, sampled as the paper's ImageNet LDM (DDIM 20 steps, eta 0)
    with classifier-free guidance 1.5 (see SAMPLING_DEFAULTS)."""
    from . import SAMPLING_DEFAULTS

    return train_digits_ddpm(out, device=device, sampling=SAMPLING_DEFAULTS["digits-cond"], name="digits-cond", **kw)


def _train_autoencoder(kind: str, x: torch.Tensor, steps: int, batch_size: int, seed: int, dev) -> tuple:
    """A small VQModel ("vq": reconstruction + codebook / commitment loss) or AutoencoderKL
    ("kl": reconstruction + a light KL term) on digits in [-1, 1]. Its scaling_factor is then
    set to 1 / std of the latents, as LDM and Stable Diffusion do, so the denoiser sees unit
    variance. Returns (autoencoder on CPU, the scaled latents of every digit, info)."""
    from diffusers import AutoencoderKL, VQModel

    from .models import digits_kl_config, digits_vq_config

    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    ae = (VQModel(**digits_vq_config()) if kind == "vq" else AutoencoderKL(**digits_kl_config())).to(dev)
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps))
    losses = []
    for _ in tqdm(range(steps), desc=f"train {kind} autoencoder"):
        xb = x[torch.randint(0, len(x), (batch_size,), generator=g)].to(dev)
        if kind == "vq":
            out = ae(xb)
            loss = F.mse_loss(out.sample, xb) + out.commit_loss.mean()
        else:
            post = ae.encode(xb).latent_dist
            rec = ae.decode(post.sample()).sample
            loss = F.mse_loss(rec, xb) + 1e-4 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    ae = ae.to("cpu").eval()
    with torch.no_grad():
        z = torch.cat([(ae.encode(x[i:i + 256]).latents if kind == "vq" else ae.encode(x[i:i + 256]).latent_dist.mode())
                       for i in range(0, len(x), 256)])
        sf = float(1.0 / z.std())
        ae.register_to_config(scaling_factor=sf)
        rec = torch.cat([ae.decode(z[i:i + 256]).sample for i in range(0, len(x), 256)])
    info = {"ae_steps": steps, "ae_final_loss": sum(losses[-200:]) / len(losses[-200:]), "scaling_factor": sf,
            "ae_reconstruction_mse": float(F.mse_loss(rec, x))}
    return ae, z * sf, info


def _train_denoiser(model: torch.nn.Module, z: torch.Tensor, cond_fn, params, steps: int, batch_size: int,
                           lr: float, ema_decay: float, g: torch.Generator, dev, name: str) -> dict:
    """Epsilon-prediction DDPM training on fixed data (pixels or latents), AdamW with cosine
    decay, gradient clipping and EMA; cond_fn(idx) gives the denoiser kwargs of a batch (and
    may carry gradients into a text encoder listed in `params`). Random draws per step, in
    order: indices, noise, timesteps, then cond_fn's."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    params = list(params)
    noise_sched = DDPMScheduler(**digits_scheduler_config())  # add_noise only: clip_sample plays no part
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps))
    ema = EMAModel(params, decay=ema_decay)
    losses = []
    bar = tqdm(range(steps), desc=f"train {name}")
    for step in bar:
        idx = torch.randint(0, z.shape[0], (batch_size,), generator=g)
        clean = z[idx].to(dev)
        noise = torch.randn(clean.shape, generator=g).to(dev)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=g).to(dev)
        loss = F.mse_loss(model(noise_sched.add_noise(clean, noise, t), t, **cond_fn(idx)).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    ema.copy_to(params)
    return {"final_loss": sum(losses[-200:]) / len(losses[-200:])}


def _latent_stage(kind: str, ae_steps: int, batch_size: int, seed: int, device):
    """Shared start of the latent zoo models: the autoencoder, then the seeded generator of
    the denoiser stage. Returns (device, labels, autoencoder, scaled latents, ae info, generator)."""
    dev = resolve_device(device)
    x, y = digits_images()
    ae, z, ae_info = _train_autoencoder(kind, x * 2 - 1, ae_steps, batch_size, seed, dev)
    torch.manual_seed(seed)
    return dev, y, ae, z, ae_info, torch.Generator().manual_seed(seed)


def _write_zoo_pipeline(out: Path, pipe, name: str, info: dict) -> None:
    from . import SAMPLING_DEFAULTS

    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "edadm_sampling.json").write_text(json.dumps(SAMPLING_DEFAULTS[name]))
        (tmp / "training.json").write_text(json.dumps(info, indent=2))


def train_digits_ldm(out: Path, steps: int, batch_size: int, lr: float, ema_decay: float, seed: int, ae_steps: int,
                     device: str | None = None) -> dict:
    """Latent diffusion on digits (stand-in for the paper's LDM-4 LSUN models): a VQModel,
    then an unconditional UNet2DModel on its 8x8x3 latents; LDMPipeline, DDIM 200 steps eta 1
    (the LSUN-Bedroom sampler)."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel

    from .models import digits_ldm_unet_config

    t0 = time.time()
    dev, _, vq, z, ae_info, g = _latent_stage("vq", ae_steps, batch_size, seed, device)
    unet = UNet2DModel(**digits_ldm_unet_config(z.shape[1])).to(dev)
    info = _train_denoiser(unet, z, lambda idx: {}, unet.parameters(), steps, batch_size, lr, ema_decay, g, dev,
                           "digits-ldm")
    info = dict(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed, **ae_info, **info,
                train_seconds=round(time.time() - t0, 1), torch=torch.__version__)
    scheduler = DDIMScheduler(**{**digits_scheduler_config(), "clip_sample": False})
    _write_zoo_pipeline(out, LDMPipeline(vqvae=vq, unet=unet.to("cpu").eval(), scheduler=scheduler), "digits-ldm", info)
    return info


def train_digits_t2i(out: Path, steps: int, batch_size: int, lr: float, ema_decay: float, seed: int, ae_steps: int,
                     label_dropout: float, device: str | None = None) -> dict:
    """Text-to-image digits (stand-in for Stable Diffusion): an AutoencoderKL, then a
    UNet2DConditionModel on its 8x8x4 latents trained jointly with a small CLIP text encoder
    on prompts such as "a handwritten seven" (prompt dropped to "" with probability
    label_dropout, for classifier-free guidance); StableDiffusionPipeline, PLMS 50 steps
    (the paper's COCO sampler) at guidance 1.5 (see SAMPLING_DEFAULTS)."""
    import tempfile

    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..model.pipelines import byte_level_clip_tokenizer
    from .models import PROMPT_TEMPLATES, digit_prompt, digits_t2i_unet_config, digits_text_config

    t0 = time.time()
    dev, y, vae, z, ae_info, g = _latent_stage("kl", ae_steps, batch_size, seed, device)
    tok = byte_level_clip_tokenizer(Path(tempfile.mkdtemp(prefix="edadm-tok-")), max_length=24)
    enc = CLIPTextModel(CLIPTextConfig(**digits_text_config(len(tok), tok.bos_token_id, tok.eos_token_id,
                                                            tok.pad_token_id))).to(dev)
    unet = UNet2DConditionModel(**digits_t2i_unet_config(enc.config.hidden_size)).to(dev)
    # every training prompt tokenized once: row 10 * template + digit, last row the empty prompt
    prompts = [digit_prompt(d, k) for k in range(len(PROMPT_TEMPLATES)) for d in range(10)] + [""]
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(dev)

    def cond(idx):
        rows = torch.randint(0, len(PROMPT_TEMPLATES), (len(idx),), generator=g) * 10 + y[idx]
        rows[torch.rand(len(idx), generator=g) < label_dropout] = len(prompts) - 1
        return {"encoder_hidden_states": enc(ids[rows.to(dev)])[0]}

    info = _train_denoiser(unet, z, cond, [*unet.parameters(), *enc.parameters()], steps, batch_size, lr, ema_decay,
                           g, dev, "digits-t2i")
    info = dict(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed, label_dropout=label_dropout,
                **ae_info, **info, train_seconds=round(time.time() - t0, 1), torch=torch.__version__)
    betas = {k: v for k, v in digits_scheduler_config().items() if k.startswith("beta") or k == "num_train_timesteps"}
    scheduler = PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)  # SD's PLMS
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=enc.to("cpu").eval(), tokenizer=tok,
                                   unet=unet.to("cpu").eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    _write_zoo_pipeline(out, pipe, "digits-t2i", info)
    return info


def train_photos_ddpm(out: Path, steps: int, batch_size: int, lr: float, ema_decay: float, seed: int,
                      device: str | None = None) -> dict:
    """digits-ddpm's training on the photos domain: the fixed training crops
    (zoo/photos.py, TRAIN_SEED) in [-1, 1]; DDIM 100 steps eta 0, as digits-ddpm."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from . import SAMPLING_DEFAULTS
    from .models import photos_ddpm_unet_config
    from .photos import TRAIN_PER_PHOTO, TRAIN_SEED, photo_crops

    dev = resolve_device(device)
    x, _ = photo_crops(TRAIN_PER_PHOTO, TRAIN_SEED)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    unet = UNet2DModel(**photos_ddpm_unet_config()).to(dev)
    t0 = time.time()
    res = _train_denoiser(unet, x * 2 - 1, lambda idx: {}, unet.parameters(), steps, batch_size, lr, ema_decay, g,
                          dev, "photos-ddpm")
    info = dict(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed, crops=len(x),
                final_loss=res["final_loss"], train_seconds=round(time.time() - t0, 1), torch=torch.__version__)
    pipe = DDIMPipeline(unet=unet.to("cpu").eval(), scheduler=DDIMScheduler(**digits_scheduler_config()))
    _write_zoo_pipeline(out, pipe, "photos-ddpm", info)
    return info


def train_photos_classifier(out: Path, steps: int, batch_size: int, lr: float, seed: int,
                            device: str | None = None) -> dict:
    """Which photo a crop comes from (8 classes), on the training crops with flips and mild
    pixel noise; held-out accuracy on the reference crops. The reference features of
    FID-photos (the classifier's features of the REFERENCE_SEED crops, with their photo
    labels) are written beside the weights, so evaluation needs no scikit-image."""
    import numpy as np
    from safetensors.torch import save_file

    from .models import PhotosClassifier
    from .photos import PHOTOS, REFERENCE_PER_PHOTO, REFERENCE_SEED, TRAIN_PER_PHOTO, TRAIN_SEED, photo_crops

    dev = resolve_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = photo_crops(TRAIN_PER_PHOTO, TRAIN_SEED)
    xr, yr = photo_crops(REFERENCE_PER_PHOTO, REFERENCE_SEED)
    model = PhotosClassifier(num_classes=len(PHOTOS)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps, warmup=100))
    t0 = time.time()
    for _ in tqdm(range(steps), desc="train photos-classifier"):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        # no shift augmentation (its zero fill would be a black border no generated crop has):
        # the crops already sit at random positions
        xb = (x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g)).clamp(0, 1)
        loss = F.cross_entropy(model(xb.to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model = model.to("cpu").eval()
    with torch.no_grad():
        feats, logits = model.embed(xr)
    acc = (logits.argmax(1) == yr).float().mean().item()
    info = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, holdout_accuracy=round(acc, 4),
                holdout_size=len(xr), train_seconds=round(time.time() - t0, 1), torch=torch.__version__)
    with atomic_dir(out) as tmp:
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"architecture": "PhotosClassifier", "num_classes": len(PHOTOS),
                                                      "classes": list(PHOTOS),
                                                      "feature_dim": PhotosClassifier.feature_dim}, indent=2))
        with open(tmp / "reference.npz", "wb") as fh:
            np.savez(fh, features=feats.numpy().astype(np.float32), labels=yr.numpy().astype(np.int64))
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
    return info


TRAINERS = {"digits-ddpm": train_digits_ddpm, "digits-cond": train_digits_cond,
            "digits-classifier": train_digits_classifier, "digits-ldm": train_digits_ldm,
            "digits-t2i": train_digits_t2i, "photos-ddpm": train_photos_ddpm,
            "photos-classifier": train_photos_classifier}


def train(name: str, out: Path | None = None, device: str | None = None, **overrides) -> dict:
    """Train zoo model `name` with its defaults (overridable) into `out` (default: the zoo)."""
    from . import WEIGHTS_DIR

    kwargs = {**TRAIN_DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TRAINERS[name](Path(out) if out else WEIGHTS_DIR / name, device=device, **kwargs)
