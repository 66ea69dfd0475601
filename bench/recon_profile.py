"""Reconstruction cost per iteration, by unit kind: where quantization time goes (issue 34).

For each model, the denoiser is wrapped with a recipe (default eda-dm-plus W4A8), its ranges
initialised by min / max on random inputs (the loop's cost does not depend on the ranges),
and for the first unit of each kind (ResNet block, attention block, transformer block, a
lone quantized layer) the reconstruction loop `recon.engine._optimise` runs `--iters`
iterations at the recipe's batch size after a short warm-up; the table gives milliseconds
per iteration, and `--profile` adds the top operators (torch.profiler, self CPU time).

    python bench/recon_profile.py                                  # digits-ddpm and ddpm-cifar10
    python bench/recon_profile.py --models digits-ddpm --iters 50 --profile --name recon_profile_ddpm
    python bench/recon_profile.py --models digits-ddpm --all-units --profile --name all-units  # every unit

Run it alone on the machine: its timings are only valid without another heavy process.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import metadata, write_json, write_text  # noqa: E402
from speed import _RandomCalib  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "recon"
KINDS = {"ResnetBlock2D": "resnet", "Attention": "attention", "BasicTransformerBlock": "transformer",
         "Transformer2DModel": "transformer"}


def unit_kind(mod, kind: str) -> str:
    if kind == "layer":
        return "layer"
    name = type(mod).__name__
    return KINDS.get(name, name)


def build(model: str, method: str, w: int, a: int, device: str):
    from edadm import QuantConfig
    from edadm.recipes import resolve
    from edadm.loading import load_pipeline
    from edadm.model.reference_configs import build as build_ref
    from edadm.quant.calibrate import init_act_ranges, init_weight_ranges
    from edadm.quant.wrap import wrap_model

    torch.manual_seed(0)
    unet = load_pipeline(model, device=device).unet if model.startswith("digits") else build_ref(model, device)
    unet = unet.eval()
    qc = resolve(QuantConfig(method=method, weight_bits=w, act_bits=a))  # the recipe's values filled in
    wrap_model(unet, qc)
    init_weight_ranges(unet, method="minmax")
    rc = qc.recon
    rc.fill_defaults(qc.seed)
    rc.step_balance = "none"  # needs a trajectory calibration set; one weighted mean more per iteration
    calib = _RandomCalib(unet, n=64, batch=32)
    init_act_ranges(unet, calib, batch_size=32, method="minmax", progress=False)
    return unet, rc, calib


def profile_units(model: str, args) -> list[dict]:
    from edadm.model.structure import reconstruction_units
    from edadm.quant.modules import QuantMixin
    from edadm.quant.quantizer import UniformQuantizer
    from edadm.quant.wrap import set_quant_state
    from edadm.recon import engine

    unet, rc, calib = build(model, args.method, args.weight_bits, args.act_bits, args.device)
    fp = engine.full_precision_copy(unet)
    set_quant_state(unet, weight=True, act=True)
    dev = next(unet.parameters()).device
    seen, rows = set(), []
    for name, kind in reconstruction_units(unet, lambda m: isinstance(m, QuantMixin)):
        k = unit_kind(unet.get_submodule(name), kind)
        if k in seen and not args.all_units:
            continue
        seen.add(k)
        unit, fp_unit = unet.get_submodule(name), fp.get_submodule(name)
        t0 = time.perf_counter()
        data = engine._capture(unet, fp, unit, fp_unit, kind, calib, rc, 32, dev, name, None)
        capture_s = time.perf_counter() - t0
        qlayers = [m for m in unit.modules() if isinstance(m, QuantMixin)]
        act_qs = [m for m in unit.modules() if isinstance(m, UniformQuantizer) and m.role == "act"
                  and bool(m.initialized) and m.enabled]
        ulog = engine.UnitLog(name=name, kind=kind, iters=args.iters, seconds=0.0)
        # the weights as reconstruct() leaves them (engine.frozen; before it existed they
        # required gradients, as the quantized model's parameters do by default)
        freeze = getattr(engine, "frozen", contextlib.nullcontext)
        with freeze(unet):
            lrs = {id(m): rc.lr_weight for m in qlayers} if rc.learn_rounding else {}  # what reconstruct_unit passes
            groups, shapes = engine._param_groups(qlayers, act_qs, rc, lrs, rc.learn_act_scale, dev)
            run = lambda n: engine._optimise(unit, name, "joint", data, qlayers, act_qs, groups, shapes, rc, n,  # noqa: E731
                                             2.0, True, dev, ulog, False)
            run(3)  # warm-up (allocator, first-call paths)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(args.iters)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1000 / args.iters
        row = {"model": model, "unit": name, "kind": k, "quant_layers": len(qlayers), "ms_per_iter": round(ms, 2),
               "capture_seconds": round(capture_s, 2), "batch": rc.batch_size}
        if dev.type == "cpu":
            # the arithmetic of one iteration (forward and backward matmuls / convolutions,
            # torch's FLOP counter) and the rate the loop reaches on it: what bounds the loop
            from torch.utils.flop_counter import FlopCounterMode

            with freeze(unet), FlopCounterMode(display=False) as fc:
                run(1)
            row["gflop_per_iter"] = round(fc.get_total_flops() / 1e9, 3)
            row["gflops"] = round(row["gflop_per_iter"] / (ms / 1000), 1)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with freeze(unet), profile(activities=[ProfilerActivity.CPU]) as prof:
                run(min(args.iters, 10))
            ev = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                        key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in ev)
            row["top_ops"] = [{"op": e.key[:60], "share": round(e.self_cpu_time_total / total, 3)} for e in ev[:8]]
            # matmuls and convolutions, forward and backward: the arithmetic; the rest is
            # element-wise work (fake quantization, QDrop, norms, losses) and the optimiser
            heavy = ("convolution", "mm", "bmm", "addmm", "linear", "scaled_dot_product", "conv2d")
            row["arith_share"] = round(sum(e.self_cpu_time_total for e in ev
                                           if any(h in e.key for h in heavy)) / total, 3)
        for m in qlayers:
            m.rounding = None
        for q in act_qs:
            q.scale.requires_grad_(False)
            q.drop_prob, q.mask_pool = 0.0, None
        print(f"{model} {k} {name}: {ms:.1f} ms/iter", flush=True)
        rows.append(row)
    return rows


def page(res: dict) -> str:
    lines = [f"# Reconstruction cost per iteration ({res['name']})", "", f"`{res['command']}`", "",
             f"Date {res['date']}, commit {res['git_commit']}, machine {res['machine'].get('cpu', '')}, "
             f"ISA {res['isa']}, {res['threads']} threads, device {res['device']}; recipe {res['recipe']}.", "",
             "Milliseconds per iteration of the reconstruction loop (forward, FBR loss, backward, Adam step) for the "
             f"first unit of each kind, mean of {res.get('iters', 20)} iterations after 3 warm-up ones; capture: "
             "caching the unit's FP / quantized inputs and FP targets for 64 calibration samples.", "",
             "GFLOP / iter: matmuls and convolutions of one iteration, forward and backward (torch's FLOP counter); "
             "GFLOP/s: the rate the loop reaches on them; arithmetic share (with --profile): the matmul and "
             "convolution kernels' share of the loop's self CPU time, the rest being element-wise work "
             "(fake quantization, QDrop, norms, losses) and the optimiser.", "",
             "| model | kind | unit | quantized layers | batch | ms / iter | GFLOP / iter | GFLOP/s | arithmetic share | "
             "capture s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        gf = f"{r['gflop_per_iter']:.3f} | {r['gflops']:.0f}" if "gflops" in r else "- | -"
        share = f"{r['arith_share']:.0%}" if "arith_share" in r else "-"
        lines.append(f"| {r['model']} | {r['kind']} | `{r['unit']}` | {r['quant_layers']} | {r['batch']} | "
                     f"{r['ms_per_iter']:.1f} | {gf} | {share} | {r['capture_seconds']:.1f} |")
    if res.get("all_units"):
        lines += [""]
        for m in dict.fromkeys(r["model"] for r in res["rows"]):
            rows = [r for r in res["rows"] if r["model"] == m]
            ms = sum(r["ms_per_iter"] for r in rows)
            lines.append(f"- {m}: {len(rows)} units, {ms:.0f} ms per iteration of every unit together: "
                         f"{ms * 5000 / 1000:.0f} s of reconstruction loop at the references' 5000 iterations per "
                         f"unit, {ms * 200 / 1000:.0f} s at 200 (`--iters-scale 0.04`), capture and evaluation not "
                         "included")
    prof = [r for r in res["rows"] if r.get("top_ops")]
    if prof:
        lines += ["", "Top operators (share of self CPU time):", ""]
        for r in prof:
            lines.append(f"- {r['model']} {r['kind']}: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in r["top_ops"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from edadm.deploy.kernels import isa_summary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits-ddpm,ddpm-cifar10")
    ap.add_argument("--method", default="eda-dm-plus")
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--act-bits", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--all-units", action="store_true",
                    help="every unit, not only the first of each kind; the page adds their sum (the loop's time "
                         "per iteration of the whole model)")
    ap.add_argument("--name", default="recon_profile")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    res = {**metadata(argv), "name": args.name, "isa": isa_summary(), "threads": torch.get_num_threads(),
           "device": args.device, "recipe": f"{args.method} W{args.weight_bits}A{args.act_bits}", "iters": args.iters,
           "all_units": args.all_units,
           "rows": []}
    for m in args.models.split(","):
        res["rows"] += profile_units(m, args)
        args.results.mkdir(parents=True, exist_ok=True)
        write_json(args.results / f"{args.name}.json", res)
        write_text(args.results / f"{args.name}.md", page(res))


if __name__ == "__main__":
    main()
