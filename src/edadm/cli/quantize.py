"""`edadm quantize`: its flags are the config's fields (config.option), generated here."""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import EdadmError
from .args import check_writable, config_type, nonneg_int, read_prompts, run_flags

log = logging.getLogger("edadm")
METAVARS = {"int": "N", "float": "X", "radius": "X|auto", "patterns": "PATTERN[,PATTERN]"}
SECTIONS = ((None, "quantization"), ("calib", "calibration set"), ("recon", "block reconstruction"))


def config_fields():
    """(section, field) of every config field that has a flag, in declaration order."""
    from ..config import CalibConfig, QuantConfig, ReconConfig

    for section, cls in ((None, QuantConfig), ("calib", CalibConfig), ("recon", ReconConfig)):
        for f in fields(cls):
            if f.metadata.get("cli"):
                yield section, f


def flag_of(section: str | None, f) -> str:
    return "--" + (f.metadata["flag"] or f.name.replace("_", "-"))


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field: its help, choices and range checks from the declaration. A
    flag left out leaves the field to the config file, the preset and the recipe."""
    from ..config import choices_of

    from ..calib import strategies
    from ..recon import stages

    groups = {s: p.add_argument_group(title) for s, title in SECTIONS}
    for name in stages.names():  # a reconstruction family's own options (recon/stages.py)
        if stages.FAMILIES[name].options:
            groups[name] = p.add_argument_group(f"block reconstruction, {name} only")
    for name in strategies.names():  # a strategy's own options (calib.strategies.register)
        if strategies.get(name).options:
            groups[name] = p.add_argument_group(f"calibration set, {name} strategy only")
    for section, f in config_fields():
        meta, default = f.metadata, (f.default if f.default is not MISSING else None)
        help_ = meta["help"] + ("" if default is None or meta["kind"] == "bool" and default is False
                                else f" (default {default})")
        kw = dict(dest=f"cfg.{section}.{f.name}", default=None, help=help_)
        if meta["kind"] == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = config_type(section, f.name)
            choices = choices_of(meta)
            kw["metavar"] = ("{" + ",".join(map(str, choices)) + "}" if choices is not None
                             else METAVARS.get(meta["kind"], "VALUE"))
        owner = {"calib": strategies.owner_of, "recon": stages.owner_of}.get(section, lambda _: None)(f.name)
        groups[owner or section].add_argument(flag_of(section, f), **kw)


def add_parsers(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a pipeline's denoiser and save it")
    q.add_argument("model", help="zoo name (e.g. digits-ddpm) or a local diffusers pipeline directory")
    q.add_argument("--out", required=True, type=Path, help="output directory")
    q.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint (.OUT.ckpt beside --out)")
    q.add_argument("--config", type=Path, default=None, help="JSON quantization config; flags override it")
    q.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write OUT/report/index.html (default on)")
    q.add_argument("--report-samples", type=nonneg_int, default=16,
                   help="FP vs quantized samples in the report (0: none)")
    run_flags(q)
    add_config_flags(q)


def quant_config(args):
    """The config file (if any), then the flags given: what the user set, resolved (a dataset
    preset and the method's recipe fill the rest; the saved config keeps what was set). A
    config file holds what was set (QuantConfig.save writes the user's values, not the
    recipe's), so another --method over it takes that method's recipe for what it leaves unset."""
    from ..config import QuantConfig
    from ..recipes import resolve

    if args.config and not Path(args.config).is_file():
        raise EdadmError(f"config file {args.config} not found")
    try:
        cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdadmError(f"cannot read config {args.config}: {exc}") from exc
    if not isinstance(cfg, dict):
        raise EdadmError(f"config file {args.config} must hold a JSON object")
    for section, f in config_fields():
        v = getattr(args, f"cfg.{section}.{f.name}", None)
        if v is not None:
            target = cfg if section is None else cfg.setdefault(section, {})
            if not isinstance(target, dict):
                raise EdadmError(f"config file {args.config}: {section} must be a JSON object")
            target[f.name] = v
    cfg = resolve(QuantConfig.from_dict(cfg))  # resolved once here (its to_dict() is still what was set)
    c = cfg.calib
    per_step = -(-c.num_samples // c.uniform_steps) if c.strategy == "uniform" else c.num_samples
    if c.num_trajectories < per_step:
        log.warning("fewer trajectories (%d) than calibration samples per step (%d): trajectories are reused "
                    "within a step", c.num_trajectories, per_step)
    return cfg


def cmd_quantize(args) -> int:
    from ..api import quantize_to_dir

    cfg = quant_config(args)
    check_writable(args.out)
    t0 = time.time()
    pipe = quantize_to_dir(args.model, cfg, args.out, device=args.device, resume=args.resume, progress=args.progress,
                           prompts=read_prompts(args.prompts) if args.prompts is not None else None)
    if pipe is None:  # a helper process under torchrun
        return 0
    if args.report:
        from ..report import build_report

        try:
            page = build_report(args.out, fp_model=args.model, num=args.report_samples, device=args.device)
            log.info("report: %s", page)
        except Exception as exc:  # the quantized model is saved; a failed report must not lose it
            log.warning("report not written (%s: %s); run `edadm report %s` to retry", type(exc).__name__, exc,
                        args.out)
    print(f"saved {args.out} ({cfg.method} W{cfg.weight_bits}A{cfg.act_bits}, {time.time() - t0:.1f}s)")
    return 0
