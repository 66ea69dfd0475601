"""Reconstruction hyperparameters on one block: output error after / before reconstruction.

Quantize digits-ddpm (Q-Diffusion calibration, weight and activation ranges), then
reconstruct one block several times from the same starting point with different
ReconConfig values and report its output MSE against FP (quantized inputs) before and after,
the last logged soft block loss and the rounding regulariser left at the end (how many
AdaRound variables were still undecided when rounding became hard). Used to choose the
defaults in edadm.config.ReconConfig.

With --heldout N the same errors are also measured on N calibration samples drawn (same
step allocation) from trajectories of another seed, which the reconstruction never saw,
together with the summed inner-layer error (each inner Conv2d / Linear of the quantized
block on quantized input vs the FP block on FP input, the FBR term): this shows whether
a setting over-fits the calibration set and what the FBR term trades.

    python bench/recon_sweep.py --unit down_blocks.1.resnets.0 --bits w4a8 \\
        --runs "iters=1000,lr_weight=0.01" "iters=1000,lr_weight=0.1"
    python bench/recon_sweep.py --units mid_block.resnets.1 up_blocks.0.attentions.0 \\
        --heldout 256 --runs add_loss=0 add_loss=0.1 add_loss=0.8 --name fbr_sweep
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import fields
from pathlib import Path

import torch

from common import metadata, write_json, write_text  # noqa: E402

from edadm.calib import assemble, collect_trajectories, uniform_counts  # noqa: E402
from edadm.config import QuantConfig, ReconConfig  # noqa: E402
from edadm.recipes import resolve  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402
from edadm.quant.calibrate import init_act_ranges, init_weight_ranges  # noqa: E402
from edadm.quant.wrap import wrap_model  # noqa: E402
from edadm.recon.engine import (  # noqa: E402
    _batched_leaves,
    _first_tensor,
    _inner_layers,
    _run,
    _select,
    _to,
    capture_inputs,
    channel_mse,
    full_precision_copy,
    reconstruct_unit,
)
from edadm.sampling import sampling_defaults  # noqa: E402

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
        if isinstance(default, bool):
            out[k] = v.lower() in ("1", "true")
        else:  # fields defaulting to None (add_loss: the method's) are numbers too
            out[k] = float(v) if default is None else type(default)(v)
    return out


@torch.no_grad()
def unit_errors(model, fp_model, name: str, calib, batch: int) -> tuple[float, float]:
    """(block output MSE, summed inner-layer MSE) of unit `name` on `calib`: the quantized
    model's unit on its own inputs against the FP unit on FP inputs (as in the FBR loss)."""
    unit, fp_unit = model.get_submodule(name), fp_model.get_submodule(name)
    inner, fp_inner = _inner_layers(unit), _inner_layers(fp_unit)
    q_in = capture_inputs(model, unit, calib, batch)
    fp_in = capture_inputs(fp_model, fp_unit, calib, batch)
    blk = inn = 0.0
    n = 0
    dev = next(model.parameters()).device
    rows = _batched_leaves(q_in)[0].shape[0]
    for i in range(0, rows, batch):
        (qa, qk), (fa, fk) = _select(q_in, slice(i, i + batch)), _select(fp_in, slice(i, i + batch))
        y, ys = _run(unit, _to(qa, dev), _to(qk, dev), inner)
        t, ts = _run(fp_unit, _to(fa, dev), _to(fk, dev), fp_inner)
        b = _first_tensor(y).shape[0]
        blk += float(channel_mse(y, t)) * b
        inn += sum(float(channel_mse(o, r)) for o, r in zip(ys, ts)) * b
        n += b
    return blk / n, inn / n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--unit", "--units", dest="units", nargs="+", default=["down_blocks.1.resnets.0"])
    ap.add_argument("--heldout", type=int, default=0, help="held-out calibration samples (0: none)")
    ap.add_argument("--bits", default="w4a8")
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    ap.add_argument("--name", default="recon_lr")
    args = ap.parse_args(argv)
    w, a = (int(p) for p in args.bits.lower().lstrip("w").split("a"))
    torch.manual_seed(0)
    base = load_pipeline(args.model)
    d = sampling_defaults(base)
    traj = collect_trajectories(base, 256, seed=10_000, steps=d.steps, eta=d.eta, progress=False)
    counts = uniform_counts(traj.num_steps, 256, num_used=16)
    calib = assemble(traj, counts)
    held = None
    if args.heldout:
        htraj = collect_trajectories(base, args.heldout, seed=20_000, steps=d.steps, eta=d.eta, progress=False)
        held = assemble(htraj, uniform_counts(htraj.num_steps, args.heldout, num_used=16), seed=1)
    cfg = resolve(QuantConfig(method="qdiffusion", weight_bits=w, act_bits=a))
    start = copy.deepcopy(base.unet)
    wrap_model(start, cfg)
    init_weight_ranges(start)
    init_act_ranges(start, calib, batch_size=64, progress=False)
    start_fp = full_precision_copy(start)
    rows = []
    for unit_name in args.units:
        held_before = unit_errors(start, start_fp, unit_name, held, 64) if held is not None else None
        for spec in args.runs:
            unet = copy.deepcopy(start)
            rc = ReconConfig(enabled=True, **{"add_loss": 0.0, **parse_run(spec)})
            t0 = time.time()
            u = reconstruct_unit(unet, start_fp, unit_name, "block", calib, rc, 64)
            row = {"unit": unit_name, "run": spec, "before": u.before, "after": u.after, "ratio": u.after / u.before,
                   "soft_block_last": u.history[-1]["block"], "inner_last": u.history[-1]["inner"] if rc.add_loss > 0 else None,
                   "round_loss_last": u.history[-1]["round"], "seconds": round(time.time() - t0, 1)}
            if held is not None:
                after = unit_errors(unet, start_fp, unit_name, held, 64)
                row.update(held_block_before=held_before[0], held_inner_before=held_before[1],
                           held_block_after=after[0], held_inner_after=after[1],
                           held_ratio=after[0] / held_before[0])
            rows.append(row)
            print(row, flush=True)
    res = {**metadata(argv), "units": args.units, "bits": args.bits, "heldout": args.heldout, "rows": rows}
    out = Path(__file__).parent / "results" / "heldout" / args.name
    write_json(out.with_suffix(".json"), res)
    lines = [f"# Reconstruction sweep: {', '.join(args.units)}, {args.bits}", "",
             f"`{res['command']}` at {res['date']}, commit {res['git_commit']}, machine {res.get('machine', '?')}", "",
             "Block output MSE vs FP (quantized inputs) on the 256 calibration samples, one seed; "
             "'last soft' losses are the training terms at the last iteration (inner = summed inner-layer "
             "MSE, unweighted)."]
    load = (res.get("machine") or {}).get("loadavg_1m")
    if load is not None and load > torch.get_num_threads() + 0.5:
        lines += ["", f"The s column was measured under load (1-min load average {load} with "
                  f"{torch.get_num_threads()} thread(s)): not valid as timing."]
    if held is not None:
        lines += ["", f"Held-out: {args.heldout} samples from trajectories of another seed, same step allocation; "
                  "block = output MSE, inner = summed inner-layer MSE (quantized block on quantized input vs "
                  "FP block on FP input), before -> after reconstruction."]
    head = "| unit | run | before | after | after / before | last soft block | last soft inner | rounding left | s |"
    if held is not None:
        head += " held-out block before -> after (ratio) | held-out inner before -> after |"
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['unit']} | {r['run']} | {r['before']:.4g} | {r['after']:.4g} | {r['ratio']:.3f} | "
                f"{r['soft_block_last']:.4g} | {'-' if r['inner_last'] is None else format(r['inner_last'], '.4g')} | {r['round_loss_last']:.3g} | {r['seconds']} |")
        if held is not None:
            line += (f" {r['held_block_before']:.4g} -> {r['held_block_after']:.4g} ({r['held_ratio']:.3f}) | "
                     f"{r['held_inner_before']:.4g} -> {r['held_inner_after']:.4g} |")
        lines.append(line)
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
