"""Full-size pipelines end to end through the CLI (issue: every kind of diffusion model).

For each reference pipeline (google/ddpm-cifar10-32, CompVis/ldm-celebahq-256, Stable
Diffusion v1.4, DiT-XL/2-256) built from its published configs with random weights and
written with save_pretrained: `edadm quantize` (naive W8A8, and EDA-DM W4A8 with one
reconstruction iteration per unit: this checks that every stage runs at full size, not
quality, which random weights cannot show) and `edadm sample` of one image with the integer
engine. Records exit codes, wall times, peak memory and the denoiser's size on disk (FP
safetensors vs the quantized export). Tiny calibration (2 trajectories, 2 sampler steps)
keeps this to minutes on a CPU.

    python bench/fullsize.py                       # all four
    python bench/fullsize.py --models sd-v1-4 --keep /tmp/fullsize
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import metadata, write_json, write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fullsize"
PROVENANCE = ("commit", "date", "threads", "loadavg_1m")  # recorded with every run
RUNS = [("naive", 8, 8, []), ("eda-dm", 4, 8, ["--iters", "1", "--recon-batch-size", "2"])]


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 2)


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _run(cmd: list[str]) -> dict:
    """Run one CLI command; its peak memory is the child's own VmHWM, polled until it exits
    (getrusage's ru_maxrss of children would carry this large parent's peak over fork + exec)."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak = None
        while proc.poll() is None:
            peak = max(filter(None, [peak, _vm_hwm_mb(proc.pid)]), default=None)
            time.sleep(0.2)
        err.seek(0)
        stderr = err.read()
    res = {"command": " ".join(["edadm", *cmd[3:]]), "rc": proc.returncode, "seconds": round(time.time() - t0, 1),
           "peak_rss_mb": round(peak, 1) if peak is not None else None}
    if proc.returncode != 0:
        res["stderr_tail"] = stderr[-1500:]
    return res


def main(argv=None) -> int:
    from edadm.deploy.layout import quant_subdir
    from edadm.model.pipelines import PIPELINE_NAMES, write_pipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(PIPELINE_NAMES))
    ap.add_argument("--keep", type=Path, default=None, help="keep the directories here (default: a temp dir)")
    ap.add_argument("--name", default="fullsize")
    ap.add_argument("--runs", default=",".join(m for m, *_ in RUNS),
                    help="methods to run (default all); a model's entries for the others are kept")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="edadm-fullsize-"))
    work.mkdir(parents=True, exist_ok=True)
    # one file for every model: a run of some models keeps the others' entries (each entry
    # records its own commit and date)
    prev = RESULTS / f"{args.name}.json"
    runs = json.loads(prev.read_text()).get("runs", {}) if prev.is_file() else {}
    out = {**metadata(), "runs": runs}
    edadm = [sys.executable, "-m", "edadm"]
    methods = args.runs.split(",")
    unknown = set(methods) - {m for m, *_ in RUNS}
    if unknown:
        ap.error(f"unknown run(s) {', '.join(sorted(unknown))}; choose from {', '.join(m for m, *_ in RUNS)}")
    for name in args.models.split(","):
        t0 = time.time()
        src = write_pipeline(name, work / name)
        den = "transformer" if (src / "transformer").is_dir() else "unet"
        meta = metadata()
        entry = {"write_seconds": round(time.time() - t0, 1), "fp_denoiser_mb": _dir_mb(src / den), "quantized": [],
                 "commit": meta.get("git_commit"), "date": meta.get("date"), "threads": meta["machine"].get("threads"),
                 "loadavg_1m": meta["machine"].get("loadavg_1m")}
        print(f"== {name}: FP {den} {entry['fp_denoiser_mb']} MB", flush=True)
        kept = [r for r in runs.get(name, {}).get("quantized", []) if r.get("method") not in methods]
        for r in kept:  # earlier runs of the other methods keep their own commit, date and load
            for k in PROVENANCE:
                r.setdefault(k, runs[name].get(k))
        entry["quantized"].extend(kept)
        for method, w, a, extra in [r for r in RUNS if r[0] in methods]:
            q = work / f"{name}-{method}-w{w}a{a}"
            r = _run([*edadm, "quantize", str(src), "--method", method, "--weight-bits", str(w), "--act-bits", str(a),
                      "--steps", "2", "--num-samples", "2", "--num-trajectories", "2", "--batch-size", "2",
                      "--out", str(q), "--no-progress", "--no-report", *extra])
            r.update(method=method, setting=f"w{w}a{a}",
                     **{k: entry[k] for k in PROVENANCE})
            if r["rc"] == 0:
                sub = quant_subdir(q)
                r["denoiser_mb"] = _dir_mb(q / sub)
                r["ratio_vs_fp"] = round(entry["fp_denoiser_mb"] / r["denoiser_mb"], 2)
                meta = json.loads((q / sub / "edadm_quant.json").read_text())
                r["reconstructed_units"] = len(meta["report"].get("recon") or [])
                r["layers"] = len(meta["layers"])
                s = _run([*edadm, "sample", str(q), "-n", "1", "--steps", "2", "--batch-size", "1",
                          "--out", str(work / f"{q.name}.png"), "--no-progress"])
                r["sample"] = s
            print(json.dumps(r), flush=True)
            entry["quantized"].append(r)
            shutil.rmtree(q, ignore_errors=True)
        out["runs"][name] = entry
        shutil.rmtree(src, ignore_errors=True)
        write_json(RESULTS / f"{args.name}.json", out)
        write_text(RESULTS / f"{args.name}.md", _markdown(out, PIPELINE_NAMES))
    return 0


def _markdown(d: dict, names=()) -> str:
    lines = [f"# Full-size pipelines through the CLI ({d.get('date')})", "",
             f"Last run: `{d.get('command')}` — commit {d.get('git_commit')}, {d['machine'].get('cpu')}, "
             f"{d['machine'].get('threads')} threads, load {d['machine'].get('loadavg_1m')} at start. Each model's "
             "entry keeps the commit, date, threads and load of the run that measured it.", "",
             "Random weights, published configs; calibration of 2 trajectories x 2 sampler steps (a check that "
             "every stage runs at full size, not a quality or speed measurement; wall times include other load "
             "on the machine).", "",
             "| model | run | quantize rc / s | layers | units reconstructed | denoiser MB (FP -> quantized, ratio) "
             "| sample rc / s | peak MB quantize / sample | commit, threads, load |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in d["runs"].items():
        for r in e["quantized"]:
            s = r.get("sample", {})
            lines.append(f"| {name} | {r['method']} {r['setting']} | {r['rc']} / {r['seconds']} | {r.get('layers', '-')} "
                         f"| {r.get('reconstructed_units', '-')} | {e['fp_denoiser_mb']} -> {r.get('denoiser_mb', '-')} "
                         f"({r.get('ratio_vs_fp', '-')}x) | {s.get('rc', '-')} / {s.get('seconds', '-')} "
                         f"| {r.get('peak_rss_mb', '-')} / {s.get('peak_rss_mb', '-')} "
                         f"| {r.get('commit', e.get('commit', d.get('git_commit')))}, {r.get('threads', e.get('threads', '-'))}, "
                         f"{r.get('loadavg_1m', e.get('loadavg_1m', '-'))} |")
    done = {(n, r["method"], r["setting"]) for n, e in d["runs"].items() for r in e["quantized"]}
    missing = [f"{n} {m} w{w}a{a}" for n in names for m, w, a, _ in RUNS if (n, m, f"w{w}a{a}") not in done]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
