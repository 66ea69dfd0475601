"""The `edadm` command line.

Every user error ends with one line on stderr and exit code 2; outputs are written to a
temporary path and renamed, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .config import (ACT_RANGE_KINDS, CALIB_STRATEGIES, DEFAULT_ITERS_SCALE, DEFAULT_METHOD, DEMO_ITERS_SCALE,
                     DEMO_NUM_SAMPLES, METHODS, RANGE_METHODS,
                     STEP_BALANCE)
from .deploy.engines import DEFAULT_ENGINE, ENGINES
from .deploy.onnx_export import TARGETS as EXPORT_TARGETS
from .errors import EdadmError
from .state import pipeline_class

ENGINE_CHOICES = tuple(ENGINES)  # deploy.engines: the one table

log = logging.getLogger("edadm")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise EdadmError(f"{self.prog}: {message}")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}")
    return v


METRICS = ("fid-digits", "fid", "sfid", "is", "clip")
COMPILE_HELP = ("run the denoiser under torch.compile, in bf16 where the hardware computes it natively (CUDA, "
                "AVX512_BF16, AMX) and float32 elsewhere (the fastest path of bench/speed.py): the first "
                "batch pays a one-time compile (~1 min small UNets, ~4 min Stable Diffusion on 2 cores); "
                "worth it for long runs")


def _metric_list(s: str) -> list[str]:
    items = [m.strip().lower() for m in s.split(",") if m.strip()]
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(map(repr, bad)) or repr(s)}; choose from "
                                         f"{', '.join(METRICS)}")
    return list(dict.fromkeys(items))


def _bits(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be an integer in 2..8, got {s!r}") from None
    if not 2 <= v <= 8:
        raise argparse.ArgumentTypeError(f"bits must be in 2..8, got {v}")
    return v


def _int_list(s: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in s.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}s must be comma-separated integers, got {s!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"at least one {what} is needed")
    return values


def _seeds(s: str) -> list[int]:
    return _int_list(s, "seed")


def _labels(s: str) -> list[int]:
    return _int_list(s, "label")


def _eta(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"eta must be a number in [0, 1], got {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"eta must be in [0, 1], got {v}")
    return v


def _radius(s: str):
    if s == "auto":
        return s
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"radius must be 'auto' or a non-negative number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"radius must be non-negative, got {s!r}")
    return v


def _check_writable(path: Path) -> None:
    """Fail before hours of work when the output location cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise EdadmError(f"output location {path} is not writable")
    if path.exists() and not path.is_dir() and path.suffix == "":
        raise EdadmError(f"output {path} exists and is not a directory")


def _dtype(args):
    import torch

    return args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)


def _dtype_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="quantized denoiser's float dtype: auto = float16 for the integer engine on CUDA (weights "
                        "rebuilt from the codes in it once), float32 elsewhere")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=_positive_int, default=250, help="images per denoiser call")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--eta", type=_eta, default=None, help="DDIM eta (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance of conditional models (default: the model's)")
    p.add_argument("--prompts", type=Path, default=None,
                   help="text-to-image pipelines: a text file with one prompt per line; image i gets line i mod lines "
                        "(default: the model's, else edadm's built-in captions)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    ap = _Parser(prog="edadm", description="Post-training quantization of diffusion models (EDA-DM).")
    ap.add_argument("--version", action="version", version=f"edadm {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize a pipeline's denoiser and save it")
    q.add_argument("model", help="zoo name (e.g. digits-ddpm) or a local diffusers pipeline directory")
    q.add_argument("--out", required=True, type=Path, help="output directory")
    q.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint (.OUT.ckpt beside --out)")
    q.add_argument("--method", default=None, choices=METHODS, metavar="METHOD",
                   help=f"recipe (edadm/recipes, docs/recipes.md): {', '.join(METHODS)}; default {DEFAULT_METHOD}")
    q.add_argument("--weight-bits", type=_bits, default=None)
    q.add_argument("--act-bits", type=_bits, default=None)
    q.add_argument("--preset", default=None, help="the paper's settings for a dataset: cifar10, lsun-bedroom, "
                   "lsun-church, imagenet, coco (sampler, steps, eta, guidance, lambda, add-loss, iterations, "
                   "learning rate, calibration size); --config and flags override it")
    q.add_argument("--config", type=Path, default=None, help="JSON quantization config; flags override it")
    q.add_argument("--sampler", default=None, help="calibrate (and save) with this sampler instead of the "
                   "pipeline's scheduler: ddim, ddpm, plms")
    q.add_argument("--num-samples", type=_positive_int, default=None, help="calibration samples N")
    q.add_argument("--num-trajectories", type=_positive_int, default=None, help="FP trajectories B")
    q.add_argument("--uniform-steps", type=_positive_int, default=None, help="steps used by uniform calibration")
    q.add_argument("--weight-range", choices=RANGE_METHODS, default=None)
    q.add_argument("--act-range", choices=RANGE_METHODS, default=None)
    q.add_argument("--attn-bits", type=_bits, default=None, help="bits of attention q, k, v and probabilities")
    q.add_argument("--split-shortcut", action=argparse.BooleanOptionalAction, default=None,
                   help="split quantizers of skip-concatenation convs (default: the method's)")
    q.add_argument("--strategy", choices=CALIB_STRATEGIES, default=None,
                   help="calibration strategy (default: the method's)")
    q.add_argument("--tdac-lambda", type=float, default=None, help="TDAC variety weight (default 1.2)")
    q.add_argument("--tdac-radius", type=_radius, default=None,
                   help="TDAC density radius: 'auto' (0.2 quantile of step distances) or a number")
    q.add_argument("--tdac-uniform-share", type=float, default=None,
                   help="TDAC: share of the calibration samples placed uniformly (on --uniform-steps steps), "
                        "the rest by TDAC (default 0, the reference)")
    q.add_argument("--recon", action=argparse.BooleanOptionalAction, default=None,
                   help="block reconstruction (default: the method's)")
    q.add_argument("--iters", type=_positive_int, default=None,
                   help="reconstruction iterations per unit (two-stage: of the weight stage); default: the "
                        "recipe's reference count x --iters-scale")
    q.add_argument("--act-iters", type=_positive_int, default=None,
                   help="two-stage recipes: iterations per unit of the activation stage")
    q.add_argument("--iters-scale", type=float, default=None,
                   help=f"one factor on every recipe's reference iterations (default {DEFAULT_ITERS_SCALE}, "
                        "for CPU; 1: the reference codes' counts)")
    q.add_argument("--act-range-kind", choices=ACT_RANGE_KINDS, default=None,
                   help="activation range search: free (2-D) or symmetric (the references'); default: the recipe's")
    q.add_argument("--recon-batch-size", type=_positive_int, default=None)
    q.add_argument("--lr-weight", type=float, default=None, help="AdaRound learning rate")
    q.add_argument("--lr-act", type=float, default=None, help="activation step-size learning rate")
    q.add_argument("--add-loss", type=float, default=None, help="FBR inner-layer loss weight (0: BRECQ)")
    q.add_argument("--round-weight", type=float, default=None, help="AdaRound regulariser weight")
    q.add_argument("--step-balance", choices=STEP_BALANCE, default=None,
                   help="reconstruction loss over timesteps: none (pooled MSE, the methods' own) or relative "
                        "(each timestep's error relative to its error before reconstruction); default: the recipe's")
    q.add_argument("--step-balance-bins", type=int, default=None,
                   help="relative step balance: weigh by the error of K equal stretches of the trajectory "
                        "instead of each timestep's own (0: per timestep, the default)")
    q.add_argument("--qdrop", type=float, default=None, help="QDrop input mixing probability")
    q.add_argument("--seed", type=int, default=None)
    q.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write OUT/report/index.html (default on)")
    q.add_argument("--report-samples", type=_nonneg_int, default=16,
                   help="FP vs quantized samples in the report (0: none)")
    _common(q)
    q.set_defaults(batch_size=None)  # calibration batch: the config's (64) unless given

    r = sub.add_parser("report", help="write DIR/report/index.html (+ report.md) for a quantized directory")
    r.add_argument("model", help="quantized directory")
    r.add_argument("--fp", default=None, help="full-precision pipeline for side-by-side samples "
                   "(default: the source recorded at quantization)")
    r.add_argument("--num", type=_nonneg_int, default=32, help="samples per model (0: none)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--engine", choices=ENGINE_CHOICES, default=DEFAULT_ENGINE)
    r.add_argument("--device", default="auto")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")

    s = sub.add_parser("sample", help="generate images")
    s.add_argument("model", help="zoo name, diffusers directory or quantized directory")
    # -n: under torchrun, --num is an ambiguous prefix of torchrun's own --numa-binding
    s.add_argument("-n", "--num", type=_positive_int, default=64, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="grid PNG (default grid.png)")
    s.add_argument("--out-dir", type=Path, default=None, help="one PNG per image")
    s.add_argument("--engine", choices=ENGINE_CHOICES, default=DEFAULT_ENGINE,
                   help="quantized models: integer kernels (int), float simulation (fake), or the ONNX export on "
                        "onnxruntime / openvino (docs/deployment.md)")
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.add_argument("--labels", type=_labels, default=None,
                   help="class-conditional models: comma-separated digits/classes, cycled over the images "
                        "(--labels 7: all sevens; default: image i gets class i mod classes)")
    _common(s)
    _dtype_flag(s)

    e = sub.add_parser("evaluate", help="sample and measure FID-digits / IS-digits over seeds")
    e.add_argument("model")
    e.add_argument("--num", type=_positive_int, default=1000)
    e.add_argument("--seeds", type=_seeds, default=[0, 1, 2])
    e.add_argument("--compare", default=None, help="another model: PSNR / MSE against its images from the same noise")
    e.add_argument("--json", type=Path, default=None, help="write results as JSON")
    e.add_argument("--bootstrap", type=_nonneg_int, default=500,
                   help="digits models with --compare: bootstrap draws for the 95 %% intervals of every metric "
                        "and of every paired difference vs the compared model (docs/evaluation.md); 0: none")
    e.add_argument("--engine", choices=ENGINE_CHOICES, default=DEFAULT_ENGINE,
                   help="quantized models: integer kernels (int), float simulation (fake), or the ONNX export on "
                        "onnxruntime / openvino (docs/deployment.md)")
    e.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    e.add_argument("--metrics", type=_metric_list, default=None,
                   help="comma-separated: fid-digits (digits models), fid, sfid, is, clip (the last four need "
                        "the metrics extra). Default: every metric that applies to the model and can run here "
                        "(PSNR / MSE vs --compare always), naming what was skipped")
    e.add_argument("--reference", type=Path, default=None,
                   help="FID / sFID reference: image folder (statistics cached beside it) or .npz (mu, sigma, mu_s, sigma_s)")
    e.add_argument("--inception-weights", type=Path, default=None, help="local InceptionV3 weights (torch-fidelity format)")
    e.add_argument("--clip-model", type=Path, default=None,
                   help="local transformers CLIPModel directory for --metrics clip (text-to-image pipelines)")
    _common(e)
    _dtype_flag(e)

    sc = sub.add_parser("score", help="metrics of images already sampled (a folder of PNGs or samples.npz)")
    sc.add_argument("samples", type=Path, help="folder written by `edadm sample --out-dir` (or any PNG folder), or an .npz")
    sc.add_argument("--metrics", type=_metric_list, default=None,
                    help="default: every metric that applies to the images and can run here")
    sc.add_argument("--reference", type=Path, default=None, help="FID / sFID reference (folder or .npz of statistics)")
    sc.add_argument("--inception-weights", type=Path, default=None)
    sc.add_argument("--device", default="auto")
    sc.add_argument("--json", type=Path, default=None)

    d = sub.add_parser("demo", help="FP vs naive W8A8 / W4A8 vs edadm's default method at W4A8 on the shipped "
                       "digits model, with a report")
    d.add_argument("--model", default="digits-ddpm")
    d.add_argument("--out", type=Path, default=Path("edadm-demo"))
    d.add_argument("--num", type=_positive_int, default=200,
                   help="samples per seed per model (200: README command 1 stays under 10 minutes on 2 cores)")
    d.add_argument("--seeds", type=_seeds, default=[0])
    d.add_argument("--settings", default=f"w8a8,w4a8,w4a8:{DEFAULT_METHOD}",
                   help="comma-separated WxAy settings, each optionally with its method (WxAy:method)")
    d.add_argument("--method", default="naive", help="the method of settings that name none")
    # the demo's budget, smaller than `edadm quantize`'s so README command 1 stays under 10 minutes
    d.add_argument("--num-samples", type=_positive_int, default=DEMO_NUM_SAMPLES,
                   help=f"calibration samples N (default {DEMO_NUM_SAMPLES}; edadm quantize: 1024)")
    d.add_argument("--iters-scale", type=float, default=DEMO_ITERS_SCALE,
                   help=f"reconstruction iterations as a factor of the references' (default {DEMO_ITERS_SCALE}; "
                        f"edadm quantize: {DEFAULT_ITERS_SCALE})")
    _common(d)

    x = sub.add_parser("export", help="write a quantized directory's denoiser as ONNX with its quantization "
                       "(QDQ nodes, integer weights) for ONNX Runtime, OpenVINO, TensorRT")
    x.add_argument("model", help="quantized directory (edadm quantize --out)")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", required=True, type=Path, help="output file, e.g. denoiser.onnx")
    x.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (>= 13: per-axis DequantizeLinear)")
    x.add_argument("--target", choices=EXPORT_TARGETS, default="onnx",
                   help="onnx: edadm's numbers as they are (ONNX Runtime, OpenVINO); tensorrt: TensorRT's "
                        "explicit quantization (int8, zero point 0; docs/deployment.md)")
    x.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=False,
                   help="--target tensorrt: re-derive asymmetric activation ranges (free recipes such as naive, "
                        "eda-dm-plus) as symmetric ones covering the same range, at one bit less resolution; "
                        "default: refuse them")

    z = sub.add_parser("zoo", help="list or train the shipped demo models")
    zsub = z.add_subparsers(dest="zoo_command", required=True, parser_class=_Parser)
    zsub.add_parser("list", help="list zoo models")
    zt = zsub.add_parser("train", help="train a zoo model (fixed seed) into the zoo or --out")
    zt.add_argument("name")
    zt.add_argument("--out", type=Path, default=None)
    zt.add_argument("--train-steps", type=_positive_int, default=None)
    zt.add_argument("--seed", type=int, default=None)
    zt.add_argument("--device", default="auto")
    return ap


# flag -> (section, key) of QuantConfig; section None is the top level
_CONFIG_FLAGS = {
    "method": (None, "method"), "weight_bits": (None, "weight_bits"), "act_bits": (None, "act_bits"),
    "attn_bits": (None, "attn_bits"), "weight_range": (None, "weight_range"), "act_range": (None, "act_range"),
    "split_shortcut": (None, "split_shortcut"), "seed": (None, "seed"), "steps": (None, "steps"), "eta": (None, "eta"),
    "guidance_scale": (None, "guidance_scale"), "sampler": (None, "sampler"),
    "strategy": ("calib", "strategy"), "num_samples": ("calib", "num_samples"),
    "num_trajectories": ("calib", "num_trajectories"), "uniform_steps": ("calib", "uniform_steps"),
    "batch_size": ("calib", "batch_size"), "tdac_lambda": ("calib", "tdac_lambda"),
    "tdac_radius": ("calib", "tdac_radius"),
    "tdac_uniform_share": ("calib", "tdac_uniform_share"), "recon": ("recon", "enabled"), "iters": ("recon", "iters"),
    "act_iters": ("recon", "act_iters"), "iters_scale": ("recon", "iters_scale"), "act_range_kind": (None, "act_range_kind"),
    "recon_batch_size": ("recon", "batch_size"), "lr_weight": ("recon", "lr_weight"), "lr_act": ("recon", "lr_act"),
    "add_loss": ("recon", "add_loss"), "round_weight": ("recon", "round_weight"),
    "qdrop": ("recon", "input_mix_prob"), "step_balance": ("recon", "step_balance"),
    "step_balance_bins": ("recon", "step_balance_bins"),
}


def read_prompts(path: Path) -> list[str]:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EdadmError(f"cannot read prompts file {path}: {exc}") from exc
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise EdadmError(f"prompts file {path} has no prompts (one per line)")
    return prompts


def _with_prompts(pipe, path: Path | None):
    """Sampling prompts from --prompts (text-to-image pipelines only)."""
    from .sampling import with_prompts

    return pipe if path is None else with_prompts(pipe, read_prompts(path))


def _quant_config(args):
    """Dataset preset (if any), then the config file (if any), then the flags given; unset
    fields take the method's recipe. A config file holds what was set (QuantConfig.save
    writes the user's values, not the recipe's), so another --method over it takes that
    method's recipe for everything the file leaves unset."""
    from .config import QuantConfig

    cfg = json.loads(Path(args.config).read_text()) if args.config and Path(args.config).is_file() else {}
    if args.config and not Path(args.config).is_file():
        raise EdadmError(f"config file {args.config} not found")
    if not isinstance(cfg, dict):
        raise EdadmError(f"config file {args.config} must hold a JSON object")
    if args.preset is not None:  # an overlay applied by QuantConfig under what is set (config.preset_config)
        cfg["preset"] = args.preset
    for flag, (section, key) in _CONFIG_FLAGS.items():
        v = getattr(args, flag, None)
        if v is None:
            continue
        if section is None:
            cfg[key] = v
        else:
            cfg.setdefault(section, {})[key] = v
    cfg = QuantConfig.from_dict(cfg)
    c = cfg.calib
    per_step = -(-c.num_samples // c.uniform_steps) if c.strategy == "uniform" else c.num_samples
    if c.num_trajectories < per_step:
        log.warning("fewer trajectories (%d) than calibration samples per step (%d): trajectories are reused "
                    "within a step", c.num_trajectories, per_step)
    return cfg


def cmd_quantize(args) -> int:
    from .api import quantize_to_dir

    cfg = _quant_config(args)
    _check_writable(args.out)
    t0 = time.time()
    pipe = quantize_to_dir(args.model, cfg, args.out, device=args.device, resume=args.resume, progress=args.progress,
                           prompts=read_prompts(args.prompts) if args.prompts is not None else None)
    if pipe is None:  # a helper process under torchrun
        return 0
    if args.report:
        from .report import build_report

        try:
            page = build_report(args.out, fp_model=args.model, num=args.report_samples, device=args.device)
            log.info("report: %s", page)
        except Exception as exc:  # the quantized model is saved; a failed report must not lose it
            log.warning("report not written (%s: %s); run `edadm report %s` to retry", type(exc).__name__, exc,
                        args.out)
    print(f"saved {args.out} ({cfg.method} W{cfg.weight_bits}A{cfg.act_bits}, {time.time() - t0:.1f}s)")
    return 0


def _image_labels(pipe, labels: list[int] | None, num: int):
    """--labels cycled over `num` images, checked against the model's classes (None: default)."""
    import torch

    from .model.families import get_denoiser, num_classes

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
    from .dist import PACKED, finish, init_distributed, rank_device, sample_to_dir
    from .eval.images import save_grid
    from .loading import load_pipeline
    from .sampling import generate

    info = init_distributed(args.device)
    if info.world_size > 1 and args.out_dir is None:
        raise EdadmError("sampling with several processes needs --out-dir (one PNG per image, packed at the end)")
    out = args.out if args.out is not None or args.out_dir is not None else Path("grid.png")
    for p in (out, args.out_dir):
        if p is not None:
            _check_writable(p)
    pipe = _with_prompts(load_pipeline(args.model, device=rank_device(info, args.device), engine=args.engine,
                                       dtype=_dtype(args),
                                       compile=args.compile),
                         args.prompts)
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


def cmd_evaluate(args) -> int:
    from .eval.evaluate import evaluate_pipeline, format_table
    from .loading import load_pipeline
    from .model.families import get_denoiser, sample_shape
    from .sampling import autoencoder, is_text_conditional, prompts_of
    from .utils import atomic_file, device_of

    if args.json:
        _check_writable(args.json)
    pipe = _with_prompts(load_pipeline(args.model, device=args.device, engine=args.engine, compile=args.compile,
                                       dtype=_dtype(args)),
                         args.prompts)
    clip_reason = None
    if not is_text_conditional(pipe):
        clip_reason = f"clip skipped: needs a text-to-image pipeline (prompts); {pipeline_class(pipe)} has none"
    elif args.clip_model is None:
        clip_reason = "clip skipped: needs --clip-model (a local transformers CLIPModel directory)"
    auto = args.metrics is None
    # pixel space: the image shape is known before sampling (latent models: after decoding)
    shape = sample_shape(get_denoiser(pipe)) if autoencoder(pipe) is None else None
    metrics, skipped = _choose_metrics(args, clip_reason, image_shape=shape, compare=bool(args.compare))
    dev = device_of(get_denoiser(pipe))
    standard, conventions = _standard_metrics(metrics, args.reference, args.inception_weights, dev)
    if "clip" in metrics:
        standard, conventions = _with_clip(standard, conventions, prompts_of(pipe), args.clip_model, dev)
    reference = None
    if args.compare:
        ref_pipe = _with_prompts(load_pipeline(args.compare, device=args.device), args.prompts)
        _, reference = evaluate_pipeline(ref_pipe, args.num, args.seeds, args.steps, args.eta, args.batch_size,
                                         progress=args.progress, digits=False, guidance_scale=args.guidance_scale)
    digits = ("auto" if auto else True) if "fid-digits" in metrics else False
    result, images = evaluate_pipeline(pipe, args.num, args.seeds, args.steps, args.eta, args.batch_size,
                                       reference=reference, progress=args.progress, digits=digits,
                                       standard=standard, guidance_scale=args.guidance_scale)
    metrics, skipped = _digits_outcome(result["per_seed"][0], metrics, skipped)
    if reference is not None and "fid-digits" in metrics and args.bootstrap:
        from .eval.digits import digits_paired

        for m in result["per_seed"]:
            m["paired"] = digits_paired(images[m["seed"]], reference[m["seed"]], reps=args.bootstrap, seed=m["seed"])
    if not metrics and reference is None:
        raise EdadmError("no metric applies here: " + "; ".join(skipped.values()) + " (or pass --compare MODEL)")
    result.update(model=str(args.model), compare=args.compare, metrics=metrics, skipped=skipped,
                  conventions=conventions)
    keys = tuple(k for k in ("fid_digits", "is_digits", "class_agreement", "fid", "sfid", "is", "clip")
                 if k in result["summary"])
    keys += ("psnr_vs_ref",) if reference else ()
    print(format_table([(str(args.model), result["summary"])], keys=keys))
    if any("paired" in m for m in result["per_seed"]):
        from .eval.evaluate import format_paired

        print(format_paired(result["per_seed"]))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def _with_clip(standard, conventions: dict, prompts: list[str], clip_dir: Path, device):
    """Add CLIP score to the per-seed metrics: image i (of each seed's 0..num-1) was asked
    for prompt i mod len(prompts), as generate() samples it."""
    from .eval.standard import clip_score

    def metrics(images):
        out = standard(images) if standard is not None else {}
        asked = [prompts[i % len(prompts)] for i in range(len(images))]
        return {**out, "clip": clip_score(images, asked, clip_dir, device=device)}

    return metrics, {**conventions, "clip": f"100 * mean(max(cos, 0)), CLIPModel from {clip_dir}"}


def _choose_metrics(args, clip_reason: str | None, image_shape: tuple | None = None,
                    compare: bool = False) -> tuple[list[str], dict]:
    """The metrics to run and why each other one was skipped.

    --metrics unset: every metric that applies and can run here; fid-digits is decided here
    when `image_shape` (C, H, W) is known, else on the sampled images (_digits_outcome).
    --metrics given: those, minus the ones that cannot run here (a missing extra, clip
    without prompts), each named on stderr; an explicit fid without --reference or
    --inception-weights, or an explicit fid-digits on other images, is an error later, not a
    skip. Nothing left is an error unless `compare` (PSNR / MSE vs a reference model) runs."""
    from .eval.evaluate import digits_problem
    from .eval.standard import missing_extra

    auto = args.metrics is None
    metrics, skipped = [], {}
    for m in ["fid-digits", "fid", "sfid", "is", "clip"] if auto else list(args.metrics):
        why = None
        if m == "fid-digits":
            problem = digits_problem(image_shape) if auto and image_shape is not None else None
            if problem:
                why = problem + "; skipped"
        else:
            why = missing_extra(m) or (clip_reason if m == "clip" else None)
        if why is None and auto and m in ("fid", "sfid", "is") and args.inception_weights is None:
            why = f"{m} skipped: needs --inception-weights (InceptionV3 weights on disk; nothing is downloaded)"
        if why is None and auto and m in ("fid", "sfid") and args.reference is None:
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


def _digits_outcome(first: dict, metrics: list[str], skipped: dict) -> tuple[list[str], dict]:
    """fid-digits asked for automatically but not applicable (not 1x32x32 images): say so."""
    if "fid-digits" in metrics and "fid_digits" not in first:
        why = first.get("digits_skipped", "fid-digits skipped")
        print(f"edadm: {why}", file=sys.stderr)
        return [m for m in metrics if m != "fid-digits"], {**skipped, "fid-digits": why}
    return metrics, skipped


def _standard_metrics(metrics: list[str], reference, weights, device):
    """(callable images -> standard metrics, conventions) or (None, {})."""
    inception = [m for m in metrics if m in ("fid", "sfid", "is")]
    if not inception:
        return None, {}
    from .eval.standard import InceptionFeatures, inception_metrics

    if {"fid", "sfid"} & set(inception) and reference is None:
        raise EdadmError("fid / sfid need --reference (an image folder or an .npz of statistics)")
    feats = InceptionFeatures(weights, device=device)
    conventions = {"features": "torch-fidelity InceptionV3 (TF-compatible), 299x299 TF1 bilinear resize",
                   "sfid": "Mixed_6d 1x1 branch conv, first 7 channels (ADM mixed_6/conv)", "is_splits": 10,
                   "reference": str(reference) if reference else None}
    return (lambda imgs: inception_metrics(imgs, inception, reference, feats)), conventions


def cmd_score(args) -> int:
    import numpy as np
    import torch

    from .eval.evaluate import format_table, image_metrics
    from .eval.metrics import mean_std
    from .utils import atomic_file, resolve_device

    if args.json:
        _check_writable(args.json)
    no_clip = "clip skipped: needs prompts; score takes images only"
    src = args.samples
    if src.suffix == ".npz" and src.is_file():
        with np.load(src) as z:
            if "images" not in z:
                raise EdadmError(f"{src} has no 'images' array")
            arr = z["images"]
    elif src.is_dir():
        from PIL import Image

        from .eval.standard import IMAGE_SUFFIXES

        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EdadmError(f"{src} has no PNG / JPEG images")
        arr = np.stack([np.asarray(Image.open(f)) for f in files])
    else:
        raise EdadmError(f"samples {src} not found (a folder of images or an .npz)")
    arr = arr[..., None] if arr.ndim == 3 else arr
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    metrics, skipped = _choose_metrics(args, no_clip, image_shape=tuple(images.shape[1:]))
    standard, conventions = _standard_metrics(metrics, args.reference, args.inception_weights,
                                              resolve_device(args.device))
    m = image_metrics(images, digits="fid-digits" in metrics, standard=standard)
    result = {"samples": str(src), "num": len(images), "metrics": metrics, "skipped": skipped,
              "conventions": conventions, "per_seed": [m],
              "summary": {k: mean_std([v]) for k, v in m.items() if isinstance(v, float)}}
    keys = tuple(k for k in ("fid_digits", "is_digits", "fid", "sfid", "is") if k in result["summary"])
    print(format_table([(str(src), result["summary"])], keys=keys))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    page = build_report(args.model, fp_model=args.fp, num=args.num, seed=args.seed, device=args.device,
                        engine=args.engine, progress=args.progress)
    print(f"wrote {page}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    _check_writable(args.out)
    run_demo(args)
    return 0


def cmd_export(args) -> int:
    from .deploy.layout import is_quantized_dir
    from .deploy.onnx_export import export_onnx
    from .loading import resolve_model_path

    path = resolve_model_path(args.model)
    if not is_quantized_dir(path):
        raise EdadmError(f"{args.model} is not an edadm quantized directory (write one with edadm quantize --out)")
    if args.opset < 13:
        raise EdadmError(f"--opset {args.opset}: per-axis DequantizeLinear needs opset 13 or later")
    if args.symmetrize and args.target != "tensorrt":
        raise EdadmError("--symmetrize re-derives activation ranges for --target tensorrt; the onnx target keeps "
                         "edadm's own ranges")
    if args.target == "tensorrt" and args.opset > 20:
        raise EdadmError(f"--opset {args.opset}: TensorRT 10 and 11 parse opsets up to 20 with per-axis "
                         "DequantizeLinear (TensorRT 10.0's newest); use 17 (the default)")
    if args.out.suffix != ".onnx":
        raise EdadmError(f"--out {args.out} should end in .onnx")
    _check_writable(args.out)
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise EdadmError("export needs the onnx package: pip install 'edadm[onnx]'")
    t0 = time.time()
    info = export_onnx(path, args.out, opset=args.opset, target=args.target, symmetrize=args.symmetrize)
    q, dq = info["ops"].get("QuantizeLinear", 0), info["ops"].get("DequantizeLinear", 0)
    files = [Path(f) for f in info["files"]]
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"wrote {', '.join(map(str, files))} ({size:.1f} MiB): "
          f"inputs {', '.join(info['inputs'])}; {info['folded_weights']} integer weights, {q} QuantizeLinear, "
          f"{dq} DequantizeLinear, opset {info['opset']} ({time.time() - t0:.1f}s)")
    if "tensorrt" in info:  # what TensorRT's form changed, so that nobody has to read the graph to know
        t, w = info["tensorrt"], info["tensorrt"]["weights"]
        acts = ", ".join(f"{n} {k}" for k, n in t["activations"].items())
        print(f"TensorRT form (int8, zero point 0): activation quantizers {acts} ({t['rederived']} re-derived, "
              f"docs/deployment.md); {w['clipped_codes']} of {w['codes']} weight codes -128 clipped to -127")
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    if args.zoo_command == "list":
        for name, desc in {**zoo.PIPELINES, **zoo.CLASSIFIERS}.items():
            status = "shipped" if (zoo.WEIGHTS_DIR / name).is_dir() else "not trained"
            print(f"{name:20s} {status:12s} {desc}")
        return 0
    from .zoo.train import TRAINERS, train

    if args.name not in TRAINERS:
        raise EdadmError(f"unknown zoo model {args.name!r}; trainable: {', '.join(TRAINERS)}")
    info = train(args.name, out=args.out, device=args.device, steps=args.train_steps, seed=args.seed)
    print(json.dumps(info, indent=2))
    return 0


COMMANDS = {"quantize": cmd_quantize, "sample": cmd_sample, "evaluate": cmd_evaluate, "score": cmd_score,
            "report": cmd_report, "export": cmd_export,
            "demo": cmd_demo, "zoo": cmd_zoo}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("edadm").setLevel(logging.DEBUG if args.verbose else logging.INFO)
        return COMMANDS[args.command](args)
    except EdadmError as exc:
        print(f"edadm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edadm: interrupted", file=sys.stderr)
        return 130
