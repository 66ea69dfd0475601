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
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    dev = resolve_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = digits_images()
    data = (x * 2 - 1)  # [-1, 1]
    conditional = label_dropout is not None
    unet = UNet2DModel(**(digits_cond_unet_config() if conditional else digits_ddpm_unet_config())).to(dev)
    null = unet.config.num_class_embeds - 1 if conditional else None
    noise_sched = DDPMScheduler(**digits_scheduler_config())
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps))
    ema = EMAModel(unet.parameters(), decay=ema_decay)
    t0 = time.time()
    losses = []
    bar = tqdm(range(steps), desc=f"train {name}")
    for step in bar:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)
        clean = data[idx].to(dev)
        noise = torch.randn(clean.shape, generator=g).to(dev)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=g).to(dev)
        noisy = noise_sched.add_noise(clean, noise, t)
        kwargs = {}
        if conditional:
            labels = y[idx].clone()
            labels[torch.rand(batch_size, generator=g) < label_dropout] = null
            kwargs["class_labels"] = labels.to(dev)
        loss = F.mse_loss(unet(noisy, t, **kwargs).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    ema.copy_to(unet.parameters())
    unet = unet.to("cpu").eval()
    scheduler = DDIMScheduler(**digits_scheduler_config())
    info = dict(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                final_loss=sum(losses[-200:]) / len(losses[-200:]), train_seconds=round(time.time() - t0, 1),
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
    """Class-conditional digits, sampled as the paper's ImageNet LDM: DDIM 20 steps, eta 0,
    classifier-free guidance 3.0."""
    from . import SAMPLING_DEFAULTS

    return train_digits_ddpm(out, device=device, sampling=SAMPLING_DEFAULTS["digits-cond"], name="digits-cond", **kw)


TRAINERS = {"digits-ddpm": train_digits_ddpm, "digits-cond": train_digits_cond,
            "digits-classifier": train_digits_classifier}


def train(name: str, out: Path | None = None, device: str | None = None, **overrides) -> dict:
    """Train zoo model `name` with its defaults (overridable) into `out` (default: the zoo)."""
    from . import WEIGHTS_DIR

    kwargs = {**TRAIN_DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TRAINERS[name](Path(out) if out else WEIGHTS_DIR / name, device=device, **kwargs)
