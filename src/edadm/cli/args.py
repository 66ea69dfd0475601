"""What several commands share: argument types, common flags, output checks, prompts."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import EdadmError

COMPILE_HELP = ("run the denoiser under torch.compile, in bf16 where the hardware computes it natively (CUDA, "
                "AVX512_BF16, AMX) and float32 elsewhere (the fastest path of bench/speed.py): the first "
                "batch pays a one-time compile (~1 min small UNets, ~4 min Stable Diffusion on 2 cores); "
                "worth it for long runs")
ENGINE_HELP = ("quantized models: integer kernels (int), float simulation (fake), or the ONNX export on "
               "onnxruntime / openvino (docs/deployment.md)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise EdadmError(f"{self.prog}: {message}")


def _int_at_least(lo: int, what: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "a non-negative integer")


def int_list(what: str):
    def parse(s: str) -> list[int]:
        try:
            values = [int(x) for x in s.split(",") if x.strip() != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}s must be comma-separated integers, got {s!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"at least one {what} is needed")
        return values
    return parse


def config_type(section: str | None, name: str):
    """The argparse type of a config field: its parser and its declared checks (config.option)."""
    from dataclasses import fields

    from ..config import CalibConfig, QuantConfig, ReconConfig, check

    cls = {None: QuantConfig, "calib": CalibConfig, "recon": ReconConfig}[section]
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    kind = meta["kind"]

    def parse(s: str):
        try:
            v = (int(s) if kind == "int" else float(s) if kind == "float"
                 else s if kind == "radius" and s == "auto" else float(s) if kind == "radius"
                 else [p.strip() for p in s.split(",") if p.strip()] if kind == "patterns" else s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind == 'int' else 'a number'}, "
                                             f"got {s!r}") from None
        try:
            check(name, v, meta)
        except EdadmError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return v
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def check_writable(path: Path) -> None:
    """Fail before hours of work when the output location cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise EdadmError(f"output location {path} is not writable")
    if path.exists() and not path.is_dir() and path.suffix == "":
        raise EdadmError(f"output {path} exists and is not a directory")


def dtype(args):
    import torch

    return args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)


def dtype_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="quantized denoiser's float dtype: auto = float16 for the integer engine on CUDA (weights "
                        "rebuilt from the codes in it once), float32 elsewhere")


def run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every command that runs a model."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--prompts", type=Path, default=None,
                   help="text-to-image pipelines: a text file with one prompt per line; image i gets line i mod lines "
                        "(default: the model's, else edadm's built-in captions)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def sampling_flags(p: argparse.ArgumentParser) -> None:
    """run_flags plus the sampler settings of commands that sample (quantize has its own, in its config)."""
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per denoiser call")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--eta", type=config_type(None, "eta"), default=None, help="DDIM eta (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance of conditional models (default: the model's)")
    p.add_argument("--correction", action=argparse.BooleanOptionalAction, default=True,
                   help="apply a quantized model's saved output correction (PTQD, quantize --output-correction); "
                        "--no-correction samples its raw outputs")
    run_flags(p)


def correction_choice(pipe, args):
    """The pipeline with its output correction dropped under --no-correction."""
    if not getattr(args, "correction", True):
        pipe.correction = None
    return pipe


def read_prompts(path: Path) -> list[str]:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EdadmError(f"cannot read prompts file {path}: {exc}") from exc
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise EdadmError(f"prompts file {path} has no prompts (one per line)")
    return prompts


def with_prompts(pipe, path: Path | None):
    """Sampling prompts from --prompts (text-to-image pipelines only)."""
    from ..sampling import with_prompts as _with

    return pipe if path is None else _with(pipe, read_prompts(path))
