"""The ONNX export against edadm's simulation, per zoo model, bit width and runtime.

One denoiser call (batch 4) of each zoo model quantized with `naive` at a tiny calibration:
relative L2 error of the output of ONNX Runtime (optimisations off = float QDQ, and default)
and OpenVINO against the simulation, the weights-only check (activation quantizers off), and
which kernels OpenVINO ran. On a CPU without int32 dot products (AVX2, AVX-512 without VNNI)
the integer runtimes also run the overflow-fix export (what `--engine onnxruntime|openvino`
runs there). Writes bench/results/export/NAME.{json,md}.

    python bench/export_agreement.py                          # VNNI / AMX machine
    python bench/export_agreement.py --name agreement_avx2    # AVX2-only machine
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import onnxruntime as ort  # noqa: E402
from common import metadata, write_json, write_text  # noqa: E402

from edadm.api import quantize  # noqa: E402
from edadm.config import QuantConfig  # noqa: E402
from edadm.deploy.onnx_export import example_inputs, export_onnx  # noqa: E402
from edadm.deploy.runtimes import needs_overflow_fix, runtime_session  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402
from edadm.model.families import get_denoiser  # noqa: E402
from edadm.quant.wrap import set_quant_state  # noqa: E402

OUT = Path(__file__).parent / "results" / "export"


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="agreement", help="results file name under bench/results/export/")
    name = ap.parse_args(argv).name
    fix = needs_overflow_fix()  # what --engine runs here also gets its columns
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for model in ("digits-ddpm", "digits-ldm", "digits-cond", "digits-t2i"):
        for w in (8, 4):
            pipe = load_pipeline(model)
            quantize(pipe, QuantConfig(method="naive", weight_bits=w, steps=8,
                                       calib={"num_samples": 32, "num_trajectories": 32, "uniform_steps": 8}),
                     progress=False)
            den = get_denoiser(pipe).eval()
            names, args = example_inputs(den, 4)
            kw = dict(zip(names[2:], args[2:]))
            feeds = {n: a.numpy() for n, a in zip(names, args)}
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            set_quant_state(den, weight=True, act=False)
            with torch.no_grad():
                ref_w = den(*args[:2], **kw).sample.numpy()
            export_onnx(pipe, tmp / "w.onnx")
            weights_only = rel(ort.InferenceSession(str(tmp / "w.onnx"), so).run(None, feeds)[0], ref_w)
            set_quant_state(den, weight=True, act=True)
            with torch.no_grad():
                ref = den(*args[:2], **kw).sample.numpy()
            info = export_onnx(pipe, tmp / "q.onnx")
            ort_float = rel(ort.InferenceSession(str(tmp / "q.onnx"), so).run(None, feeds)[0], ref)
            ort_default = rel(runtime_session(tmp / "q.onnx", "onnxruntime")[0](feeds), ref)
            run, ov_info = runtime_session(tmp / "q.onnx", "openvino")
            row = {"model": model, "bits": f"W{w}A8", "integer_weights": info["folded_weights"],
                   "weights_only": weights_only, "onnxruntime_float": ort_float, "onnxruntime": ort_default,
                   "openvino": rel(run(feeds), ref), "openvino_kernels": ov_info["kernels"],
                   "size_mib": round((tmp / "q.onnx").stat().st_size / 2**20, 2)}
            if fix:
                export_onnx(pipe, tmp / "f.onnx", overflow_fix=True)
                run_f, ov_f = runtime_session(tmp / "f.onnx", "openvino")
                row.update(onnxruntime_fix=rel(runtime_session(tmp / "f.onnx", "onnxruntime")[0](feeds), ref),
                           openvino_fix=rel(run_f(feeds), ref), openvino_kernels_fix=ov_f["kernels"])
            rows.append(row)
            print(row, flush=True)
    meta = metadata()
    lines = ["# ONNX export vs edadm's simulation", "", f"- command: `{meta['command']}`",
             f"- date {meta['date']}, commit {meta['git_commit']}, {meta['machine'].get('cpu')} "
             f"(oneDNN ISA {meta['machine']['isa']}), onnxruntime {ort.__version__}",
             "- relative L2 error of one denoiser call (batch 4) against the simulation"]
    head = ["model", "bits", "integer weights", "MiB", "weights only (float)", "ORT float QDQ", "ORT default", "OpenVINO",
            "OpenVINO kernels"]
    if fix:
        lines.append("- no int32 dot products here: \"overflow fix\" columns run the export `--engine` uses on this CPU")
        head[8:8] = ["ORT default (overflow fix)", "OpenVINO (overflow fix)"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["bits"], str(r["integer_weights"]), str(r["size_mib"]), f"{r['weights_only']:.1e}",
                 f"{r['onnxruntime_float']:.4f}", f"{r['onnxruntime']:.4f}", f"{r['openvino']:.4f}"]
        if fix:
            cells += [f"{r['onnxruntime_fix']:.4f}", f"{r['openvino_fix']:.4f}"]
        kernels = r["openvino_kernels_fix"] if fix else r["openvino_kernels"]
        lines.append("| " + " | ".join(cells) + " | " + ", ".join(f"{v} {k}" for k, v in kernels.items()) + " |")
    write_text(OUT / f"{name}.md", "\n".join(lines) + "\n")
    write_json(OUT / f"{name}.json", {**meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
