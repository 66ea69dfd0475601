"""`edadm report`, `demo`, `export` and `zoo`."""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from ..config import DEFAULT_ITERS_SCALE, DEFAULT_METHOD, DEMO_ITERS_SCALE, DEMO_NUM_SAMPLES
from ..deploy.engines import DEFAULT_ENGINE, ENGINES
from ..deploy.onnx_export import TARGETS as EXPORT_TARGETS
from ..errors import EdadmError
from .args import Parser, check_writable, int_list, nonneg_int, positive_int, sampling_flags


def add_parsers(sub) -> None:
    r = sub.add_parser("report", help="write DIR/report/index.html (+ report.md) for a quantized directory")
    r.add_argument("model", help="quantized directory")
    r.add_argument("--fp", default=None, help="full-precision pipeline for side-by-side samples "
                   "(default: the source recorded at quantization)")
    r.add_argument("--num", type=nonneg_int, default=32, help="samples per model (0: none)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--engine", choices=tuple(ENGINES), default=DEFAULT_ENGINE)
    r.add_argument("--device", default="auto")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")

    d = sub.add_parser("demo", help="FP vs naive W8A8 / W4A8 vs edadm's default method at W4A8 on the shipped "
                       "digits model, with a report")
    d.add_argument("--model", default="digits-ddpm")
    d.add_argument("--out", type=Path, default=Path("edadm-demo"))
    d.add_argument("--num", type=positive_int, default=200,
                   help="samples per seed per model (200: README command 1 stays under 10 minutes on 2 cores)")
    d.add_argument("--seeds", type=int_list("seed"), default=[0])
    d.add_argument("--settings", default=f"w8a8,w4a8,w4a8:{DEFAULT_METHOD}",
                   help="comma-separated WxAy settings, each optionally with its method (WxAy:method)")
    d.add_argument("--method", default="naive", help="the method of settings that name none")
    # the demo's budget, smaller than `edadm quantize`'s so README command 1 stays under 10 minutes
    d.add_argument("--num-samples", type=positive_int, default=DEMO_NUM_SAMPLES,
                   help=f"calibration samples N (default {DEMO_NUM_SAMPLES}; edadm quantize: 1024)")
    d.add_argument("--iters-scale", type=float, default=DEMO_ITERS_SCALE,
                   help=f"reconstruction iterations as a factor of the references' (default {DEMO_ITERS_SCALE}; "
                        f"edadm quantize: {DEFAULT_ITERS_SCALE})")
    sampling_flags(d)

    x = sub.add_parser("export", help="write a quantized directory's denoiser as ONNX with its quantization "
                       "(QDQ nodes, integer weights) for ONNX Runtime, OpenVINO, TensorRT")
    x.add_argument("model", help="quantized directory (edadm quantize --out)")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", required=True, type=Path, help="output file, e.g. denoiser.onnx")
    x.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (>= 13: per-axis DequantizeLinear)")
    x.add_argument("--target", choices=EXPORT_TARGETS, default="onnx",
                   help="onnx: edadm's numbers as they are (ONNX Runtime, OpenVINO); tensorrt: TensorRT's "
                        "explicit quantization (int8, zero point 0; docs/deployment.md)")
    x.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=False,
                   help="--target tensorrt: re-derive asymmetric activation ranges (free recipes such as naive, "
                        "eda-dm-plus) as symmetric ones covering the same range, at one bit less resolution; "
                        "default: refuse them")

    z = sub.add_parser("zoo", help="list or train the shipped demo models")
    zsub = z.add_subparsers(dest="zoo_command", required=True, parser_class=Parser)
    zsub.add_parser("list", help="list zoo models")
    zt = zsub.add_parser("train", help="train a zoo model (fixed seed) into the zoo or --out")
    zt.add_argument("name")
    zt.add_argument("--out", type=Path, default=None)
    zt.add_argument("--train-steps", type=positive_int, default=None)
    zt.add_argument("--seed", type=int, default=None)
    zt.add_argument("--device", default="auto")


def cmd_report(args) -> int:
    from ..report import build_report

    page = build_report(args.model, fp_model=args.fp, num=args.num, seed=args.seed, device=args.device,
                        engine=args.engine, progress=args.progress)
    print(f"wrote {page}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    check_writable(args.out)
    run_demo(args)
    return 0


def cmd_export(args) -> int:
    from ..deploy.layout import is_quantized_dir
    from ..deploy.onnx_export import export_onnx
    from ..loading import resolve_model_path

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
    check_writable(args.out)
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
    from .. import zoo

    if args.zoo_command == "list":
        for name, desc in {**zoo.PIPELINES, **zoo.CLASSIFIERS}.items():
            status = "shipped" if (zoo.WEIGHTS_DIR / name).is_dir() else "not trained"
            print(f"{name:20s} {status:12s} {desc}")
        return 0
    from ..zoo.train import TRAINERS, train

    if args.name not in TRAINERS:
        raise EdadmError(f"unknown zoo model {args.name!r}; trainable: {', '.join(TRAINERS)}")
    info = train(args.name, out=args.out, device=args.device, steps=args.train_steps, seed=args.seed)
    print(json.dumps(info, indent=2))
    return 0
