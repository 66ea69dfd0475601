"""`edadm demo`: FP vs quantized settings on a zoo model, from the same noise, with a report."""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch

from .version import __version__
from .errors import EdadmError
from .provenance import git_commit, machine_info
from .utils import atomic_dir

log = logging.getLogger("edadm")


def parse_setting(s: str, method: str | None = None):
    """"w4a8" -> (4, 8); with `method` given, "w4a8" -> (4, 8, method) and "w4a8:eda-dm-plus" ->
    (4, 8, "eda-dm-plus")."""
    s = s.strip().lower()
    bits, _, own = s.partition(":")
    try:
        w, a = bits.lstrip("w").split("a")
        w, a = int(w), int(a)
    except ValueError:
        raise EdadmError(f"bad setting {s!r}: expected WxAy, e.g. w4a8, or WxAy:method, e.g. w4a8:eda-dm-plus") from None
    if not (2 <= w <= 8 and 2 <= a <= 8):
        raise EdadmError(f"bad setting {s!r}: bits must be in 2..8")
    if method is None:
        if own:
            raise EdadmError(f"bad setting {s!r}: no method here, expected WxAy")
        return w, a
    from .recipes import names

    m = own.strip() or method
    if m not in names():
        raise EdadmError(f"bad setting {s!r}: unknown method {m!r}; choose from {', '.join(names())}")
    return w, a, m


def comparison_figure(rows: list[tuple[str, torch.Tensor]], path: Path, per_row: int = 16) -> None:
    """One row of samples per model, same noise in every column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .eval.images import make_grid

    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.6, len(rows) * 0.8 + 0.3))
    axes = [axes] if len(rows) == 1 else axes
    for ax, (label, imgs) in zip(axes, rows):
        grid = make_grid(imgs[:per_row], nrow=per_row)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(args) -> dict:
    from .api import calibration_trajectories, quantize
    from .config import CalibConfig, QuantConfig
    from .deploy import save_quantized
    from .deploy.intengine import describe_kernels
    from .deploy.kernels import isa_summary
    from .eval.evaluate import add_paired_delta, evaluate_pipeline, format_table
    from .loading import load_pipeline
    from .model.families import get_denoiser

    settings = [parse_setting(s, args.method) for s in args.settings.split(",") if s.strip()]
    out = Path(args.out)
    commit = git_commit()  # read at the start: the code this run executes
    t_all = time.time()
    timings: dict[str, float] = {}
    rows, results, engines = [], {}, {}
    with atomic_dir(out) as tmp:
        t0 = time.time()
        fp = load_pipeline(args.model, device=args.device)
        fp_res, fp_imgs = evaluate_pipeline(fp, args.num, args.seeds, args.steps, args.eta, args.batch_size,
                                            progress=args.progress)
        timings["fp_sample_eval"] = time.time() - t0
        results["FP32"] = fp_res
        rows.append(("FP32", fp_imgs[args.seeds[0]]))
        trajectories = {}  # the FP calibration trajectories, one collection per calibration config
        for w, a, method in settings:
            label = f"W{w}A{a} {method}"
            t0 = time.time()
            calib = CalibConfig(batch_size=min(args.batch_size, 64))
            if args.num_samples:
                calib.num_samples = calib.num_trajectories = args.num_samples
            recon = {} if args.iters_scale is None else {"iters_scale": args.iters_scale}
            cfg = QuantConfig(method=method, weight_bits=w, act_bits=a, steps=args.steps, eta=args.eta,
                              calib=calib, recon=recon)
            key = json.dumps(cfg.resolved_dict()["calib"], sort_keys=True)
            if key not in trajectories:
                trajectories[key] = calibration_trajectories(fp, cfg, progress=args.progress)
                timings[f"calibration trajectories ({method})"] = time.time() - t0
                t0 = time.time()
            qpipe = quantize(copy.deepcopy(fp), cfg, progress=args.progress, trajectories=trajectories[key])
            report, ran = qpipe.report, qpipe.config  # ran: the resolved config
            qdir = tmp / "models" / f"w{w}a{a}-{method}"
            save_quantized(qpipe, qdir, cfg, report.to_dict())
            timings[f"{label} quantize"] = time.time() - t0
            del qpipe
            t0 = time.time()
            loaded = load_pipeline(qdir, device=args.device)  # evaluate what was saved: proves the round trip
            engines[label] = describe_kernels(get_denoiser(loaded))
            res, imgs = evaluate_pipeline(loaded, args.num, args.seeds, args.steps, args.eta, args.batch_size,
                                          reference=fp_imgs, progress=args.progress)
            add_paired_delta(res, fp_res)
            res["quantize_report"] = {"seconds": report.seconds, "peak_memory_mb": report.peak_memory_mb,
                                      "counts": report.counts, "iters": ran.recon.iters if ran.recon.enabled else 0}
            timings[f"{label} sample_eval"] = time.time() - t0
            results[label] = res
            rows.append((label, imgs[args.seeds[0]]))
        comparison_figure(rows, tmp / "samples.png")
        timings["total"] = time.time() - t_all
        keys = ("fid_digits", "fid_digits_delta", "is_digits", "psnr_vs_ref")
        budget = demo_budget(args)
        table = format_table([(k, v["summary"]) for k, v in results.items()], keys=keys)
        meta = {"command": "edadm demo " + " ".join(_argv_of(args)), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "edadm_version": __version__, "git_commit": commit, "machine": machine_info(),
                "model": args.model, "num": args.num, "seeds": args.seeds, "method": args.method, "budget": budget,
                "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "engine": f"int (saved directories loaded with integer kernels) on {isa_summary()}",
                "kernels": engines}
        report = {**meta, "results": results}
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        md = [f"# edadm demo: {args.model}", "",
              f"FP32 against quantized denoisers (method after the setting), {args.num} samples per seed, "
              f"seeds {args.seeds}, "
              "every model sampled from the same initial noise. Mean ± std over seeds.", "",
              f"Quantization budget: {budget}.", "",
              table, "", "![samples, same noise in each column](samples.png)", "",
              f"Engine: {meta['engine']}.", "", *[f"- {k}: {v}" for k, v in engines.items()], "",
              "| step | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in timings.items()], "",
              f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- git commit: {meta['git_commit']}",
              f"- machine: {meta['machine']}", ""]
        (tmp / "report.md").write_text("\n".join(md))
    print(table)
    print(f"report: {out / 'report.md'}")
    return report


def demo_budget(args) -> str:
    """The calibration size and reconstruction iterations the demo quantized with, in words."""
    from .config import DEFAULT_ITERS_SCALE, DEFAULT_METHOD, QuantConfig
    from .recipes import resolve

    full = resolve(QuantConfig(method=DEFAULT_METHOD)).calib.num_samples  # the recipe's calibration size
    n = args.num_samples or full
    scale = DEFAULT_ITERS_SCALE if args.iters_scale is None else args.iters_scale
    return (f"{n} calibration samples, reconstruction at {scale:g} x the reference iterations per unit "
            f"(`edadm quantize` defaults for {DEFAULT_METHOD}: {full} samples, {DEFAULT_ITERS_SCALE:g} x)")


def _argv_of(args) -> list[str]:
    parts = [f"--model {args.model}", f"--num {args.num}", f"--seeds {','.join(map(str, args.seeds))}",
             f"--settings {args.settings}", f"--method {args.method}", f"--out {args.out}"]
    if args.num_samples:
        parts.append(f"--num-samples {args.num_samples}")
    if args.iters_scale is not None:
        parts.append(f"--iters-scale {args.iters_scale:g}")
    return parts
