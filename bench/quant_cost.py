"""What each recipe's quantization costs: wall time and peak memory of `edadm quantize`, alone
on the machine with every core (issue 20's closing numbers).

bench/recipes.py records the same figures for each of its entries, but those usually run as
two one-thread jobs side by side; this script times one quantization per (setting, method) in a
fresh process with the machine's threads. An entry does not start while another process is
runnable (unless --no-check-idle; the page then marks it), so the timings are alone ones.

Resumable: one file per entry under bench/results/recipes/MODEL/cost/; the page
bench/results/recipes/MODEL/cost.md is rebuilt from all of them.

    python bench/quant_cost.py --model digits-ddpm --settings w4a8,w8a8
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


def cost_dir(model: str) -> Path:
    return recipes.RESULTS / model / "cost"


def run_entry(model: str, setting: str, method: str, seed: int, cache: Path) -> dict:
    w, a = (int(v) for v in setting.lstrip("w").split("a"))
    out = cache / f"cost-{model}-{setting}-{method}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f".{out.name}.ckpt", ignore_errors=True)  # a timing never resumes
    started = metadata()
    q = quantize_subprocess(model, method, w, a, out, ["--seed", str(seed)])
    rep = q["report"]
    shutil.rmtree(out, ignore_errors=True)
    return {**started, "model": model, "method": method, "setting": setting, "seed": seed,
            "threads_env": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
            "quantize_command": "edadm " + q["command"].split(" ", 2)[2], "wall_seconds": q["wall_seconds"],
            "seconds": rep["seconds"], "peak_memory_mb": rep["peak_memory_mb"]}


def build_page(model: str) -> None:
    es = [json.loads(f.read_text()) for f in sorted(cost_dir(model).glob("*.json"))]
    if not es:
        return
    settings = sorted({e["setting"] for e in es}, key=lambda s: (s != "w8a8", s))
    methods = [m for m in MAIN_METHODS if any(e["method"] == m for e in es)]
    methods += sorted({e["method"] for e in es} - set(methods))
    by = {(e["setting"], e["method"]): e for e in es}
    meta = metadata()
    lines = [f"# Quantization cost: {model}", "",
             f"- rebuilt by: `{meta['command']}` at {meta['date']}",
             "- one `edadm quantize` per cell in a fresh process, every core of the machine (threads as the entry "
             "says), iterations at the default scale; wall seconds of the whole command (model load included) and "
             "peak RSS of the process",
             "- per stage: FP calibration trajectories / calibration set / weight and activation ranges / "
             "reconstruction (two-stage: weight stage included)", "",
             "| setting | method | wall s | peak RSS MB | trajectories s | scales s | reconstruction s | "
             "others at start | machine (ISA) | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in settings:
        for m in methods:
            e = by.get((s, m))
            if e is None:
                continue
            sec = e["seconds"]
            others = e.get("others_running_at_start", f"1-min load {e['machine'].get('loadavg_1m')}")
            mach = e["machine"]
            lines.append(f"| {s.upper()} | {m} | {e['wall_seconds']:.0f} | {e['peak_memory_mb']:.0f} | "
                         f"{sec.get('trajectories', 0):.0f} | {sec.get('scales', 0):.0f} | "
                         f"{sec.get('reconstruction', 0):.0f} | {others} | "
                         f"{mach.get('cpu')}, threads {mach.get('threads')} ({mach.get('isa')}) | {e['git_commit']} |")
    busy = [f"{e['setting']} {e['method']}" for e in es
            if e.get("others_running_at_start", round(e["machine"].get("loadavg_1m") or 0)) > 0]
    lines += ["", ("Started while other processes were runnable, so not alone timings: "
                   + ", ".join(busy) + ".") if busy else "Every entry started on an idle machine.", ""]
    write_text(recipes.RESULTS / model / "cost.md", "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--methods", default=",".join(MAIN_METHODS))
    ap.add_argument("--settings", default="w4a8,w8a8")
    ap.add_argument("--seed", type=int, default=0, help="quantization seed (edadm quantize --seed)")
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
            f = cost_dir(args.model) / f"{setting}-{method}.json"
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
            e = {**run_entry(args.model, setting, method, args.seed, args.cache), "others_running_at_start": busy}
            write_json(f, e)
            log.info("%s %s: %.0f s, %.0f MB (%.0f s with the bench's own work)", setting, method,
                     e["wall_seconds"], e["peak_memory_mb"], time.time() - t0)
            build_page(args.model)
    build_page(args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
