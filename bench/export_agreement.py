"""The ONNX export against edadm's simulation, per zoo model, bit width and runtime.

One denoiser call (batch 4) of each zoo model quantized with `naive` at a tiny calibration:
relative L2 error of the output of ONNX Runtime (optimisations off = float QDQ, and default)
and OpenVINO against the simulation, the weights-only check (activation quantizers off), and
which kernels OpenVINO ran. Writes bench/results/export/agreement.{json,md}.

    python bench/export_agreement.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import onnxruntime as ort  # noqa: E402
from common import metadata, write_json, write_text  # noqa: E402

from edadm.api import quantize  # noqa: E402
from edadm.config import QuantConfig  # noqa: E402
from edadm.deploy.onnx_export import example_inputs, export_onnx  # noqa: E402
from edadm.deploy.runtimes import runtime_session  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402
from edadm.model.families import get_denoiser  # noqa: E402
from edadm.quant.wrap import set_quant_state  # noqa: E402

OUT = Path(__file__).parent / "results" / "export"


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> int:
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
            rows.append(row)
            print(row, flush=True)
    meta = metadata()
    lines = ["# ONNX export vs edadm's simulation", "", f"- command: `{meta['command']}`",
             f"- date {meta['date']}, commit {meta['git_commit']}, {meta['machine'].get('cpu')} "
             f"(oneDNN ISA {meta['machine']['isa']}), onnxruntime {ort.__version__}",
             "- relative L2 error of one denoiser call (batch 4) against the simulation", "",
             "| model | bits | integer weights | MiB | weights only (float) | ORT float QDQ | ORT default | OpenVINO | "
             "OpenVINO kernels |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits']} | {r['integer_weights']} | {r['size_mib']} | {r['weights_only']:.1e} | "
                     f"{r['onnxruntime_float']:.4f} | {r['onnxruntime']:.4f} | {r['openvino']:.4f} | "
                     + ", ".join(f"{v} {k}" for k, v in r["openvino_kernels"].items()) + " |")
    write_text(OUT / "agreement.md", "\n".join(lines) + "\n")
    write_json(OUT / "agreement.json", {**meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
