"""What each recipe's quantization costs: wall time and peak memory of `edadm quantize`, alone
on the machine with every core (issue 20's closing numbers).

bench/recipes.py records the same figures for each of its entries, but those usually run as
two one-thread jobs side by side; this script times one quantization per (setting, method) in a
fresh process with the machine's threads. An entry does not start while another process is
runnable (unless --no-check-idle; the page then marks it), so the timings are alone ones.

Resumable: one file per entry under bench/results/recipes/MODEL/cost/LABEL/; the page
bench/results/recipes/MODEL/cost.md is rebuilt from all of them, one table per label (a code
state: "before" is the loop issue 34 started from, "after" the one it landed) and, for the
cells two labels share at equal iterations, the per-stage speedup.

    python bench/quant_cost.py --model digits-ddpm --settings w4a8 --methods eda-dm-plus,qdiffusion \
        --iters-scale 0.04 --label after
    python bench/quant_cost.py --model digits-ddpm --tables-only
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import metadata, write_json, write_text  # noqa: E402
from quality import quantize_subprocess  # noqa: E402
import recipes  # noqa: E402
from recipes import MAIN_METHODS  # noqa: E402

log = logging.getLogger("bench.quant_cost")


def others_running(samples: int = 10) -> int:
    """Runnable processes besides this one that stay runnable: the fewest seen over `samples`
    looks 0.1 s apart (/proc/loadavg's running count). A competing job is runnable at every
    look; a short command (a shell's `cat`, the previous entry's exiting subprocess) is seen
    at one look and was enough to abort a whole run when this took the most. The 1-minute
    load average is not used: it still counts a process that ended a minute ago."""
    try:
        seen = []
        for _ in range(samples):
            seen.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
            time.sleep(0.1)
        return min(seen)
    except (OSError, ValueError, IndexError):  # not Linux: fall back to the load average
        return round(os.getloadavg()[0])


def cost_dir(model: str, label: str | None = None) -> Path:
    d = recipes.RESULTS / model / "cost"
    return d / label if label else d


def run_entry(model: str, setting: str, method: str, seed: int, cache: Path, iters_scale: float | None) -> dict:
    w, a = (int(v) for v in setting.lstrip("w").split("a"))
    out = cache / f"cost-{model}-{setting}-{method}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f".{out.name}.ckpt", ignore_errors=True)  # a timing never resumes
    started = metadata()
    extra = ["--seed", str(seed)] + (["--iters-scale", str(iters_scale)] if iters_scale is not None else [])
    q = quantize_subprocess(model, method, w, a, out, extra)
    rep = q["report"]
    shutil.rmtree(out, ignore_errors=True)
    return {**started, "model": model, "method": method, "setting": setting, "seed": seed,
            "threads_env": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
            "quantize_command": "edadm " + q["command"].split(" ", 2)[2], "wall_seconds": q["wall_seconds"],
            "seconds": rep["seconds"], "peak_memory_mb": rep["peak_memory_mb"],
            # of the reconstruction: caching each unit's inputs and FP targets (the model prefix runs)
            "capture_seconds": round(sum(u.get("capture_seconds", 0.0) for u in rep.get("recon") or []), 1),
            "iters_scale": rep["config"]["recon"].get("iters_scale"),
            "iters": rep["config"]["recon"].get("iters") if rep["config"]["recon"].get("enabled") else 0}


STAGES = ("trajectories", "scales", "reconstruction")


def _labels(model: str) -> dict[str, list[dict]]:
    """label -> its entries, labels in the order of their first entry's date."""
    out = {}
    for d in sorted(p for p in cost_dir(model).iterdir() if p.is_dir()):
        es = [json.loads(f.read_text()) for f in sorted(d.glob("*.json"))]
        if es:
            out[d.name] = es
    return dict(sorted(out.items(), key=lambda kv: min(e["date"] for e in kv[1])))


def _iters(e: dict):
    return e.get("iters", "4 % of reference")  # entries from before the field: the default 0.04 then


def build_page(model: str) -> None:
    labels = _labels(model) if cost_dir(model).is_dir() else {}
    if not labels:
        return
    meta = metadata()
    lines = [f"# Quantization cost: {model}", "",
             f"- rebuilt by: `{meta['command']}` at {meta['date']}",
             "- one `edadm quantize` per cell in a fresh process, every core of the machine (threads as the entry "
             "says); wall seconds of the whole command (model load and saving included) and peak RSS of the process",
             "- per stage: FP calibration trajectories (all of them, also those sampled on demand) / weight and "
             "activation ranges / reconstruction (two-stage: weight stage included; in brackets, where recorded, its "
             "share spent caching each unit's inputs and FP targets); the rest of the wall time is "
             "model load, wrapping, the report and saving",
             "- labels are code states: `before` is main before issue 34 (commit in each row), `after` the "
             "reconstruction and trajectory work of issue 34", ""]
    busy = []
    for label, es in labels.items():
        settings = sorted({e["setting"] for e in es}, key=lambda s: (s != "w8a8", s))
        methods = [m for m in MAIN_METHODS if any(e["method"] == m for e in es)]
        methods += sorted({e["method"] for e in es} - set(methods))
        by = {(e["setting"], e["method"]): e for e in es}
        lines += [f"## {label}", "",
                  "| setting | method | iterations per unit | wall s | peak RSS MB | trajectories s | scales s | "
                  "reconstruction s | others at start | machine (ISA) | commit |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in settings:
            for m in methods:
                e = by.get((s, m))
                if e is None:
                    continue
                sec = e["seconds"]
                others = e.get("others_running_at_start", f"1-min load {e['machine'].get('loadavg_1m')}")
                mach = e["machine"]
                cap = f" (capture {e['capture_seconds']:.0f})" if e.get("capture_seconds") else ""
                lines.append(f"| {s.upper()} | {m} | {_iters(e)} | {e['wall_seconds']:.0f} | {e['peak_memory_mb']:.0f} | "
                             + " | ".join(f"{sec.get(k, 0):.0f}" for k in STAGES) + f"{cap} | {others} | "
                             f"{mach.get('cpu')}, threads {mach.get('threads')} ({mach.get('isa')}) | {e['git_commit']} |")
        lines.append("")
        busy += [f"{label}: {e['setting']} {e['method']}" for e in es
                 if e.get("others_running_at_start", round(e["machine"].get("loadavg_1m") or 0)) > 0]
    names = list(labels)
    if len(names) >= 2:
        first, last = names[0], names[-1]
        a = {(e["setting"], e["method"]): e for e in labels[first]}
        b = {(e["setting"], e["method"]): e for e in labels[last]}
        common = [k for k in a if k in b and str(_iters(a[k])) in (str(_iters(b[k])), "4 % of reference")
                  and b[k].get("iters_scale") in (None, 0.04) and a[k]["machine"].get("isa") == b[k]["machine"].get("isa")]
        if common:
            lines += [f"## {first} -> {last}: speedup at equal iterations, same ISA", "",
                      "| setting | method | wall | trajectories | scales | reconstruction |", "|---|---|---|---|---|---|"]
            for k in common:
                ea, eb = a[k], b[k]
                cells = [f"{ea['wall_seconds']:.0f} -> {eb['wall_seconds']:.0f} s ({ea['wall_seconds'] / eb['wall_seconds']:.2f}x)"]
                for st in STAGES:
                    x, y = ea["seconds"].get(st, 0), eb["seconds"].get(st, 0)
                    cells.append(f"{x:.0f} -> {y:.0f} s ({x / y:.2f}x)" if y > 0 else f"{x:.0f} -> {y:.0f} s")
                lines.append(f"| {k[0].upper()} | {k[1]} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [("Started while other processes were runnable, so not alone timings: " + ", ".join(busy) + ".")
              if busy else "Every entry started on an idle machine.", ""]
    write_text(recipes.RESULTS / model / "cost.md", "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--methods", default=",".join(MAIN_METHODS))
    ap.add_argument("--settings", default="w4a8,w8a8")
    ap.add_argument("--seed", type=int, default=0, help="quantization seed (edadm quantize --seed)")
    ap.add_argument("--iters-scale", type=float, default=None,
                    help="edadm quantize --iters-scale (default: the package default)")
    ap.add_argument("--label", default="latest", help="the code state these entries measure (a folder under cost/)")
    ap.add_argument("--no-check-idle", dest="check_idle", action="store_false",
                    help="time even while other processes are runnable (the page marks such entries)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edadm-bench-cache")
    ap.add_argument("--fresh", action="store_true", help="measure finished entries again")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--results", type=Path, default=recipes.RESULTS, help="results root (a scratch directory for trials)")
    args = ap.parse_args(argv)
    recipes.RESULTS = args.results
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for setting in ([] if args.tables_only else args.settings.split(",")):
        for method in args.methods.split(","):
            f = cost_dir(args.model, args.label) / f"{setting}-{method}.json"
            if f.is_file() and not args.fresh:
                log.info("%s %s: done (%s)", setting, method, f)
                continue
            busy = others_running()
            if args.check_idle and busy:
                log.error("%d other runnable process(es): the machine is not idle; not timing %s %s "
                          "(--no-check-idle to time anyway; the page then says so)", busy, setting, method)
                return 1
            log.info("== %s %s", setting, method)
            t0 = time.time()
            e = {**run_entry(args.model, setting, method, args.seed, args.cache, args.iters_scale),
                 "others_running_at_start": busy, "label": args.label}
            write_json(f, e)
            log.info("%s %s: %.0f s, %.0f MB (%.0f s with the bench's own work)", setting, method,
                     e["wall_seconds"], e["peak_memory_mb"], time.time() - t0)
            build_page(args.model)
    build_page(args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
