"""`edadm sample`, `evaluate` and `score`: images from a model, and their metrics."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..deploy.engines import DEFAULT_ENGINE, ENGINES
from ..errors import EdadmError
from ..eval.choose import (DOMAIN_METRICS, choose_metrics, domain_flag, domain_outcome, parse_metrics, standard_metrics,
                           with_clip)
from ..state import pipeline_class
from .args import (COMPILE_HELP, ENGINE_HELP, check_writable, correction_choice, dtype, dtype_flag, int_list,
                   nonneg_int, positive_int, sampling_flags, with_prompts)


def _metric_list(s: str) -> list[str]:
    try:
        return parse_metrics(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(sub) -> None:
    s = sub.add_parser("sample", help="generate images")
    s.add_argument("model", help="zoo name, diffusers directory or quantized directory")
    # -n: under torchrun, --num is an ambiguous prefix of torchrun's own --numa-binding
    s.add_argument("-n", "--num", type=positive_int, default=64, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="grid PNG (default grid.png)")
    s.add_argument("--out-dir", type=Path, default=None, help="one PNG per image")
    s.add_argument("--engine", choices=tuple(ENGINES), default=DEFAULT_ENGINE, help=ENGINE_HELP)
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.add_argument("--labels", type=int_list("label"), default=None,
                   help="class-conditional models: comma-separated digits/classes, cycled over the images "
                        "(--labels 7: all sevens; default: image i gets class i mod classes)")
    sampling_flags(s)
    dtype_flag(s)

    e = sub.add_parser("evaluate", help="sample and measure FID-digits / FID-photos (or FID with Inception weights) over seeds")
    e.add_argument("model")
    e.add_argument("--num", type=positive_int, default=1000)
    e.add_argument("--seeds", type=int_list("seed"), default=[0, 1, 2])
    e.add_argument("--compare", default=None, help="another model: PSNR / MSE against its images from the same noise")
    e.add_argument("--json", type=Path, default=None, help="write results as JSON")
    e.add_argument("--bootstrap", type=nonneg_int, default=500,
                   help="digits and photos models with --compare: bootstrap draws for the 95 %% intervals of every metric "
                        "and of every paired difference vs the compared model (docs/evaluation.md); 0: none")
    e.add_argument("--engine", choices=tuple(ENGINES), default=DEFAULT_ENGINE, help=ENGINE_HELP)
    e.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    e.add_argument("--metrics", type=_metric_list, default=None,
                   help="comma-separated: fid-digits (digits models), fid-photos (3x32x32 photo-crop models), fid, "
                        "sfid, is, clip (the last four need "
                        "the metrics extra). Default: every metric that applies to the model and can run here "
                        "(PSNR / MSE vs --compare always), naming what was skipped")
    e.add_argument("--reference", type=Path, default=None,
                   help="FID / sFID reference: image folder (statistics cached beside it) or .npz (mu, sigma, mu_s, sigma_s)")
    e.add_argument("--inception-weights", type=Path, default=None, help="local InceptionV3 weights (torch-fidelity format)")
    e.add_argument("--clip-model", type=Path, default=None,
                   help="local transformers CLIPModel directory for --metrics clip (text-to-image pipelines)")
    sampling_flags(e)
    dtype_flag(e)

    sc = sub.add_parser("score", help="metrics of images already sampled (a folder of PNGs or samples.npz)")
    sc.add_argument("samples", type=Path, help="folder written by `edadm sample --out-dir` (or any PNG folder), or an .npz")
    sc.add_argument("--metrics", type=_metric_list, default=None,
                    help="default: every metric that applies to the images and can run here")
    sc.add_argument("--reference", type=Path, default=None, help="FID / sFID reference (folder or .npz of statistics)")
    sc.add_argument("--inception-weights", type=Path, default=None)
    sc.add_argument("--device", default="auto")
    sc.add_argument("--json", type=Path, default=None)


def _image_labels(pipe, labels: list[int] | None, num: int):
    """--labels cycled over `num` images, checked against the model's classes (None: default)."""
    import torch

    from ..model.families import get_denoiser, num_classes

    if labels is None:
        return None
    k = num_classes(get_denoiser(pipe))
    if k is None:
        raise EdadmError(f"--labels needs a class-conditional model; this {pipeline_class(pipe)} has no classes"
                         " (text-to-image models take --prompts)")
    bad = [v for v in labels if not 0 <= v < k]
    if bad:
        raise EdadmError(f"--labels must be in 0..{k - 1}; got {bad}")
    return torch.tensor([labels[i % len(labels)] for i in range(num)])


def cmd_sample(args) -> int:
    from ..dist import PACKED, finish, init_distributed, rank_device, sample_to_dir
    from ..eval.images import save_grid
    from ..loading import load_pipeline
    from ..sampling import generate

    info = init_distributed(args.device)
    if info.world_size > 1 and args.out_dir is None:
        raise EdadmError("sampling with several processes needs --out-dir (one PNG per image, packed at the end)")
    out = args.out if args.out is not None or args.out_dir is not None else Path("grid.png")
    for p in (out, args.out_dir):
        if p is not None:
            check_writable(p)
    pipe = correction_choice(with_prompts(load_pipeline(args.model, device=rank_device(info, args.device),
                                                        engine=args.engine, dtype=dtype(args), compile=args.compile),
                                          args.prompts), args)
    labels = _image_labels(pipe, args.labels, args.num)
    if args.out_dir is not None:
        res = sample_to_dir(pipe, args.out_dir, args.num, seed=args.seed, steps=args.steps, eta=args.eta,
                            batch_size=args.batch_size, progress=args.progress, info=info,
                            guidance_scale=args.guidance_scale, labels=labels)
        if info.is_main:
            print(f"wrote {args.num} images to {args.out_dir} ({PACKED} packed; {res['skipped_batches']} batches "
                  f"of this process were already there) with {info.world_size} process(es)")
            if out is not None:
                import numpy as np
                import torch

                arr = np.load(args.out_dir / PACKED)["images"]
                save_grid(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0, out)
                print(f"wrote {out}")
    else:
        images = generate(pipe, args.num, seed=args.seed, steps=args.steps, eta=args.eta, batch_size=args.batch_size,
                          progress=args.progress, guidance_scale=args.guidance_scale, labels=labels)
        save_grid(images, out)
        print(f"wrote {out}")
    finish(info)
    return 0


def _write_json(path: Path | None, result: dict) -> None:
    if path:
        from ..utils import atomic_file

        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


def cmd_evaluate(args) -> int:
    from ..eval.evaluate import DOMAIN_KEYS, evaluate_pipeline, format_table
    from ..loading import load_pipeline
    from ..model.families import get_denoiser, sample_shape
    from ..sampling import autoencoder, is_text_conditional, prompts_of
    from ..utils import device_of

    if args.json:
        check_writable(args.json)
    pipe = correction_choice(with_prompts(load_pipeline(args.model, device=args.device, engine=args.engine,
                                                        compile=args.compile, dtype=dtype(args)), args.prompts), args)
    clip_reason = None
    if not is_text_conditional(pipe):
        clip_reason = f"clip skipped: needs a text-to-image pipeline (prompts); {pipeline_class(pipe)} has none"
    elif args.clip_model is None:
        clip_reason = "clip skipped: needs --clip-model (a local transformers CLIPModel directory)"
    auto = args.metrics is None
    # pixel space: the image shape is known before sampling (latent models: after decoding)
    shape = sample_shape(get_denoiser(pipe)) if autoencoder(pipe) is None else None
    metrics, skipped = choose_metrics(args.metrics, clip_reason, args.inception_weights, args.reference,
                                      image_shape=shape, compare=bool(args.compare))
    dev = device_of(get_denoiser(pipe))
    standard, conventions = standard_metrics(metrics, args.reference, args.inception_weights, dev)
    if "clip" in metrics:
        standard, conventions = with_clip(standard, conventions, prompts_of(pipe), args.clip_model, dev)
    reference = None
    if args.compare:
        ref_pipe = with_prompts(load_pipeline(args.compare, device=args.device), args.prompts)
        _, reference = evaluate_pipeline(ref_pipe, args.num, args.seeds, args.steps, args.eta, args.batch_size,
                                         progress=args.progress, domain=False, guidance_scale=args.guidance_scale)
    result, images = evaluate_pipeline(pipe, args.num, args.seeds, args.steps, args.eta, args.batch_size,
                                       reference=reference, progress=args.progress, domain=domain_flag(metrics, auto),
                                       standard=standard, guidance_scale=args.guidance_scale)
    metrics, skipped = domain_outcome(result["per_seed"][0], metrics, skipped)
    if reference is not None and any(m in DOMAIN_METRICS for m in metrics) and args.bootstrap:
        from ..eval.domains import domain_paired

        for m in result["per_seed"]:
            m["paired"] = domain_paired(images[m["seed"]], reference[m["seed"]], reps=args.bootstrap, seed=m["seed"])
    if not metrics and reference is None:
        raise EdadmError("no metric applies here: " + "; ".join(skipped.values()) + " (or pass --compare MODEL)")
    result.update(model=str(args.model), compare=args.compare, metrics=metrics, skipped=skipped,
                  conventions=conventions)
    keys = tuple(k for k in (*DOMAIN_KEYS, "class_agreement", "fid", "sfid", "is", "clip") if k in result["summary"])
    keys += ("psnr_vs_ref",) if reference else ()
    print(format_table([(str(args.model), result["summary"])], keys=keys))
    if any("paired" in m for m in result["per_seed"]):
        from ..eval.evaluate import format_paired

        print(format_paired(result["per_seed"]))
    _write_json(args.json, result)
    return 0


def cmd_score(args) -> int:
    import numpy as np
    import torch

    from ..eval.evaluate import DOMAIN_KEYS, format_table, image_metrics
    from ..eval.metrics import mean_std
    from ..utils import resolve_device

    if args.json:
        check_writable(args.json)
    no_clip = "clip skipped: needs prompts; score takes images only"
    src = args.samples
    if src.suffix == ".npz" and src.is_file():
        with np.load(src) as z:
            if "images" not in z:
                raise EdadmError(f"{src} has no 'images' array")
            arr = z["images"]
    elif src.is_dir():
        from PIL import Image

        from ..eval.standard import IMAGE_SUFFIXES

        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EdadmError(f"{src} has no PNG / JPEG images")
        arr = np.stack([np.asarray(Image.open(f)) for f in files])
    else:
        raise EdadmError(f"samples {src} not found (a folder of images or an .npz)")
    arr = arr[..., None] if arr.ndim == 3 else arr
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    metrics, skipped = choose_metrics(args.metrics, no_clip, args.inception_weights, args.reference,
                                      image_shape=tuple(images.shape[1:]))
    standard, conventions = standard_metrics(metrics, args.reference, args.inception_weights,
                                             resolve_device(args.device))
    m = image_metrics(images, domain=domain_flag(metrics, False), standard=standard)
    result = {"samples": str(src), "num": len(images), "metrics": metrics, "skipped": skipped,
              "conventions": conventions, "per_seed": [m],
              "summary": {k: mean_std([v]) for k, v in m.items() if isinstance(v, float)}}
    keys = tuple(k for k in (*DOMAIN_KEYS, "fid", "sfid", "is") if k in result["summary"])
    print(format_table([(str(src), result["summary"])], keys=keys))
    _write_json(args.json, result)
    return 0
