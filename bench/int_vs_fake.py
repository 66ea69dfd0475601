"""Integer engine vs its fake-quant twin, end to end (issue: real integer deployment, item 3).

For each quantized directory: sample the same images (same seeds, same noise) with the
integer engine (`--engine int`: oneDNN int8 kernels on x86) and with the float simulation
(`--engine fake`), then report FID-digits of each (mean ± std over seeds), the paired
per-seed FID difference, and how far the images are apart (PSNR and MSE int vs fake). The engines should agree within sampling noise.

    python bench/int_vs_fake.py QDIR [QDIR ...] --num 1000 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import fmt, metadata, write_json, write_text  # noqa: E402

from edadm.eval.evaluate import add_paired_delta, evaluate_pipeline  # noqa: E402
from edadm.eval.metrics import mean_std  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "kernels"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("qdirs", nargs="+", type=Path)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--name", default="int_vs_fake")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {**metadata(), "num": args.num, "seeds": seeds, "runs": {}}
    for q in args.qdirs:
        meta = json.loads(next(q.glob("*/edadm_quant.json")).read_text())
        label = f"{meta['config']['method']} W{meta['config']['weight_bits']}A{meta['config']['act_bits']}"
        res_int, imgs_int = evaluate_pipeline(load_pipeline(q, engine="int"), args.num, seeds,
                                              batch_size=args.batch_size, progress=True)
        res_fake, _ = evaluate_pipeline(load_pipeline(q, engine="fake"), args.num, seeds, batch_size=args.batch_size,
                                        reference=imgs_int, progress=True)
        add_paired_delta(res_fake, res_int)
        mses = [m["mse_vs_ref"] for m in res_fake["per_seed"] if "mse_vs_ref" in m]  # images in [0, 1]
        out["runs"][label] = {"dir": str(q), "int": res_int["summary"], "fake": res_fake["summary"],
                              "per_seed_int": res_int["per_seed"], "per_seed_fake": res_fake["per_seed"],
                              "mse_int_vs_fake": mean_std(mses)}
        write_json(RESULTS / f"{args.name}.json", out)
    lines = [f"# Integer engine vs fake-quant simulation ({out['date']})", "",
             f"`{out['command']}` — commit {out['git_commit']}, {out['machine'].get('cpu')}, "
             f"{out['machine'].get('threads')} threads, load {out['machine'].get('loadavg_1m')} at start "
             "(sampling seconds are wall times under that load, not speed measurements: see speed.md).", "",
             f"{args.num} images per seed, seeds {seeds}, the same noise for both engines.", "",
             "| model | FID-digits int | FID-digits fake | fake - int, paired by seed | PSNR int vs fake (dB) "
             "| sampling s int / fake |", "|---|---|---|---|---|---|"]
    for label, r in out["runs"].items():
        lines.append(f"| {label} | {fmt(r['int']['fid_digits'], 1)} | {fmt(r['fake']['fid_digits'], 1)} | "
                     f"{fmt(r['fake'].get('fid_digits_delta'), 1)} | {fmt(r['fake'].get('psnr_vs_ref'), 1)} | "
                     f"{fmt(r['int'].get('sample_seconds'), 0)} / {fmt(r['fake'].get('sample_seconds'), 0)} |")
    write_text(RESULTS / f"{args.name}.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
