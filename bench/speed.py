"""Speed, size and memory of FP and integer denoisers, all measured in one run.

For each model and variant, a fresh worker process (its own peak RSS, its own compile
cache) measures the denoiser forward at each batch size (warm-up, then `--repeats` timed
calls: min / median / max ms) and, where asked, a full DDIM sampling run.

Variants:
- fp32-eager: the diffusers model as loaded;
- bf16-autocast: the same under torch.autocast(cpu, bfloat16);
- float-compiled: weights in the dtype `edadm.loading.compile_dtype` picks (bf16 where the
  CPU computes it natively, float32 elsewhere) + channels_last + torch.compile (inductor,
  freezing): the strongest float path; the row names its dtype;
- int-w8a8 / int-w4a8: edadm's integer engine (edadm.deploy.intengine) loaded from a saved
  quantized directory, eager in fp32;
- int-w8a8-compiled / int-w4a8-compiled: the integer engine inside a channels_last model in
  the same dtype under torch.compile with freezing;
- export-ort-* / export-openvino-*: edadm's own quantized directory exported to ONNX
  (edadm export, docs/deployment.md) and run by ONNX Runtime / OpenVINO
- ort-int8 / openvino-int8: ONNX Runtime static int8 and OpenVINO (NNCF) int8 of the same FP
  model, calibrated on the same inputs (bench/peers.py; optional bench dependencies).

Every row records the ISA its worker saw (`edadm.deploy.kernels.isa_info`: the CPU's flags,
the ONEDNN_MAX_CPU_ISA cap, int8 accumulation) and, for integer rows, how many layers ran
which kernel; every row gives its output's relative L2 error against FP32 on the timed
inputs. `--isas native,AVX2` runs the whole set again with oneDNN capped at AVX2.

Models: digits-ddpm (shipped, trained; naive calibration on its own trajectories),
ddpm-cifar10 (google/ddpm-cifar10-32 architecture) and sd-v1-4 (Stable Diffusion v1.4 UNet
at 64x64 latents) with random weights and scales calibrated on random inputs: weights do not
change speed. Integer weights are 4-bit or 8-bit on disk; at load both become int8 for the
kernels (no CPU int4 conv kernel exists), so W4A8 and W8A8 run at the same speed and differ in
size.

    python bench/speed.py                                   # digits-ddpm and ddpm-cifar10
    python bench/speed.py --models ddpm-cifar10 --batches 16 --isas native,AVX2 --name speed_isa
    python bench/speed.py --models sd-v1-4 --batches 1 --repeats 3 --name speed_sd
    python bench/speed.py --device cuda                     # the CUDA table (bench/speed_cuda.py)
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from edadm.utils import peak_rss_mb

from common import metadata, write_json, write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "speed"
VARIANTS = ["fp32-eager", "bf16-autocast", "float-compiled", "int-w8a8", "int-w4a8", "int-w8a8-compiled",
            "int-w4a8-compiled", "ort-int8", "openvino-int8",
            "export-ort-w8a8", "export-openvino-w8a8", "export-ort-w4a8", "export-openvino-w4a8"]
DEFAULT_MODELS = ["digits-ddpm", "ddpm-cifar10"]


# ---------------------------------------------------------------- model construction -------
class _RandomCalib:
    """Duck-typed CalibrationSet: random inputs in the model's input shape (speed only)."""

    def __init__(self, unet, n: int = 16, batch: int = 4):
        self.unet, self.n, self.batch = unet, n, batch

    def __len__(self) -> int:  # capture_inputs sizes its buffers from it
        return self.n

    def model_inputs(self, batch_size, device):
        g = torch.Generator().manual_seed(0)
        for i in range(0, self.n, batch_size):
            yield _example_inputs(self.unet, min(batch_size, self.n - i), g, device)


def _example_inputs(unet, batch: int, g: torch.Generator | None = None, device="cpu"):
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    x = torch.randn(batch, c.in_channels, size, size, generator=g).to(device)
    t = torch.randint(1, 1000, (batch,), generator=g).to(device)
    kwargs = {}
    if getattr(c, "cross_attention_dim", None):
        kwargs["encoder_hidden_states"] = torch.randn(batch, 77, c.cross_attention_dim, generator=g).to(device)
    return (x, t), kwargs


def build_fp_pipeline(model: str):
    from diffusers import DDIMPipeline, DDIMScheduler

    from edadm.loading import load_pipeline
    from edadm.model.reference_configs import build

    if model == "digits-ddpm":
        return load_pipeline(model, device="cpu")
    torch.manual_seed(0)
    unet = build(model).eval()
    from edadm import Pipeline, SamplingSettings

    return Pipeline(DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)), SamplingSettings(steps=50))


def write_quantized(model: str, w: int, out: Path) -> None:
    """Calibrate (naive) and save an integer directory for `model` at W{w}A8."""
    from edadm import CalibConfig, QuantConfig, quantize, save
    from edadm.quant.calibrate import init_act_ranges, init_weight_ranges
    from edadm.quant.wrap import wrap_model

    pipe = build_fp_pipeline(model)
    if model == "digits-ddpm":
        cfg = QuantConfig(method="naive", weight_bits=w, act_bits=8,
                          calib=CalibConfig(num_samples=64, num_trajectories=64, uniform_steps=16, batch_size=64))
        quantize(pipe, cfg, progress=False)
        save(pipe, out)
        return
    cfg = QuantConfig(method="naive", weight_bits=w, act_bits=8)
    wrap_model(pipe.unet, cfg)
    init_weight_ranges(pipe.unet, method="minmax")
    init_act_ranges(pipe.unet, _RandomCalib(pipe.unet), batch_size=4, method="minmax", progress=False)
    save(pipe, out, config=cfg, report={"note": "random weights, scales from random inputs: for speed only"})


# ---------------------------------------------------------------- worker -------------------
class _CallUnet(torch.nn.Module):
    """Presents a (possibly compiled) forward to edadm.sampling.generate as a denoiser."""

    def __init__(self, call, config):
        super().__init__()
        self.call, self.config = call, config
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # device lookup

    def forward(self, x, t):
        return SimpleNamespace(sample=self.call((x, t), {}).float())


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers())

def _timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "n": len(times),
            "all": [round(v, 2) for v in times]}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# op-name fragments -> category of the profile summary (first match wins)
PROFILE_CATEGORIES = [
    ("int8 conv / linear (oneDNN)", ("qconv", "qlinear", "_int_mm")),
    ("float conv / linear / matmul", ("convolution", "conv2d", "mkldnn_", "addmm", "linear", "bmm", "matmul",
                                       "_weight_int8pack_mm", "mm")),
    ("attention (sdpa / softmax)", ("attention", "softmax")),
    ("norm", ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm")),
]


def _categorise(name: str) -> str:
    low = name.lower()
    if low.startswith(("cpp_fused", "graph_", "kernel_cpp")):  # inductor's generated C++ kernels
        return "inductor fused kernels (GroupNorm, SiLU, adds, activation quantize)"
    for cat, keys in PROFILE_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other ops (elementwise, copies, layout, graph call)"


def profile_forward(call, args, kwargs, n: int = 5) -> dict:
    """torch.profiler over n forwards: self CPU time per op, the top ops and per category."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            call(args, kwargs)
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    cats: dict[str, float] = {}
    for e in ev:
        cats[_categorise(e.key)] = cats.get(_categorise(e.key), 0.0) + e.self_cpu_time_total
    top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"forwards": n, "ms_per_forward": total / n / 1000,
            "categories": {k: round(v / n / 1000, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": e.key[:80], "ms_per_forward": round(e.self_cpu_time_total / n / 1000, 2),
                         "calls_per_forward": e.count // n} for e in top]}


def worker(model: str, variant: str, batches: list[int], repeats: int, sample_steps: int, sample_batch: int,
           qdir: Path | None, profile_batch: int = 0, ref_file: Path | None = None) -> dict:
    import torch._inductor.config as inductor_config

    from edadm.deploy.intengine import describe_kernels, kernel_summary
    from edadm.deploy.onnx_export import export_files
    from edadm.deploy.kernels import isa_info
    from edadm.loading import compile_denoiser, compile_dtype, load_pipeline
    from edadm.sampling import generate

    res: dict = {"model": model, "variant": variant, "threads": torch.get_num_threads(), "isa": isa_info()}
    t0 = time.perf_counter()
    if variant.startswith("int"):
        pipe = load_pipeline(qdir, device="cpu", engine="int")
        res["unet_bytes"] = _dir_bytes(qdir / "unet")
        res["kernels"] = kernel_summary(pipe.unet)
        res["kernels_line"] = describe_kernels(pipe.unet)
    elif variant.startswith("export-"):  # edadm's own ONNX export on a runtime (deploy.runtimes)
        engine = "onnxruntime" if variant.startswith("export-ort") else "openvino"
        pipe = load_pipeline(qdir, device="cpu", engine=engine)
        # the graph, plus its external weights file for large models
        res["unet_bytes"] = sum(f.stat().st_size for f in export_files(pipe.unet.path))
        res["runtime"] = {"options": f"edadm export, {engine} CPU, f32 for the float layers",
                          "version": pipe.unet.runtime_info}
    else:
        pipe = build_fp_pipeline(model)
    res["load_seconds"] = round(time.perf_counter() - t0, 3)
    unet = pipe.unet.eval()
    if not variant.startswith(("int", "export-")):
        res["unet_bytes"] = _param_bytes(unet)
    compiled = variant.endswith("compiled")
    dtype = compile_dtype("cpu") if compiled else torch.float32
    res["dtype"] = str(dtype).replace("torch.", "")
    if compiled:
        # name inductor's generated C++ kernels in the profiler (otherwise one opaque region)
        inductor_config.cpp.enable_kernel_profile = bool(profile_batch)
        compile_denoiser(pipe, dtype)  # the library's path: weights in dtype, channels_last, inductor freezing
    fwd = unet  # compiled in place (Module.compile) for the compiled variants
    peer = None
    if variant in ("ort-int8", "openvino-int8"):
        import peers

        # the int rows' calibration inputs, as named tensors
        calib = [{"sample": x, "timestep": t, **kw} for (x, t), kw in _RandomCalib(unet).model_inputs(4, "cpu")]
        if getattr(unet.config, "cross_attention_dim", None):
            # Stable Diffusion: the same 16 inputs one at a time, to bound the runtimes' calibration
            # memory (ONNX Runtime peaked at 19.6 GB running edadm's export at batch 1 on 24 GB)
            calib = [{k: v[i:i + 1] for k, v in c.items()} for c in calib for i in range(len(c["sample"]))]
        workdir = Path(tempfile.mkdtemp(prefix="edadm-peer-"))
        peer, info = peers.build(variant, unet, calib, calib[0], isa_info()["int32_dot"], torch.get_num_threads(),
                                 workdir)
        info["calibration_inputs"] = f"{len(calib)} batches of {len(calib[0]['sample'])}"
        res["runtime"] = info
        qfiles = export_files(workdir / "ort-int8.onnx")  # with its external data for large models
        res["unet_bytes"] = sum(f.stat().st_size for f in qfiles) if qfiles else None  # OpenVINO's stays in memory
        sample_steps = 0

    def call(args, kwargs):
        if peer is not None:
            return peer({"sample": args[0], "timestep": args[1], **kwargs})
        x, t = args
        x = x.to(dtype)
        if compiled:
            x = x.contiguous(memory_format=torch.channels_last)
        kw = {k: v.to(dtype) for k, v in kwargs.items()}
        if variant == "bf16-autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fwd(x, t, **kw).sample
        return fwd(x, t, **kw).sample

    res["forward"] = {}
    with torch.inference_mode():
        for b in batches:
            args, kwargs = _example_inputs(pipe.unet, b, torch.Generator().manual_seed(b))
            t0 = time.perf_counter()
            call(args, kwargs)  # first call: compilation for this shape
            first = time.perf_counter() - t0
            for _ in range(2):
                call(args, kwargs)
            stats = _timed(lambda: call(args, kwargs), repeats)
            stats["first_call_seconds"] = round(first, 2)
            if ref_file is not None:
                ref = torch.load(ref_file)[str(b)]
                out = call(args, kwargs).float()
                stats["rel_l2_vs_fp32"] = float((out - ref).norm() / ref.norm())
            res["forward"][str(b)] = stats
            if b == profile_batch:
                res["profile"] = profile_forward(call, args, kwargs)
        if sample_steps and not getattr(pipe.unet.config, "cross_attention_dim", None):
            # full DDIM sampling through the same forward (compiled or not)
            runner = _CallUnet(call, pipe.unet.config)
            from edadm import Pipeline, SamplingSettings

            pipe_s = Pipeline(SimpleNamespace(unet=runner, scheduler=pipe.scheduler), SamplingSettings(steps=sample_steps))
            generate(pipe_s, sample_batch, seed=0, steps=sample_steps, batch_size=sample_batch, progress=False)
            res["sampling"] = _timed(lambda: generate(pipe_s, sample_batch, seed=0, steps=sample_steps,
                                                      batch_size=sample_batch, progress=False), 2)
            res["sampling"].update(steps=sample_steps, batch=sample_batch)
    if peer is not None:
        shutil.rmtree(workdir, ignore_errors=True)  # the FP and int8 ONNX files (gigabytes for SD)
    fwd = unet = pipe = None  # noqa: F841 - release before measuring peak RSS
    gc.collect()
    res["peak_rss_mb"] = peak_rss_mb()  # VmHWM: ru_maxrss would include the parent's peak (fork + exec)
    return res


# ---------------------------------------------------------------- orchestration ------------
def run_worker(args, model, variant, qdir, isa: str = "native", ref_file: Path | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--worker", model, variant, "--batches", ",".join(map(str, args.batches)),
           "--repeats", str(args.repeats), "--sample-steps", str(args.sample_steps), "--sample-batch",
           str(args.sample_batch), "--worker-out", str(out), "--profile-batch", str(args.profile_batch)]
    cmd += (["--qdir", str(qdir)] if qdir else []) + (["--ref-file", str(ref_file)] if ref_file else [])
    env = dict(os.environ)
    env.pop("EDADM_INT_KERNEL", None)
    if args.int_kernel:
        env["EDADM_INT_KERNEL"] = args.int_kernel
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa  # read by oneDNN when the worker's torch starts
    t0 = time.time()
    # a fresh inductor cache per worker: the first-call time is a cold compile, as a user's
    # first run pays it (a warm cache from an earlier run halved it)
    with tempfile.TemporaryDirectory(prefix="edadm-inductor-") as cache:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "TORCHINDUCTOR_CACHE_DIR": cache})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        # the exception's own line, not a warning printed after it (a killed worker has none)
        errs = [ln for ln in lines if not ln.startswith(" ") and ("Error" in ln or "Exception" in ln)]
        return {"model": model, "variant": variant, "isa_requested": isa, "returncode": proc.returncode,
                "error": (errs or lines or [f"exit code {proc.returncode}"])[-1:]}
    res = json.loads(out.read_text())
    out.unlink()
    res["worker_seconds"] = round(time.time() - t0, 1)
    res["isa_requested"] = isa
    return res


def fp_reference(model: str, batches: list[int], path: Path) -> Path:
    """FP32 outputs on the inputs every worker times (same seeds), for the error column."""
    pipe = build_fp_pipeline(model)
    refs = {}
    with torch.inference_mode():
        for b in batches:
            args, kwargs = _example_inputs(pipe.unet, b, torch.Generator().manual_seed(b))
            refs[str(b)] = pipe.unet(*args, **kwargs).sample.float()
    torch.save(refs, path)
    return path


def _mb(r: dict) -> str:
    if r.get("unet_bytes") is None or (r["variant"] == "openvino-int8"):
        return "-"  # OpenVINO's int8 model is built in memory, not written
    return f"{r['unet_bytes'] / 2**20:.2f}"


def _label(r: dict) -> str:
    v = r["variant"]
    if v.endswith("compiled") and r.get("dtype"):
        return f"{v} ({r['dtype']})"
    return v


def table(rows: list[dict], batches: list[int]) -> list[str]:
    lines = []
    groups = dict.fromkeys((r.get("isa_requested", "native"), r["model"]) for r in rows)
    for isa_req, model in groups:
        mr = [r for r in rows if r["model"] == model and r.get("isa_requested", "native") == isa_req]
        base = {b: next((r["forward"][str(b)]["median"] for r in mr if r["variant"] == "fp32-eager" and "forward" in r),
                        None) for b in batches}
        best_float = {b: next((r["forward"][str(b)]["median"] for r in mr
                               if r["variant"] in ("float-compiled", "bf16-compiled") and "forward" in r), None)
                      for b in batches}
        seen = next((r["isa"] for r in mr if r.get("isa")), None)
        head = f"## {model}"
        if seen:
            head += (f", oneDNN ISA {seen['isa']}" + (f" (ONEDNN_MAX_CPU_ISA={seen['onednn_max_cpu_isa']} on a "
                                                      f"{seen['machine_isa']} CPU)" if seen.get("onednn_max_cpu_isa")
                                                      else "") + f", int8 sums in {seen['int8_accumulation']}, "
                     f"{'native' if seen['native_bf16'] else 'no native'} bf16, ATen {seen['aten_capability']}")
        lines += [head, "",
                  "| variant | " + " | ".join(f"batch {b}: ms min / median / max (x FP32, x best float)" for b in batches)
                  + " | rel. L2 error vs FP32 | first call s (compile) | sampling s | unet MB | peak RSS MB |",
                  "|---|" + "---|" * len(batches) + "---|---|---|---|---|"]
        for r in mr:
            if "error" in r:
                lines.append(f"| {r['variant']} | error: {r['error']} |")
                continue
            cells = []
            for b in batches:
                st = r["forward"][str(b)]
                ratio = f"{base[b] / st['median']:.2f}x" if base[b] else "-"
                ratio2 = f"{best_float[b] / st['median']:.2f}x" if best_float[b] else "-"
                cells.append(f"{st['min']:.1f} / {st['median']:.1f} / {st['max']:.1f} ({ratio}, {ratio2})")
            errs = [r["forward"][str(b)].get("rel_l2_vs_fp32") for b in batches]
            err = ", ".join(f"{e:.4f}" for e in errs if e is not None) or "-"
            first = ", ".join(f"{r['forward'][str(b)]['first_call_seconds']}" for b in batches)
            samp = r.get("sampling")
            samp_s = f"{samp['median'] / 1000:.2f} ({samp['steps']} steps x {samp['batch']})" if samp else "-"
            lines.append(f"| {_label(r)} | " + " | ".join(cells) + f" | {err} | {first} | {samp_s} | "
                         f"{_mb(r)} | {r['peak_rss_mb']:.0f} |")
        lines.append("")
        notes = [f"- {_label(r)}: " + r["kernels_line"].split(": ", 1)[-1] for r in mr if r.get("kernels_line")]
        notes += [f"- {r['variant']}: {r['runtime']['options']} (version {r['runtime']['version']})"
                  for r in mr if r.get("runtime")]
        if notes:
            lines += ["Kernels and runtime settings:", "", *notes, ""]
    return lines


def profile_tables(rows: list[dict]) -> list[str]:
    prof = [r for r in rows if r.get("profile")]
    if not prof:
        return []
    lines = ["## Where the time goes (torch.profiler, self CPU time per forward)", "",
             "Measured after the timing above, in the same process; the profiler adds overhead, so totals exceed "
             "the medians. Inductor's generated kernels are named (cpp.enable_kernel_profile).", ""]
    for r in prof:
        p = r["profile"]
        lines += [f"### {r['model']} {r['variant']}: {p['ms_per_forward']:.1f} ms per forward profiled", "",
                  "| category | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {100 * v / p['ms_per_forward']:.0f}% |" for k, v in p["categories"].items()]
        lines += ["", "| top op | ms | calls |", "|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['ms_per_forward']:.1f} | {o['calls_per_forward']} |" for o in p["top_ops"][:10]]
        lines.append("")
    return lines


def main(argv=None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    if "--device" in given and given[given.index("--device") + 1:][:1] == ["cuda"]:
        import speed_cuda  # the CUDA table: one process, CUDA events, GPU memory (its docstring)

        return speed_cuda.main(given)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 16])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the timed sampling run (0: none)")
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--name", default="speed")
    ap.add_argument("--profile-batch", type=int, default=0,
                    help="also profile the forward at this batch size (torch.profiler, after the timing; 0: off)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--qdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ref-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--isas", default="native",
                    help="comma list: 'native' and/or ONEDNN_MAX_CPU_ISA values (e.g. AVX2); each runs every variant")
    ap.add_argument("--int-kernel", default="", help="EDADM_INT_KERNEL for the integer rows (default: auto)")
    ap.add_argument("--rebuild", action="store_true", help="rewrite results/NAME.md from results/NAME.json, measuring nothing")
    ap.add_argument("--note", action="append", default=[], help="with --rebuild: a note kept in NAME.json and shown on the page")
    args = ap.parse_args(argv)
    if args.worker:
        import logging

        logging.basicConfig(level=logging.ERROR)
        res = worker(*args.worker, args.batches, args.repeats, args.sample_steps, args.sample_batch, args.qdir,
                     args.profile_batch, args.ref_file)
        args.worker_out.write_text(json.dumps(res))
        return
    if args.rebuild:
        res = json.loads((RESULTS / f"{args.name}.json").read_text())
        if args.note:
            res["notes"] = res.get("notes", []) + [n for n in args.note if n not in res.get("notes", [])]
            write_json(RESULTS / f"{args.name}.json", res)
        write_page(res, args.name)
        return
    meta = metadata(argv)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="edadm-speed-"))
    try:
        for model in args.models.split(","):
            qdirs = {}
            ref = fp_reference(model, args.batches, tmp / f"{model}-ref.pt")
            for isa, variant in itertools.product(args.isas.split(","), args.variants.split(",")):
                qdir = None
                if variant.startswith(("int", "export-")):
                    w = 4 if "w4" in variant else 8
                    if w not in qdirs:
                        qdirs[w] = tmp / f"{model}-w{w}a8"
                        t0 = time.time()
                        write_quantized(model, w, qdirs[w])
                        print(f"{model} W{w}A8 directory written in {time.time() - t0:.0f}s", flush=True)
                    qdir = qdirs[w]
                r = run_worker(args, model, variant, qdir, isa.strip(), ref)
                print(isa, json.dumps({k: r.get(k) for k in ("model", "variant", "forward", "error")},
                                      default=str)[:400], flush=True)
                rows.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {**meta, "batches": args.batches, "repeats": args.repeats, "threads": torch.get_num_threads(),
           "rows": rows}
    write_json(RESULTS / f"{args.name}.json", res)
    write_page(res, args.name)


def write_page(res: dict, name: str) -> None:
    meta = res
    lines = [f"# Denoiser speed: FP vs integer engine ({name})", "",
             f"`{meta['command']}`", "", f"Date {meta['date']}, commit {meta['git_commit']}, machine "
             f"{meta['machine'].get('cpu', '')}, {res['threads']} threads.", ""]
    # what the rows cannot say, added after the run with --rebuild --note (kept in the JSON)
    lines += [f"Note: {n}\n" for n in res.get("notes", [])]
    lines += ["Forward latency of the denoiser alone (median of repeats after 2 warm-up calls; ratios are FP32 eager "
             "median / this median, and float-compiled median / this median). Each variant runs in its own process, "
             "with a fresh inductor cache (first-call times of compiled rows are cold compiles). Sizes: FP rows = "
             "parameters in memory, int rows = the saved unet directory on disk, ort-int8 = its quantized ONNX file. "
             "Error: relative L2 distance of the output from the FP32 model's on the timed inputs (random weights, "
             "every int8 model calibrated on the same 16 random inputs).", ""]
    lines += table(res["rows"], res["batches"])
    lines += profile_tables(res["rows"])
    write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
