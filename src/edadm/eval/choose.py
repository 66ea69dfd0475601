"""Which metrics an evaluation runs: the ones asked for, or every one that applies to the
images and can run here, each skipped one named with its reason."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EdadmError

METRICS = ("fid-digits", "fid", "sfid", "is", "clip")


def parse_metrics(s: str) -> list[str]:
    """"fid-digits,is" -> ["fid-digits", "is"]; ValueError naming the unknown ones."""
    items = [m.strip().lower() for m in s.split(",") if m.strip()]
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, bad)) or repr(s)}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(items))


def choose_metrics(asked: list[str] | None, clip_reason: str | None, inception_weights, reference,
                   image_shape: tuple | None = None, compare: bool = False) -> tuple[list[str], dict]:
    """The metrics to run and why each other one was skipped.

    asked None: every metric that applies and can run here; fid-digits is decided here when
    `image_shape` (C, H, W) is known, else on the sampled images (digits_outcome). asked
    given: those, minus the ones that cannot run here (a missing extra, clip without
    prompts), each named on stderr; an explicit fid without a reference or Inception
    weights, or an explicit fid-digits on other images, is an error later, not a skip.
    Nothing left is an error unless `compare` (PSNR / MSE vs a reference model) runs."""
    from .evaluate import digits_problem
    from .standard import missing_extra

    auto = asked is None
    metrics, skipped = [], {}
    for m in list(METRICS) if auto else list(asked):
        why = None
        if m == "fid-digits":
            problem = digits_problem(image_shape) if auto and image_shape is not None else None
            if problem:
                why = problem + "; skipped"
        else:
            why = missing_extra(m) or (clip_reason if m == "clip" else None)
        if why is None and auto and m in ("fid", "sfid", "is") and inception_weights is None:
            why = f"{m} skipped: needs --inception-weights (InceptionV3 weights on disk; nothing is downloaded)"
        if why is None and auto and m in ("fid", "sfid") and reference is None:
            why = f"{m} skipped: needs --reference (an image folder or an .npz of statistics)"
        if why:
            skipped[m] = why
            if not auto or m == "fid-digits":
                print(f"edadm: {why}", file=sys.stderr)
        else:
            metrics.append(m)
    if not metrics and not compare:
        raise EdadmError(("no metric applies here: " if auto else "no requested metric can run here: ")
                         + "; ".join(skipped.values()) + (" (or pass --compare MODEL)" if auto else ""))
    return metrics, skipped


def digits_outcome(first: dict, metrics: list[str], skipped: dict) -> tuple[list[str], dict]:
    """fid-digits asked for automatically but not applicable (not 1x32x32 images): say so."""
    if "fid-digits" in metrics and "fid_digits" not in first:
        why = first.get("digits_skipped", "fid-digits skipped")
        print(f"edadm: {why}", file=sys.stderr)
        return [m for m in metrics if m != "fid-digits"], {**skipped, "fid-digits": why}
    return metrics, skipped


def standard_metrics(metrics: list[str], reference, weights, device):
    """(callable images -> Inception metrics, conventions) or (None, {})."""
    inception = [m for m in metrics if m in ("fid", "sfid", "is")]
    if not inception:
        return None, {}
    from .standard import InceptionFeatures, inception_metrics

    if {"fid", "sfid"} & set(inception) and reference is None:
        raise EdadmError("fid / sfid need --reference (an image folder or an .npz of statistics)")
    feats = InceptionFeatures(weights, device=device)
    conventions = {"features": "torch-fidelity InceptionV3 (TF-compatible), 299x299 TF1 bilinear resize",
                   "sfid": "Mixed_6d 1x1 branch conv, first 7 channels (ADM mixed_6/conv)", "is_splits": 10,
                   "reference": str(reference) if reference else None}
    return (lambda imgs: inception_metrics(imgs, inception, reference, feats)), conventions


def with_clip(standard, conventions: dict, prompts: list[str], clip_dir: Path, device):
    """Add CLIP score to the per-seed metrics: image i (of each seed's 0..num-1) was asked
    for prompt i mod len(prompts), as generate() samples it."""
    from .standard import clip_score

    def metrics(images):
        out = standard(images) if standard is not None else {}
        asked = [prompts[i % len(prompts)] for i in range(len(images))]
        return {**out, "clip": clip_score(images, asked, clip_dir, device=device)}

    return metrics, {**conventions, "clip": f"100 * mean(max(cos, 0)), CLIPModel from {clip_dir}"}
