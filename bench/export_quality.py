"""Quality of one quantized directory on every engine, from the same noise: edadm's integer
engine, the float simulation, and the ONNX export on ONNX Runtime and OpenVINO.

FID-digits / IS-digits per engine, and PSNR of each engine's images against the integer
engine's (same initial noise, same scheduler loop): how far deploying on a runtime moves
the samples. Writes bench/results/export/quality.{json,md}.

    python bench/export_quality.py --method naive --weight-bits 8 --num 1000
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import metadata, write_json, write_text  # noqa: E402

from edadm.eval.evaluate import evaluate_pipeline  # noqa: E402
from edadm.pipeline import load_pipeline  # noqa: E402

OUT = Path(__file__).parent / "results" / "export"
ENGINES = ["int", "fake", "onnxruntime", "openvino"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--method", default="naive")
    ap.add_argument("--weight-bits", type=int, default=8)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", default=",".join(ENGINES))
    args = ap.parse_args(argv)
    meta = metadata()  # at the start: the commit the run imported
    qdir = Path(tempfile.mkdtemp()) / "q"
    subprocess.run([sys.executable, "-m", "edadm", "quantize", args.model, "--method", args.method, "--weight-bits",
                    str(args.weight_bits), "--out", str(qdir), "--no-progress", "--no-report"], check=True)
    rows, images = [], {}
    for engine in args.engines.split(","):
        pipe = load_pipeline(qdir, engine=engine)
        t0 = time.time()
        res, imgs = evaluate_pipeline(pipe, args.num, [args.seed], progress=True)
        images[engine] = imgs[args.seed]
        rows.append({"engine": engine, "metrics": res["per_seed"][0], "seconds": round(time.time() - t0, 1)})
        del pipe
    base = images.get("int")
    for r in rows:
        r["psnr_vs_int"] = psnr(images[r["engine"]], base) if base is not None else None
    lines = [f"# One quantized directory on every engine: {args.model} {args.method} W{args.weight_bits}A8", "",
             f"- command: `{meta['command']}`", f"- date {meta['date']}, commit {meta['git_commit']}, "
             f"{meta['machine'].get('cpu')} (oneDNN ISA {meta['machine']['isa']}), load {meta['machine'].get('loadavg_1m')}",
             f"- {args.num} samples, sampling seed {args.seed}, the same initial noise on every engine", "",
             "| engine | FID-digits | IS-digits | PSNR vs int engine, dB | sampling s (not a timing: shared cores) |",
             "|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        ps = "-" if r["engine"] == "int" else f"{r['psnr_vs_int']:.2f}"
        lines.append(f"| {r['engine']} | {m['fid_digits']:.2f} | {m['is_digits']:.3f} | {ps} | {r['seconds']} |")
    write_text(OUT / "quality.md", "\n".join(lines) + "\n")
    write_json(OUT / "quality.json", {**meta, "args": vars(args), "rows": rows})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
