"""Denoiser latency and GPU memory on CUDA: FP32, FP16, FP16 compiled, the simulation, and
edadm's CUDA engine eager and compiled, side by side in one process and one run.

    python bench/speed.py --device cuda          # the same as: python bench/speed_cuda.py
    python bench/speed_cuda.py --models ddpm-cifar10:16,64 --models sd-v1-4:2,8 --repeats 20

Models are the real diffusers architectures at full size with random weights (weights do
not change speed): google/ddpm-cifar10-32's UNet2DModel and Stable Diffusion v1.4's
UNet2DConditionModel at 64x64 latents with 77 prompt tokens. The quantized model is naive
W8A8 with per-channel weight ranges and per-tensor activation ranges calibrated (min / max)
on 16 random inputs, as bench/speed.py does on the CPU; the integer engine is built from it
by the same builder the loader uses (`convert_to_int`).

Variants (each `--variants` name):
- fp32: the diffusers model as built (PyTorch defaults: TF32 convolutions);
- fp16: the same cast to half;
- fp16-compiled: fp16, channels_last, torch.compile (inductor, freezing), the way
  `edadm.loading.compile_denoiser` compiles any denoiser;
- fake: edadm's float simulation in fp32 (what calibration runs);
- int-fp16: edadm's CUDA engine, model cast to half (each quantized layer: input
  quantize-dequantize in one fused kernel, weights rebuilt from the codes once in fp16);
- int-fp16-compiled: the same through `compile_denoiser`'s recipe;
- int-fp16-int-mm: int-fp16 with Linear layers on torch._int_mm (EDADM_INT_KERNEL=int-mm).

Latency: median of `--repeats` timed forwards after 3 warm-up calls (CUDA events around each
call, synchronised), with min and max. Memory: GPU memory the model holds (allocated after
building it, minus before) and the peak during one forward at that batch. Error: relative L2
distance of the output from FP32's on the same inputs, and for engine rows from the
simulation's. Results go to RESULTS/NAME.json and NAME.md after every variant, so a run cut
short keeps what it measured; `--deadline` skips variants that would start after it.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import metadata, write_json, write_text  # noqa: E402
from speed import _example_inputs, _RandomCalib  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "speed"
VARIANTS = ["fp32", "fp16", "fake", "int-fp16", "int-fp16-int-mm", "fp16-compiled", "int-fp16-compiled"]
DEFAULT_MODELS = ["ddpm-cifar10:16,64", "sd-v1-4:2,8"]


def _mb(nbytes: float) -> float:
    return round(nbytes / 2 ** 20, 1)


def quantized_copy(unet, bits: int = 8):
    """A naive W{bits}A8 simulation of `unet` (fp32), ranges from 16 random inputs."""
    from edadm import QuantConfig
    from edadm.quant.calibrate import init_act_ranges, init_weight_ranges
    from edadm.quant.wrap import wrap_model

    fake = copy.deepcopy(unet)
    cfg = QuantConfig(method="naive", weight_bits=bits, act_bits=8)
    wrap_model(fake, cfg)
    init_weight_ranges(fake, method="minmax")
    init_act_ranges(fake, _RandomCalib(fake), batch_size=4, method="minmax", progress=False)
    return fake.eval()


def compiled(model, dtype):
    """compile_denoiser's recipe on a bare denoiser: dtype, channels_last, inductor freezing."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    model.to(dtype=dtype, memory_format=torch.channels_last)
    model.compile(dynamic=False)
    return model


DEV = torch.device("cuda")  # --device cpu: a dry run of this script on the CPU (tiny settings)


def _cuda() -> bool:
    return DEV.type == "cuda"


def sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def allocated() -> int:
    return torch.cuda.memory_allocated() if _cuda() else 0


def timed(call, repeats: int) -> dict:
    for _ in range(3):
        call()
    sync()
    times = []
    for _ in range(repeats):
        if _cuda():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            call()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000)
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3), "max": round(max(times), 3),
            "n": repeats}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def measure(model_name: str, variant: str, batches: list[int], ctx: dict, repeats: int) -> dict:
    from edadm.deploy.intengine import IntLayer, convert_to_int, describe_kernels

    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()
    before = allocated()
    t0 = time.perf_counter()
    dtype = torch.float16 if "16" in variant else torch.float32
    if variant == "fp32":
        model = ctx["fp"]
    elif variant == "fake":
        model = ctx["fake"]
    elif variant.startswith("fp16"):
        model = copy.deepcopy(ctx["fp"]).half()
    else:  # int-*: the CUDA engine from the simulation, by the loader's builder
        old = os.environ.get("EDADM_INT_KERNEL")
        if variant.endswith("int-mm"):
            os.environ["EDADM_INT_KERNEL"] = "int-mm"
        try:
            model = copy.deepcopy(ctx["fake"])
            convert_to_int(model)
            model = model.half()
        finally:
            os.environ.pop("EDADM_INT_KERNEL", None)
            if old is not None:
                os.environ["EDADM_INT_KERNEL"] = old
    if variant.endswith("compiled"):
        model = compiled(model, dtype)
    held = allocated() - before if variant not in ("fp32", "fake") else ctx[f"{variant}_bytes"]
    row = {"model": model_name, "variant": variant, "dtype": str(dtype).replace("torch.", ""),
           "setup_seconds": round(time.perf_counter() - t0, 2), "model_mb": _mb(held), "forward": {}}
    ints = [m for m in model.modules() if isinstance(m, IntLayer)]
    if ints:
        row["kernels"] = describe_kernels(model)
    for b in batches:
        (x, t), kw = ctx["inputs"][b]
        x = x.to(dtype)
        if variant.endswith("compiled"):
            x = x.contiguous(memory_format=torch.channels_last)
        kw = {k: v.to(dtype) for k, v in kw.items()}

        def call():
            return model(x, t, **kw).sample

        with torch.inference_mode():
            t1 = time.perf_counter()
            out = call()
            sync()
            first = time.perf_counter() - t1
            stats = timed(call, repeats)
            if _cuda():
                torch.cuda.reset_peak_memory_stats()
            base = allocated()
            out = call()
            sync()
            stats["peak_forward_mb"] = _mb(torch.cuda.max_memory_allocated() - base) if _cuda() else 0.0
        stats["first_call_seconds"] = round(first, 2)
        stats["rel_l2_vs_fp32"] = round(rel(out, ctx["ref"][b]), 5)
        if variant != "fake" and b in ctx["sim"]:
            stats["rel_l2_vs_simulation"] = round(rel(out, ctx["sim"][b]), 5)
        if variant == "fake":
            ctx["sim"][b] = out.float().clone()
        row["forward"][str(b)] = stats
        print(f"{model_name} {variant} b{b}: {stats['median']} ms (fp32 err {stats['rel_l2_vs_fp32']}), "
              f"first call {stats['first_call_seconds']} s", flush=True)
    del model
    if variant.endswith("compiled"):
        torch._dynamo.reset()
    return row


def build(model_name: str, batches: list[int]) -> dict:
    from edadm.model.reference_configs import build as build_ref

    torch.manual_seed(0)
    before = allocated()
    fp = build_ref(model_name, device=str(DEV)).eval()
    ctx = {"fp": fp, "fp32_bytes": allocated() - before, "inputs": {}, "ref": {}, "sim": {}}
    g = torch.Generator().manual_seed(0)
    for b in batches:
        ctx["inputs"][b] = _example_inputs(fp, b, g, DEV)
        (x, t), kw = ctx["inputs"][b]
        with torch.inference_mode():
            ctx["ref"][b] = fp(x, t, **kw).sample.float().clone()
    before = allocated()
    ctx["fake"] = quantized_copy(fp)
    ctx["fake_bytes"] = allocated() - before
    return ctx


def page(res: dict) -> str:
    lines = [f"# Denoiser speed on CUDA ({res['name']})", "", f"`{res['command']}`", "",
             f"Date {res['date']}, commit {res['git_commit']}, GPU {res.get('gpu')}, torch {res.get('torch')}, "
             f"CUDA {res.get('cuda')}.", "",
             "Forward latency of the denoiser alone, median of the repeats (min-max) after 3 warm-up calls, CUDA "
             "events; 'vs fp16' is fp16's median / this one (higher is faster). Memory: what the model holds on the "
             "GPU, and the peak a forward adds at that batch. Error: relative L2 from FP32's output (engine rows: "
             "and from the simulation's). Random weights, naive W8A8 calibrated on random inputs "
             "(bench/speed_cuda.py docstring).", ""]
    for note in res.get("notes", []):
        lines += [f"Note: {note}", ""]
    models = list(dict.fromkeys(r["model"] for r in res["rows"]))
    for m in models:
        rows = [r for r in res["rows"] if r["model"] == m]
        batches = list(rows[0]["forward"]) if rows else []
        lines += [f"## {m}", "", "| variant | batch | ms (min-max) | vs fp16 | model MB | forward peak MB | "
                                 "err vs fp32 | err vs simulation | first call s |", "|---|---|---|---|---|---|---|---|---|"]
        base = {b: r["forward"][b]["median"] for r in rows if r["variant"] == "fp16" for b in r["forward"]}
        for b in batches:
            for r in rows:
                if "error" in r:
                    continue
                f = r["forward"].get(b)
                if f is None:
                    continue
                ratio = f"{base[b] / f['median']:.2f}x" if b in base else "-"
                lines.append(f"| {r['variant']} | {b} | {f['median']:.2f} ({f['min']:.2f}-{f['max']:.2f}) | {ratio} | "
                             f"{r['model_mb']:.0f} | {f['peak_forward_mb']:.0f} | {f['rel_l2_vs_fp32']:.4f} | "
                             f"{f.get('rel_l2_vs_simulation', '-')} | {f['first_call_seconds']} |")
        lines.append("")
        for r in rows:
            if "kernels" in r:
                lines.append(f"- {r['variant']}: {r['kernels']}")
            if "error" in r:
                lines.append(f"- {r['variant']}: **not measured**: {r['error']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", action="append", default=None,
                    help="MODEL:B1,B2 (repeatable; default: ddpm-cifar10:16,64 and sd-v1-4:2,8)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--name", default="speed_cuda")
    ap.add_argument("--results", type=Path, default=RESULTS, help="directory for NAME.json and NAME.md")
    ap.add_argument("--deadline", type=float, default=0, help="seconds after which no new variant starts (0: none)")
    ap.add_argument("--compiled-last", action=argparse.BooleanOptionalAction, default=True,
                    help="run every model's eager variants before any compiled one (compiles are the slow part)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a dry run of the script itself (tiny settings; no GPU numbers)")
    args = ap.parse_args(argv)
    global DEV
    DEV = torch.device(args.device)
    if _cuda() and not torch.cuda.is_available():
        sys.exit("bench/speed_cuda.py: no CUDA device here")
    import logging

    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    specs = [(m.split(":")[0], [int(b) for b in m.split(":")[1].split(",")]) for m in (args.models or DEFAULT_MODELS)]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"bench/speed_cuda.py: unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    res = {**metadata(argv), "name": args.name, "gpu": torch.cuda.get_device_name(0) if _cuda() else "none (CPU dry run)",
           "torch": torch.__version__,
           "cuda": torch.version.cuda, "repeats": args.repeats, "rows": []}
    eager = [v for v in variants if not v.endswith("compiled")]
    comp = [v for v in variants if v.endswith("compiled")]
    phases = [(eager, specs), (comp, specs)] if args.compiled_last else [(variants, specs)]
    ctxs: dict = {}

    def save():
        args.results.mkdir(parents=True, exist_ok=True)
        write_json(args.results / f"{args.name}.json", res)
        write_text(args.results / f"{args.name}.md", page(res))

    for vs, sp in phases:
        for model_name, batches in sp:
            for v in vs:
                if args.deadline and time.perf_counter() - start > args.deadline:
                    res["rows"].append({"model": model_name, "variant": v, "forward": {},
                                        "error": f"skipped: past the {args.deadline:.0f} s deadline"})
                    save()
                    continue
                try:
                    if model_name not in ctxs:
                        t0 = time.perf_counter()
                        ctxs[model_name] = build(model_name, batches)
                        print(f"{model_name}: built and calibrated in {time.perf_counter() - t0:.0f} s", flush=True)
                    res["rows"].append(measure(model_name, v, batches, ctxs[model_name], args.repeats))
                except Exception as exc:  # one failing variant must not lose the others' numbers
                    import traceback

                    traceback.print_exc()
                    res["rows"].append({"model": model_name, "variant": v, "forward": {},
                                        "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})
                save()
    res["total_seconds"] = round(time.perf_counter() - start, 1)
    save()


if __name__ == "__main__":
    main()
