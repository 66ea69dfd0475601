"""Reconstruction hyperparameters on one block: output error after / before reconstruction.

Quantize digits-ddpm (Q-Diffusion calibration, weight and activation ranges), then
reconstruct one block several times from the same starting point with different
ReconConfig values and report its output MSE against FP (quantized inputs) before and after,
the last logged soft block loss and the rounding regulariser left at the end (how many
AdaRound variables were still undecided when rounding became hard). Used to choose the
defaults in edadm.config.ReconConfig.

    python bench/recon_sweep.py --unit down_blocks.1.resnets.0 --bits w4a8 \\
        --runs "iters=1000,lr_weight=0.01" "iters=1000,lr_weight=0.1"
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import metadata, write_json, write_text  # noqa: E402

from edadm.calib import assemble, collect_trajectories, uniform_counts  # noqa: E402
from edadm.config import QuantConfig, ReconConfig  # noqa: E402
from edadm.pipeline import load_pipeline, sampling_defaults  # noqa: E402
from edadm.quant.calibrate import init_act_ranges, init_weight_ranges  # noqa: E402
from edadm.quant.wrap import wrap_model  # noqa: E402
from edadm.recon.engine import full_precision_copy, reconstruct_unit  # noqa: E402

DEFAULT_RUNS = ["iters=200,lr_weight=0.01", "iters=1000,lr_weight=0.01", "iters=1000,lr_weight=0.001",
                "iters=1000,lr_weight=0.1", "iters=1000,lr_weight=0.3", "iters=2000,lr_weight=0.1",
                "iters=500,lr_weight=0.1", "iters=1000,lr_weight=0.1,round_weight=0",
                "iters=1000,lr_weight=0.1,input_mix_prob=0,act_drop_prob=0"]


def parse_run(spec: str) -> dict:
    types = {f.name: f.type for f in fields(ReconConfig)}
    out = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        if k not in types:
            raise SystemExit(f"unknown ReconConfig field {k!r}")
        default = getattr(ReconConfig(), k)
        out[k] = (v.lower() in ("1", "true")) if isinstance(default, bool) else type(default)(v)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--unit", default="down_blocks.1.resnets.0")
    ap.add_argument("--bits", default="w4a8")
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    ap.add_argument("--name", default="recon_lr")
    args = ap.parse_args(argv)
    w, a = (int(p) for p in args.bits.lower().lstrip("w").split("a"))
    torch.manual_seed(0)
    base = load_pipeline(args.model)
    d = sampling_defaults(base)
    traj = collect_trajectories(base, 256, seed=10_000, steps=d.steps, eta=d.eta, progress=False)
    calib = assemble(traj, uniform_counts(traj.num_steps, 256, num_used=16))
    cfg = QuantConfig(method="qdiffusion", weight_bits=w, act_bits=a)
    start = copy.deepcopy(base.unet)
    wrap_model(start, cfg)
    init_weight_ranges(start)
    init_act_ranges(start, calib, batch_size=64, progress=False)
    start_fp = full_precision_copy(start)
    rows = []
    for spec in args.runs:
        unet = copy.deepcopy(start)
        rc = ReconConfig(enabled=True, add_loss=0.0, **parse_run(spec))
        t0 = time.time()
        u = reconstruct_unit(unet, start_fp, args.unit, "block", calib, rc, 64)
        row = {"run": spec, "before": u.before, "after": u.after, "ratio": u.after / u.before,
               "soft_block_last": u.history[-1]["block"], "round_loss_last": u.history[-1]["round"],
               "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(row, flush=True)
    res = {**metadata(argv), "unit": args.unit, "bits": args.bits, "rows": rows}
    out = Path(__file__).parent / "results" / args.name
    write_json(out.with_suffix(".json"), res)
    lines = [f"# Reconstruction sweep: {args.unit}, {args.bits}", "",
             f"`{res['command']}` at {res['date']}, commit {res['git_commit']}", "",
             "Block output MSE vs FP on the calibration inputs (quantized inputs), one seed.", "",
             "| run | before | after | after / before | last soft block loss | rounding loss left | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['before']:.4g} | {r['after']:.4g} | {r['ratio']:.3f} | "
                     f"{r['soft_block_last']:.4g} | {r['round_loss_last']:.3g} | {r['seconds']} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
