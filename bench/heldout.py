"""Fast quality proxy for quantization settings: held-out denoiser error and end-to-end PSNR.

Minutes instead of hours: for each configuration, quantize in this process, then measure
(1) the eps-prediction MSE (and the error it injects into x_{t-1} through the DDIM step) of the quantized denoiser against FP on x_t from fresh FP
trajectories (a seed never used for calibration), reported for the first / middle / last
third of the sampler steps, and (2) PSNR of final images against FP from the same noise.
Used to investigate methods and hyperparameters before the hours-long bench/quality.py.

    python bench/heldout.py --configs naive,qdiffusion,eda-dm --bits w4a8
    python bench/heldout.py --configs eda-dm --set recon.iters=200 --set recon.add_loss=0
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

from common import metadata, write_json, write_text  # noqa: E402

from edadm.api import quantize  # noqa: E402
from edadm.calib import collect_trajectories  # noqa: E402
from edadm.config import QuantConfig  # noqa: E402
from edadm.recipes import resolve  # noqa: E402
from edadm.eval.domains import digits_metrics  # noqa: E402
from edadm.eval.metrics import psnr  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402
from edadm.sampling import generate, sampling_defaults  # noqa: E402


def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def build_config(method: str, w: int, a: int, overrides: list[str]) -> QuantConfig:
    d: dict = {"method": method, "weight_bits": w, "act_bits": a, "calib": {}, "recon": {}}
    for item in overrides:
        key, _, val = item.partition("=")
        if "." in key:
            sect, sub = key.split(".", 1)
            d[sect][sub] = _parse_value(val)
        else:
            d[key] = _parse_value(val)
    return resolve(QuantConfig.from_dict(d))  # the config the run uses (recipe values filled in)


HELDOUT_SEED = 987_654  # trajectories no calibration set is drawn from


def heldout_trajectories(base, n: int):
    """n FP trajectories of `base`'s own sampler from HELDOUT_SEED (the held-out set every
    held-out measurement and bench/diag script uses)."""
    d = sampling_defaults(base)
    return collect_trajectories(base, n, seed=HELDOUT_SEED, steps=d.steps, eta=d.eta, progress=False)


@torch.no_grad()
def heldout_error(fp_unet, q_unet, traj, batch: int = 128) -> list[float]:
    """Mean squared eps error per step over held-out trajectories."""
    errs = []
    for s in range(traj.num_steps):
        x, t = traj.xs[s], traj.ts[s]
        tot = 0.0
        for i in range(0, x.shape[0], batch):
            xb = x[i:i + batch]
            tot += float((q_unet(xb, t).sample - fp_unet(xb, t).sample).pow(2).sum())
        errs.append(tot / x.numel())
    return errs


def step_weighted(err: list[float], ts, scheduler) -> list[float]:
    """eps error -> the error it injects into x_{t-1} through one DDIM (eta 0) step:
    d x_prev / d eps = sqrt(1 - a_prev) - sqrt(a_prev) * sqrt(1 - a_t) / sqrt(a_t)."""
    a = scheduler.alphas_cumprod.double()
    out = []
    for i, (e, t) in enumerate(zip(err, ts)):
        at = a[int(t)]
        ap = a[int(ts[i + 1])] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        c = (1 - ap).sqrt() - ap.sqrt() * (1 - at).sqrt() / at.sqrt()
        out.append(e * float(c * c))
    return out


def thirds(v: list[float]) -> list[float]:
    n = len(v)
    cuts = [0, n // 3, 2 * n // 3, n]
    return [sum(v[cuts[i]:cuts[i + 1]]) / max(1, cuts[i + 1] - cuts[i]) for i in range(3)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--configs", default="naive,qdiffusion,eda-dm")
    ap.add_argument("--bits", default="w4a8")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (recon.iters=200)")
    ap.add_argument("--heldout", type=int, default=128, help="held-out trajectories")
    ap.add_argument("--images", type=int, default=200, help="images for end-to-end PSNR")
    ap.add_argument("--fid", action="store_true",
                    help="also FID-digits of the images and its difference to FP's (same noise; needs --images >= 500 to mean much)")
    ap.add_argument("--name", default="heldout")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "heldout",
                    help="directory for NAME.json / NAME.md (one-off investigations: somewhere uncommitted)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    w, a = (int(p) for p in args.bits.lower().lstrip("w").split("a"))
    base = load_pipeline(args.model)
    traj = heldout_trajectories(base, args.heldout)
    fp_imgs = generate(base, args.images, seed=55, progress=False)
    fp_fid = digits_metrics(fp_imgs)["fid_digits"] if args.fid else None
    rows = []
    for method in args.configs.split(","):
        pipe = copy.deepcopy(base)
        cfg = build_config(method, w, a, args.set)
        t0 = time.time()
        rep = quantize(pipe, cfg, progress=False).report
        secs = time.time() - t0
        err = heldout_error(base.unet, pipe.unet, traj)
        xe = step_weighted(err, traj.ts, base.scheduler)
        imgs = generate(pipe, args.images, seed=55, progress=False)
        recon = rep.recon
        ratio = (sum(u["after"] for u in recon) / sum(u["before"] for u in recon)) if recon else None
        row = {"method": method, "bits": args.bits, "overrides": args.set, "quantize_seconds": round(secs, 1),
               "eps_mse": sum(err) / len(err), "eps_mse_thirds": thirds(err),
               "x_step_mse": sum(xe) / len(xe), "x_step_mse_thirds": thirds(xe), "psnr_vs_fp": psnr(imgs, fp_imgs),
               "recon_after_over_before": ratio, "eps_mse_per_step": err, "x_step_mse_per_step": xe,
               "calib_counts": rep.counts}
        if args.fid:
            row["fid_digits"] = digits_metrics(imgs)["fid_digits"]
            row["delta_fid"] = row["fid_digits"] - fp_fid
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {**metadata(argv), "heldout_trajectories": args.heldout, "images": args.images, "fp_fid_digits": fp_fid,
           "rows": rows}
    out = args.out / args.name
    write_json(out.with_suffix(".json"), res)
    lines = [f"# {args.name}", "", f"`{res['command']}` at {res['date']}, commit {res['git_commit']}", "",
             "| method | overrides | eps MSE | first / mid / last third | x_t-1 MSE (thirds) | PSNR vs FP (dB) | "
             "ΔFID-digits vs FP | recon after/before | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        th = " / ".join(f"{x:.4g}" for x in r["eps_mse_thirds"])
        rr = "-" if r["recon_after_over_before"] is None else f"{r['recon_after_over_before']:.3f}"
        dfid = f"{r['delta_fid']:+.2f}" if "delta_fid" in r else "-"
        lines.append(f"| {r['method']} | {' '.join(r['overrides']) or '-'} | {r['eps_mse']:.4g} | {th} | {' / '.join(f'{v:.3g}' for v in r['x_step_mse_thirds'])} | "
                     f"{r['psnr_vs_fp']:.2f} | {dfid} | {rr} | {r['quantize_seconds']} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
