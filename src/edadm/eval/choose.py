"""Which metrics an evaluation runs: the ones asked for, or every one that applies to the
images and can run here, each skipped one named with its reason."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EdadmError

METRICS = ("fid-digits", "fid-photos", "fid", "sfid", "is", "clip")
DOMAIN_METRICS = {"fid-digits": "digits", "fid-photos": "photos"}  # eval.domains, by image shape


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

    asked None: every metric that applies and can run here; the domain metric (fid-digits,
    fid-photos) is decided here when `image_shape` (C, H, W) is known, else on the sampled
    images (domain_outcome), and only a model no domain metric applies to is named on stderr.
    asked given: those, minus the ones that cannot run here (a missing extra, clip without
    prompts), each named on stderr; an explicit fid without a reference or Inception
    weights, or an explicit domain metric on other images, is an error later, not a skip.
    Nothing left is an error unless `compare` (PSNR / MSE vs a reference model) runs."""
    from .domains import domain_problem
    from .standard import missing_extra

    auto = asked is None
    metrics, skipped = [], {}
    if not auto and len([m for m in asked if m in DOMAIN_METRICS]) > 1:
        raise EdadmError(f"{' and '.join(m for m in asked if m in DOMAIN_METRICS)} apply to different images; "
                         "ask for one")
    none_applies = auto and image_shape is not None and domain_problem(image_shape) is not None
    for m in list(METRICS) if auto else list(asked):
        why = None
        if m in DOMAIN_METRICS:
            problem = domain_problem(image_shape, DOMAIN_METRICS[m]) if auto and image_shape is not None else None
            if problem:
                why = problem + "; skipped"
                if not none_applies:  # another domain metric runs: nothing to say
                    skipped[m] = why
                    continue
        else:
            why = missing_extra(m) or (clip_reason if m == "clip" else None)
        if why is None and auto and m in ("fid", "sfid", "is") and inception_weights is None:
            why = f"{m} skipped: needs --inception-weights (InceptionV3 weights on disk; nothing is downloaded)"
        if why is None and auto and m in ("fid", "sfid") and reference is None:
            why = f"{m} skipped: needs --reference (an image folder or an .npz of statistics)"
        if why:
            skipped[m] = why
            if m == next(iter(DOMAIN_METRICS)):  # no domain metric applies: said once, not per domain
                print(f"edadm: {domain_problem(image_shape)}; skipped", file=sys.stderr)
            elif not auto and m not in DOMAIN_METRICS:
                print(f"edadm: {why}", file=sys.stderr)
        else:
            metrics.append(m)
    if not metrics and not compare:
        raise EdadmError(("no metric applies here: " if auto else "no requested metric can run here: ")
                         + "; ".join(skipped.values()) + (" (or pass --compare MODEL)" if auto else ""))
    return metrics, skipped


def domain_outcome(first: dict, metrics: list[str], skipped: dict) -> tuple[list[str], dict]:
    """The domain metrics asked for automatically and decided on the sampled images: keep
    the one that ran, drop the others, and say so when none applied."""
    asked = [m for m in metrics if m in DOMAIN_METRICS]
    ran = [m for m in asked if m.replace("-", "_") in first]
    if asked and not ran:
        print(f"edadm: {first.get('domain_skipped', 'domain metrics skipped')}", file=sys.stderr)
    dropped = {m: first.get("domain_skipped", f"{m} does not apply to these images; skipped")
               for m in asked if m not in ran}
    return [m for m in metrics if m not in dropped], {**skipped, **dropped}


def domain_flag(metrics: list[str], auto: bool) -> bool | str:
    """image_metrics' `domain` argument for the chosen metrics: "auto" (whichever applies,
    decided on the images), the one domain asked for, or False."""
    asked = [DOMAIN_METRICS[m] for m in metrics if m in DOMAIN_METRICS]
    if not asked:
        return False
    return "auto" if auto else asked[0]


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
