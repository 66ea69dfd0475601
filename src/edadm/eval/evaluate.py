"""Sample a pipeline over several seeds and measure it."""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from ..errors import EdadmError
from ..model.families import get_denoiser, num_classes
from ..sampling import generate, is_text_conditional, prompts_of
from .metrics import mean_std, mse, psnr

log = logging.getLogger("edadm")

SUMMARY_KEYS = ("fid_digits", "is_digits", "fid_photos", "is_photos", "confidence", "class_agreement", "fid", "sfid",
                "is", "clip", "psnr_vs_ref", "mse_vs_ref", "sample_seconds")
DOMAIN_KEYS = ("fid_digits", "is_digits", "fid_photos", "is_photos")  # eval.domains: one pair per domain


def image_metrics(images: torch.Tensor, domain: bool | str = True, standard: Callable[[torch.Tensor], dict] | None = None,
                  labels: torch.Tensor | None = None) -> dict:
    """The metrics asked for: the domain ones (eval.domains: fid_digits for 1x32x32 images,
    fid_photos for 3x32x32) and / or the standard ones (eval.standard, passed in as a callable).

    domain: True, the domain of these images (an error when none applies); "auto", the same
    but a `domain_skipped` note instead of the error; a domain name, that one only; False, none."""
    from .domains import domain_metrics, domain_problem

    out: dict = {"num_samples": len(images)}
    if domain:
        why = domain_problem(images.shape[1:], None if domain in (True, "auto") else domain)
        if why is not None:
            if domain == "auto":  # asked for by default: skipped, and the caller names it
                out["domain_skipped"] = why + "; skipped"
                return out if standard is None else {**out, **standard(images)}
            raise EdadmError(why + "; choose --metrics fid,sfid,is")
        out.update(domain_metrics(images, labels=labels))
    if standard is not None:
        out.update(standard(images))
    return out


def requested_labels(pipe, num: int) -> torch.Tensor | None:
    """The digit each image was asked for, for class agreement: class-conditional models use
    generate()'s default labels (index mod classes); text-to-image models the digit their
    prompt names (image i gets prompt i mod P), when every prompt names one."""
    k = num_classes(get_denoiser(pipe))
    if k:
        return torch.arange(num) % k
    if is_text_conditional(pipe):
        from ..zoo.models import prompt_digit

        digits = [prompt_digit(p) for p in prompts_of(pipe)]
        if all(d is not None for d in digits):
            return torch.tensor([digits[i % len(digits)] for i in range(num)])
    return None


def evaluate_pipeline(pipe, num: int, seeds: list[int], steps: int | None = None, eta: float | None = None,
                      batch_size: int = 250, reference: dict[int, torch.Tensor] | None = None,
                      progress: bool = True, domain: bool | str = True,
                      standard: Callable[[torch.Tensor], dict] | None = None,
                      guidance_scale: float | None = None) -> tuple[dict, dict[int, torch.Tensor]]:
    """Metrics per seed and their mean / std; `reference` images (same seeds, same noise)
    add PSNR / MSE against them; `domain` as image_metrics takes it. Returns (result, images
    by seed)."""
    if num < 2:
        raise EdadmError(f"--num must be at least 2 for distribution metrics, got {num}")
    if not seeds:
        raise EdadmError("at least one seed is needed")
    per_seed, images = [], {}
    for seed in seeds:
        t0 = time.time()
        imgs = generate(pipe, num, seed=seed, steps=steps, eta=eta, batch_size=batch_size, progress=progress,
                        guidance_scale=guidance_scale)
        dt = time.time() - t0
        labels = requested_labels(pipe, num)
        m = {"seed": seed, **image_metrics(imgs, domain=domain, standard=standard, labels=labels),
             "sample_seconds": round(dt, 2)}
        if reference is not None and seed in reference:
            m["psnr_vs_ref"] = psnr(imgs, reference[seed])
            m["mse_vs_ref"] = mse(imgs, reference[seed])
        per_seed.append(m)
        images[seed] = imgs
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in (*DOMAIN_KEYS, "fid", "sfid", "is") if k in m)
        log.info("seed %d: %s (%.1fs)", seed, shown, dt)
    summary = {k: mean_std(m[k] for m in per_seed) for k in SUMMARY_KEYS if k in per_seed[0]}
    return {"num": num, "seeds": list(seeds), "per_seed": per_seed, "summary": summary}, images


def paired_delta(result: dict, reference: dict, key: str = "fid_digits") -> dict | None:
    """mean / std over seeds of result's metric minus reference's, for runs sampled from the
    same noise (e.g. FP): seeds move both runs together, so the paired spread is the honest
    one. None when the runs share no seed."""
    ref = {m["seed"]: m[key] for m in reference["per_seed"]}
    deltas = [m[key] - ref[m["seed"]] for m in result["per_seed"] if m["seed"] in ref]
    return mean_std(deltas) if deltas else None


def add_paired_delta(result: dict, reference: dict, key: str = "fid_digits") -> None:
    """Store paired_delta(result, reference) in result's summary as KEY_delta."""
    d = paired_delta(result, reference, key)
    if d is not None:
        result["summary"][f"{key}_delta"] = d


def format_table(rows: list[tuple[str, dict]], keys=("fid_digits", "is_digits", "psnr_vs_ref")) -> str:
    """Markdown table of mean +- std per row for the given summary keys."""
    names = {"fid_digits": "FID-digits (lower better)", "fid_digits_delta": "ΔFID vs FP, paired by seed",
             "is_digits": "IS-digits (higher better)", "fid_photos": "FID-photos (lower better)",
             "fid_photos_delta": "ΔFID-photos vs FP, paired by seed", "is_photos": "IS-photos (higher better)",
             "psnr_vs_ref": "PSNR vs FP, dB", "confidence": "classifier confidence", "sample_seconds": "sampling s",
             "fid": "FID", "sfid": "sFID", "is": "IS", "class_agreement": "classifier agrees with label"}
    head = "| model | " + " | ".join(names.get(k, k) for k in keys) + " |"
    sep = "|---|" + "---|" * len(keys)
    lines = [head, sep]
    for label, summary in rows:
        cells = []
        for k in keys:
            v = summary.get(k)
            cells.append("-" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAIRED_KEYS = (("delta", "fid", "ΔFID"), ("delta", "kid_x1e3", "ΔKID x 10³"),
               ("delta", "class_tv", "Δclass-histogram TV"), ("pair", "class_flip", "class flips"),
               ("pair", "psnr", "PSNR dB"))


def format_paired(per_seed: list[dict]) -> str:
    """Markdown table of the paired comparison vs the compared model, one row per seed: value
    and 95 % bootstrap interval of each difference (eval.yardstick.measure)."""
    lines = ["| seed, vs --compare (95 % bootstrap interval) | " + " | ".join(n for _, _, n in PAIRED_KEYS) + " |",
             "|---|" + "---|" * len(PAIRED_KEYS)]
    for m in per_seed:
        p = m.get("paired")
        if not p:
            continue
        cells = []
        for part, key, _ in PAIRED_KEYS:
            v = p[part].get(key)
            if v is None:
                cells.append("-")
            elif v["ci"] is None:
                cells.append(f"{v['value']:.3f}")
            else:
                cells.append(f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]")
        lines.append(f"| {m['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
