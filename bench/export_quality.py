"""Quality of one quantized directory on every engine, from the same noise: edadm's integer
engine, the float simulation, and the ONNX export on ONNX Runtime and OpenVINO.

FID-digits / IS-digits per engine, and PSNR of each engine's images against the integer
engine's (same initial noise, same scheduler loop): how far deploying on a runtime moves
the samples. Writes bench/results/export/quality.{json,md}.

    python bench/export_quality.py --method naive --weight-bits 8 --num 1000 --seeds 0,1,2 --engines int,onnxruntime,openvino
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import fmt, metadata, write_json, write_text  # noqa: E402

from edadm.eval.evaluate import evaluate_pipeline  # noqa: E402
from edadm.eval.metrics import mean_std  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402

OUT = Path(__file__).parent / "results" / "export"
ENGINES = ["int", "fake", "onnxruntime", "openvino"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _mean_std(v: list[float]) -> str:
    s = mean_std(v)
    return fmt(s, 2) if s["n"] > 1 else f"{v[0]:.2f} (1 seed)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--method", default="naive")
    ap.add_argument("--weight-bits", type=int, default=8)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2", help="sampling seeds (each: every engine from the same noise)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edadm_export_quality"),
                    help="quantized directory and finished seeds live here: a rerun resumes")
    args = ap.parse_args(argv)
    meta = metadata()  # at the start: the commit the run imported
    engines, seeds = args.engines.split(","), [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) / f"{args.model}-{args.method}-w{args.weight_bits}"
    qdir = work / "q"
    if not (qdir / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", "edadm", "quantize", args.model, "--method", args.method,
                        "--weight-bits", str(args.weight_bits), "--out", str(qdir), "--no-progress", "--no-report"],
                       check=True)
    per_seed = {}
    for seed in seeds:
        done = work / f"seed{seed}-n{args.num}-{'-'.join(engines)}.json"
        if done.exists():
            per_seed[seed] = json.loads(done.read_text())
            continue
        rows, images = [], {}
        for engine in engines:  # every engine on this seed's noise before the next seed: resumable per seed
            pipe = load_pipeline(qdir, engine=engine)
            t0 = time.time()
            res, imgs = evaluate_pipeline(pipe, args.num, [seed], progress=True)
            images[engine] = imgs[seed]
            rows.append({"engine": engine, "metrics": res["per_seed"][0], "seconds": round(time.time() - t0, 1)})
            del pipe
        base = images.get("int")
        for r in rows:
            r["psnr_vs_int"] = psnr(images[r["engine"]], base) if base is not None else None
        per_seed[seed] = {"rows": rows, "date": metadata()["date"]}
        write_json(done, per_seed[seed])
    lines = [f"# One quantized directory on every engine: {args.model} {args.method} W{args.weight_bits}A8", "",
             f"- command: `{meta['command']}`", f"- date {meta['date']}, commit {meta['git_commit']}, "
             f"{meta['machine'].get('cpu')} (oneDNN ISA {meta['machine']['isa']}), load {meta['machine'].get('loadavg_1m')}",
             f"- {args.num} samples per sampling seed {seeds}; on each seed every engine starts from the same noise",
             "- ΔFID vs int: each engine's FID-digits minus the int engine's on the same seed (paired); "
             "spread: std over the sampling seeds", "",
             "| engine | FID-digits | per seed | ΔFID vs int (paired) | IS-digits | PSNR vs int engine, dB | "
             "sampling s per seed (not a timing: shared cores) |", "|---|---|---|---|---|---|---|"]
    summary = []
    for engine in engines:
        rs = [next(r for r in per_seed[s]["rows"] if r["engine"] == engine) for s in seeds]
        ints = [next(r for r in per_seed[s]["rows"] if r["engine"] == "int") for s in seeds] if "int" in engines else None
        fid = [r["metrics"]["fid_digits"] for r in rs]
        d = [a - b["metrics"]["fid_digits"] for a, b in zip(fid, ints)] if ints else None
        ps = "-" if engine == "int" or ints is None else _mean_std([r["psnr_vs_int"] for r in rs])
        summary.append({"engine": engine, "fid_digits": fid, "delta_vs_int": d,
                        "psnr_vs_int": [r["psnr_vs_int"] for r in rs], "seconds": [r["seconds"] for r in rs]})
        lines.append(f"| {engine} | {_mean_std(fid)} | {' / '.join(f'{v:.2f}' for v in fid)} | "
                     f"{'-' if engine == 'int' or d is None else _mean_std(d)} | "
                     f"{_mean_std([r['metrics']['is_digits'] for r in rs])} | {ps} | "
                     f"{' / '.join(str(r['seconds']) for r in rs)} |")
    write_text(OUT / "quality.md", "\n".join(lines) + "\n")
    write_json(OUT / "quality.json", {**meta, "args": vars(args), "per_seed": {str(k): v for k, v in per_seed.items()},
                                       "summary": summary})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
