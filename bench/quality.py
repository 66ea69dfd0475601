"""Quality of every method side by side on a zoo model (issue: EDA-DM and baselines).

For FP and each (method, setting): quantize in a fresh subprocess (`edadm quantize`, so
calibration time and peak memory are that run's own), then sample `--num` images for each
seed from the same initial noise as FP, and measure FID-digits, IS-digits and PSNR vs FP.

Resumable: each finished (setting, method) is written to bench/results/quality/runs/ with
its commit and date; a rerun skips finished entries unless --fresh. The tables in
bench/results/quality/quality.{json,md} are rebuilt from those entries.

    python bench/quality.py                       # all methods, W4A8, W4A6, W8A8
    python bench/quality.py --methods eda-dm,qdiffusion --settings w4a8 --num 200 --seeds 0
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fmt, fp_reference, metadata, write_json, write_text  # noqa: E402

from edadm.eval.evaluate import add_paired_delta, evaluate_pipeline, paired_delta  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402

log = logging.getLogger("bench.quality")
RESULTS = Path(__file__).parent / "results" / "quality"
ALL_METHODS = ["naive", "ptq4dm", "qdiffusion", "eda-dm", "eda-dm-tdac-only", "eda-dm-fbr-only"]
# W4A6 is the harder setting: per-tensor activation scales shared by all timesteps are what
# the calibration distribution (TDAC vs uniform vs PTQ4DM) decides, and 6-bit activations
# make that choice visible; 3-bit weights would mostly test AdaRound, which every
# reconstruction baseline shares.
DEFAULT_SETTINGS = ["w4a8", "w4a6", "w8a8"]


def run_dir(model: str) -> Path:
    return RESULTS / "runs" / model


def entry_name(method: str, tag: str) -> str:
    """An entry's file / directory stem: the method, plus the tag for runs outside the main table."""
    return method if tag == "quality" else f"{method}-{tag}"


def fp_json(model: str, num: int, seeds: list[int]) -> Path:
    """The FP results file for (num, seeds): fp-NUM.json unless that one holds other seeds (a
    one-seed check run must not overwrite the three-seed reference the tables are built on)."""
    plain = run_dir(model) / f"fp-{num}.json"
    if not plain.is_file() or json.loads(plain.read_text()).get("seeds") == seeds:
        return plain
    return run_dir(model) / f"fp-{num}-seeds{'_'.join(map(str, seeds))}.json"


def quantize_subprocess(model: str, method: str, w: int, a: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "edadm", "quantize", model, "--method", method, "--weight-bits", str(w),
           "--act-bits", str(a), "--out", str(out), "--no-progress", "--no-report", *extra]
    # an interrupted earlier run left its checkpoint beside the output: continue it (the
    # wall time then covers only the rest, so the entry says so)
    resumed = (out.parent / f".{out.name}.ckpt").is_dir()
    if resumed:
        cmd.append("--resume")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    meta = json.loads((out / "unet" / "edadm_quant.json").read_text())
    return {"command": " ".join(cmd[1:]), "wall_seconds": round(wall, 1), "report": meta["report"], "resumed": resumed}


def recon_summary(report: dict) -> dict:
    units = report.get("recon") or []
    if not units:
        return {}
    improved = sum(1 for u in units if u["after"] is not None and u["after"] < u["before"])
    return {"units": len(units), "improved": improved,
            "fallbacks": [u["name"] for u in units if u.get("fallback")],
            "per_unit": [{"name": u["name"], "kind": u["kind"], "before": u["before"], "after": u["after"],
                          "final": (u["history"][-1] if u["history"] else None)} for u in units]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--settings", default=",".join(DEFAULT_SETTINGS))
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edadm-bench-cache")
    ap.add_argument("--fresh", action="store_true", help="recompute finished entries")
    ap.add_argument("--quantize-args", default="", help="extra flags for edadm quantize (same for every method)")
    ap.add_argument("--tag", default="quality", help="output name: bench/results/quality/TAG.{json,md} (TAG_MODEL for "
                    "models other than digits-ddpm)")
    ap.add_argument("--engine", choices=["int", "fake"], default="int",
                    help="sample the quantized models with integer kernels (default; agreement with the simulation "
                         "is tested in tests/deploy/test_intengine.py) or the float simulation")
    ap.add_argument("--tables-only", action="store_true",
                    help="only rebuild TAG.{json,md} from the finished entries of --settings x --methods")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    settings = args.settings.split(",")
    extra = args.quantize_args.split()
    rdir = run_dir(args.model)
    if args.tables_only:
        build_tables(args.model, settings, methods, json.loads(fp_json(args.model, args.num, seeds).read_text()), args.tag)
        return 0

    # The FP reference is fetched when first needed, after the first quantization: a second
    # job started beside a first one quantizes while the first samples FP, then finds its
    # cached images instead of sampling them again.
    # a check run on some of the reference's seeds reuses their metrics and images
    fp_ref = functools.cache(lambda: fp_reference(args.model, args.num, seeds, fp_json(args.model, args.num, seeds),
                                                  args.cache, args.batch_size,
                                                  source_f=rdir / f"fp-{args.num}.json"))
    for setting in settings:
        w, a = (int(v) for v in setting.lstrip("w").split("a"))
        for method in methods:
            f = rdir / setting / f"{entry_name(method, args.tag)}.json"
            if f.is_file() and not args.fresh:
                prev = json.loads(f.read_text())
                if prev.get("num") == args.num and prev.get("seeds") == seeds:
                    log.info("skip %s %s (done %s)", setting, method, prev.get("date"))
                    continue
            log.info("== %s %s", setting, method)
            started = metadata()  # commit and date at the start of this entry
            qdir = args.cache / f"q-{args.model}-{setting}-{entry_name(method, args.tag)}"
            shutil.rmtree(qdir, ignore_errors=True)
            q = quantize_subprocess(args.model, method, w, a, qdir, extra)
            fp_res, fp_imgs = fp_ref()
            pipe = load_pipeline(qdir, engine=args.engine)
            t0 = time.time()
            res, _ = evaluate_pipeline(pipe, args.num, seeds, batch_size=args.batch_size, reference=fp_imgs,
                                       progress=True)
            add_paired_delta(res, fp_res)
            entry = {**started, "finished": metadata()["date"], "model": args.model, "method": method, "setting": setting, "num": args.num, "engine": args.engine,
                     "seeds": seeds, "summary": res["summary"], "per_seed": res["per_seed"],
                     "eval_seconds": round(time.time() - t0, 1), "quantize": {
                         "command": q["command"], "wall_seconds": q["wall_seconds"], "resumed": q["resumed"],
                         "seconds": q["report"]["seconds"], "peak_memory_mb": q["report"]["peak_memory_mb"],
                         "counts": q["report"]["counts"], "allocation": q["report"].get("allocation"),
                         "config": q["report"]["config"]}, "recon": recon_summary(q["report"])}
            write_json(f, entry)
            log.info("%s %s: FID-digits %s, PSNR %s", setting, method, fmt(res["summary"]["fid_digits"]),
                     fmt(res["summary"].get("psnr_vs_ref")))
            del pipe
    build_tables(args.model, settings, methods, fp_ref()[0], args.tag)
    return 0


def machines_line(fp_res: dict, entries: dict) -> str:
    """Which CPU, thread count and torch each entry was measured with (sessions differ)."""
    groups: dict[str, list[str]] = {}
    for name, m in [("FP", fp_res.get("machine") or {})] + [(f"{s}/{k}", e["machine"]) for (s, k), e in entries.items()]:
        groups.setdefault(f"{m.get('cpu', '?')}, {m.get('threads', '?')} thread(s), torch {m.get('torch', '?')}",
                          []).append(name)
    return "; ".join(f"{key} ({', '.join(names)})" for key, names in groups.items())


def build_tables(model: str, settings: list[str], methods: list[str], fp_res: dict, tag: str) -> None:
    rdir = run_dir(model)
    entries = {}
    for s in settings:
        for m in methods:
            f = rdir / s / f"{entry_name(m, tag)}.json"
            if f.is_file():
                entries[(s, m)] = json.loads(f.read_text())
    meta = metadata()
    commits = sorted({e["git_commit"] for e in entries.values()} | {fp_res.get("git_commit")})
    lines = [f"# Quality: {model}, every method side by side", "",
             f"- command: `{meta['command']}`", f"- rebuilt: {meta['date']}; entries measured with commits "
             f"{', '.join(str(c) for c in commits)} (each entry's own date and commit are in {tag}.json)",
             f"- machines (each entry's own; the rebuild's is not the measurement's): {machines_line(fp_res, entries)}",
             f"- samples: {fp_res['num']} per seed, seeds {fp_res['seeds']}, the same initial noise for every model; "
             "mean ± std over seeds. ΔFID is the per-seed difference to FP (same noise), whose spread is the "
             "one to compare methods by.", "", "## FID-digits (lower is better), ΔFID vs FP and PSNR vs FP (dB)", ""]
    head = "| method | " + " | ".join(f"{s.upper()} FID | ΔFID | PSNR" for s in settings) + " |"
    lines += [head, "|---|" + "---|---|---|" * len(settings)]
    lines.append("| FP32 | " + " | ".join(f"{fmt(fp_res['summary']['fid_digits'])} | 0 | -" for _ in settings) + " |")
    for m in methods:
        cells = []
        for s in settings:
            e = entries.get((s, m))
            cells += [fmt(e["summary"]["fid_digits"]) if e else "not run",
                      fmt(e["summary"].get("fid_digits_delta")) if e else "not run",
                      fmt(e["summary"].get("psnr_vs_ref"), 2) if e else "not run"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## IS-digits (higher is better)", "", "| method | " + " | ".join(s.upper() for s in settings) + " |",
              "|---|" + "---|" * len(settings),
              "| FP32 | " + " | ".join(fmt(fp_res["summary"]["is_digits"]) for _ in settings) + " |"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(fmt(entries[(s, m)]["summary"]["is_digits"]) if (s, m) in entries
                                              else "not run" for s in settings) + " |")
    lines += ["", "## Calibration cost (wall seconds of `edadm quantize`, peak RSS MB)", "",
              "| method | " + " | ".join(s.upper() for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        cells = []
        for s in settings:
            e = entries.get((s, m))
            cells.append(f"{e['quantize']['wall_seconds']:.0f} s{' (resumed: rest only)' if e['quantize'].get('resumed') else ''}"
                         f", {e['quantize']['peak_memory_mb']:.0f} MB" if e else "not run")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    base = "qdiffusion"  # the baseline the targets name; paired by seed, the spread that orders methods
    if any((s, base) in entries for s in settings):
        lines += ["", "## FID-digits minus Q-Diffusion's, paired by seed (negative: better than Q-Diffusion)", "",
                  "| method | " + " | ".join(s.upper() for s in settings) + " |", "|---|" + "---|" * len(settings)]
        for m in methods:
            if m != base:
                lines.append(f"| {m} | " + " | ".join(
                    fmt(paired_delta(entries[(s, m)], entries[(s, base)])) if (s, m) in entries and (s, base) in entries
                    else "not run" for s in settings) + " |")
    if "class_agreement" in fp_res["summary"]:  # conditional models: the digit asked for (label or prompt)
        lines += ["", "## Classifier agrees with the requested digit (higher is better; the CLIP-score analog)", "",
                  "| method | " + " | ".join(s.upper() for s in settings) + " |", "|---|" + "---|" * len(settings),
                  "| FP32 | " + " | ".join(fmt(fp_res["summary"]["class_agreement"]) for _ in settings) + " |"]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(fmt(entries[(s, m)]["summary"].get("class_agreement"))
                                                  if (s, m) in entries else "not run" for s in settings) + " |")
    loads = {f"{s}/{m}": e["machine"].get("loadavg_1m") for (s, m), e in entries.items()}
    lines += ["", "Each entry's JSON records the 1-minute load average when it started (`machine.loadavg_1m`; "
              f"here {loads}). A quantization keeps one core busy per thread (machines above); a load well above the "
              "machine's 2 cores means more work than cores, and that entry's wall time is not a valid timing; "
              "wall times from different machines are not comparable either.", ""]
    name = tag if model == "digits-ddpm" else f"{tag}_{model}"  # one table per model
    write_text(RESULTS / f"{name}.md", "\n".join(lines))
    write_json(RESULTS / f"{name}.json", {**meta, "model": model, "fp": fp_res,
                                          "entries": {f"{s}/{m}": e for (s, m), e in entries.items()}})


if __name__ == "__main__":
    raise SystemExit(main())
