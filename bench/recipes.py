"""Methods ranked over quantization seeds: the faithful recipes side by side (issue 20).

For each (setting, quantization seed, method): quantize in a fresh subprocess (`edadm quantize
--seed Q`: the calibration trajectories, the calibration set, the range observers and every
reconstruction draw follow Q), sample `--num` images with the integer engine from the same
initial noise as FP (sampling seed `--sample-seed`), and measure FID-digits, IS-digits and
PSNR vs FP. The FP model is sampled at `--fp-seeds` (its spread over sampling seeds is the
noise floor beside the spread over quantization seeds).

Resumable: each finished entry is one file under bench/results/recipes/MODEL/runs/; a rerun
skips finished entries. Two jobs may run side by side (for example one per setting): the FP
reference is computed once under a file lock. Each run rebuilds the table of MODEL from all
finished entries: bench/results/recipes/MODEL/table.{json,md}.

    python bench/recipes.py --model digits-ddpm --settings w8a8
    python bench/recipes.py --model digits-ldm --settings w4a8 --methods ptq4dm --qseeds 0
    python bench/recipes.py --model digits-ddpm --tables-only
    python bench/recipes.py --model digits-ddpm --settings w4a8 --methods eda-dm-plus+ptqd

METHOD+ptqd quantizes with `--output-correction ptqd` and samples the same model with and
without the correction (its effect, paired on the same noise, gets its own section).
METHOD+mpNN quantizes with `--mixed-budget NN/100` (mixed precision: the most sensitive
low-bit layers kept at 8 bits within NN % more weight bytes); modifiers combine
(eda-dm-plus+mp10+ptqd). METHOD+uniform quantizes with `--strategy uniform` (Q-Diffusion's
calibration set: the recipe's sample count on evenly spaced steps). METHOD+tiar quantizes with
`--temporal-recon` (TFMQ-DM's temporal information block reconstructed on its own).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import scipy.stats

from common import fmt, fp_reference, metadata, write_json, write_text  # noqa: E402
from quality import quantize_subprocess  # noqa: E402

from edadm.config import DEFAULT_ITERS_SCALE  # noqa: E402
from edadm.eval.domains import domain_of, domain_paired  # noqa: E402
from edadm.eval.evaluate import evaluate_pipeline  # noqa: E402
from edadm.eval.metrics import mean_std  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402

log = logging.getLogger("bench.recipes")
COMMITTED = Path(__file__).parent / "results" / "recipes"
RESULTS = COMMITTED  # --results moves it to a scratch directory
MAIN_METHODS = ["naive", "qdiffusion", "eda-dm", "eda-dm-plus"]
ONE_SEED_METHODS = ["ptq4dm", "eda-dm-tdac-only", "eda-dm-fbr-only"]


def model_dir(model: str) -> Path:
    return RESULTS / model


def quantize(model: str, method: str, w: int, a: int, qseed: int, out: Path, extra: list[str]) -> dict:
    """quality.quantize_subprocess (fresh process, resumes its checkpoint) with --seed, summarised."""
    q = quantize_subprocess(model, method, w, a, out, ["--seed", str(qseed), *extra])
    rep = q["report"]
    mixed = rep.get("mixed_precision") or {}
    return {"mixed_precision": {k: mixed[k] for k in ("budget", "base_bytes", "used_bytes", "kept")} if mixed else None,
            "command": "edadm " + q["command"].split(" ", 2)[2], "wall_seconds": q["wall_seconds"],
            "resumed": q["resumed"], "seconds": rep["seconds"], "peak_memory_mb": rep["peak_memory_mb"],
            "counts": rep["counts"], "config": rep["config"],
            "recon": [{k: u.get(k) for k in ("name", "stage", "iters", "before", "after", "fallback")}
                      for u in rep.get("recon") or []]}


def _paired_fields(paired: dict) -> dict:
    return {"reps": paired["reps"], "delta_fid": paired["delta"]["fid"], "delta_kid_x1e3": paired["delta"]["kid_x1e3"],
            "psnr": paired["pair"]["psnr"], "class_flip": paired["pair"]["class_flip"]}


def split_method(method: str) -> tuple[str, str | None, list[str]]:
    """'eda-dm-plus+mp10+ptqd' -> ('eda-dm-plus', 'ptqd', ['--mixed-budget', '0.1']): a recipe,
    its output correction (+ptqd), its mixed-precision budget in percent (+mpNN) and
    Q-Diffusion's uniform calibration set in place of the recipe's (+uniform: TDAC vs
    uniform decided in the same table) and TFMQ-DM's temporal-block reconstruction (+tiar)."""
    base, *mods = method.split("+")
    corr, extra = None, []
    for m in mods:
        if m == "ptqd":
            corr = m
        elif m.startswith("mp") and m[2:].isdigit() and 0 < int(m[2:]) <= 100:
            extra += ["--mixed-budget", str(int(m[2:]) / 100)]
        elif m == "uniform":
            extra += ["--strategy", "uniform"]
        elif m == "tiar":
            extra += ["--temporal-recon"]
        else:
            raise SystemExit(f"unknown modifier {m!r} in {method!r} (known: ptqd, mpNN with NN a percent, uniform, tiar)")
    return base, corr, extra


def run_entry(args, setting: str, method: str, qseed: int, fp_ref) -> dict:
    """One entry; `fp_ref()` gives FP's (metrics, images), fetched after the quantization so
    that a second job started beside a first quantizes while the first samples FP.

    METHOD+ptqd: quantized with `--output-correction ptqd`; the same quantized model is also
    sampled without its correction (entry["raw"]), and the correction's effect is the paired
    difference of the two on the same noise (entry["vs_raw"], bootstrap over images)."""
    w, a = (int(v) for v in setting.lstrip("w").split("a"))
    base, corr, mods = split_method(method)
    extra = args.quantize_args.split() + mods + (["--output-correction", corr] if corr else [])
    # Trials with other --quantize-args get their own directory: a checkpoint left by an
    # interrupted run is resumed only by the same command (edadm refuses a mismatched one).
    tag = "-" + hashlib.sha1(args.quantize_args.encode()).hexdigest()[:8] if args.quantize_args.split() else ""
    qdir = args.cache / f"q-{args.model}-{setting}-{method}-q{qseed}{tag}"
    started = metadata()
    q = quantize(args.model, base, w, a, qseed, qdir, extra)
    q["weights_file_bytes"] = sum(f.stat().st_size for f in qdir.glob("*/edadm_quant.safetensors"))
    fp_res, fp_imgs = fp_ref()
    pipe = load_pipeline(qdir, engine=args.engine)
    if corr and pipe.correction is None:
        raise SystemExit(f"{qdir}: quantized with --output-correction {corr} but saved no correction")
    fp_m = next(s for s in fp_res["per_seed"] if s["seed"] == args.sample_seed)
    t0 = time.time()

    def sample():
        res, imgs = evaluate_pipeline(pipe, args.num, [args.sample_seed], batch_size=args.batch_size,
                                      reference={args.sample_seed: fp_imgs[args.sample_seed]}, progress=True)
        m, im = res["per_seed"][0], imgs[args.sample_seed]
        key = domain_of(im.shape[1:]).key  # fid_digits / fid_photos
        # the paired comparison with FP on the same noise, every difference with its 95 % bootstrap
        # interval over images (eval.yardstick.measure; docs/evaluation.md)
        paired = domain_paired(im, fp_imgs[args.sample_seed], reps=args.bootstrap, seed=args.sample_seed)
        return {"metrics": m, "fid_key": key, "delta_fid": m[key] - fp_m[key], "paired": _paired_fields(paired)}, im

    out, imgs = sample()
    if corr:
        pipe.correction = None
        raw, raw_imgs = sample()
        vs = domain_paired(imgs, raw_imgs, reps=args.bootstrap, seed=args.sample_seed)
        out.update(raw=raw, vs_raw=_paired_fields(vs))
    shutil.rmtree(qdir, ignore_errors=True)
    return {**started, "finished": metadata()["date"], "model": args.model, "method": method, "setting": setting,
            "qseed": qseed, "sample_seed": args.sample_seed, "num": args.num, "engine": args.engine, **out,
            "eval_seconds": round(time.time() - t0, 1), "quantize": q}


def entries(model: str) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((model_dir(model) / "runs").glob("*/*.json"))]


def _stat(values: list[float]) -> dict | None:
    return mean_std(values) if values else None


def _cell(values: list[float]) -> str:
    """mean ± std over quantization seeds; a single seed has no spread (shown as such)."""
    if not values:
        return "-"
    return f"{values[0]:.2f} (1 seed)" if len(values) == 1 else fmt(_stat(values), 2)


def _scales(es: list[dict]) -> list[float]:
    """The iteration factors the entries ran with (their saved configs; the default when absent)."""
    return sorted({(e.get("quantize") or {}).get("config", {}).get("recon", {}).get("iters_scale", DEFAULT_ITERS_SCALE)
                   for e in es}) or [DEFAULT_ITERS_SCALE]


def _t_half(values: list[float], confidence: float = 0.95) -> float | None:
    """Half-width of the t interval of the mean of `values` (None below two values)."""
    if len(values) < 2:
        return None
    return float(scipy.stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5


def _welch(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """(mean(b) - mean(a), half-width of its Welch t interval), or None below two values each."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = (va + vb) ** 0.5
    if se == 0:
        return statistics.mean(b) - statistics.mean(a), 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return statistics.mean(b) - statistics.mean(a), float(scipy.stats.t.ppf(0.5 + confidence / 2, df)) * se


def _paired_section(settings, methods, groups, fp_std) -> list[str]:
    """Paired differences vs FP with intervals, and the ranking only where intervals separate.

    Two sources of noise: which images were sampled (each entry's 95 % bootstrap interval over
    images, paired with FP on the same noise: eval.yardstick) and which quantization seed
    (the t interval of the mean over seeds). A method is ahead of the next only when the
    Welch 95 % interval of their mean ΔFID difference over quantization seeds excludes 0."""
    lines = ["", "## Paired differences vs FP with 95 % intervals", "",
             "Per quantization seed: the value and its 95 % bootstrap interval over the sampled images (paired with FP, "
             "same noise; docs/evaluation.md). Mean: over quantization seeds, ± the half-width of its 95 % t interval. "
             f"FP's own sampling-seed std of FID ({fp_std:.2f}) is the noise a ΔFID inside it cannot be told from.", "",
             "| setting | method | ΔFID per seed [95 % over images] | ΔFID mean ± t95 | ΔKID x 10³ per seed | "
             "ΔKID mean ± t95 | PSNR dB mean ± t95 |", "|---|---|---|---|---|---|---|"]

    def per_seed(g, k):
        return ", ".join(f"{e['paired'][k]['value']:+.1f} [{e['paired'][k]['ci'][0]:+.1f}, {e['paired'][k]['ci'][1]:+.1f}]"
                         if e.get("paired") and e["paired"][k]["ci"] else "-" for e in g)

    def mean_t(values, fmt=".2f", sign="+"):
        if not values:
            return "-"
        h = _t_half(values)
        return f"{statistics.mean(values):{sign}{fmt}}" + ("" if h is None else f" ± {h:{fmt}}")

    for st in settings:
        for m in methods:
            g = sorted(groups.get((st, m), []), key=lambda e: e["qseed"])
            if not g:
                continue
            kid = [e["paired"]["delta_kid_x1e3"]["value"] for e in g if e.get("paired")]
            lines.append(f"| {st.upper()} | {m} | {per_seed(g, 'delta_fid')} | {mean_t([e['delta_fid'] for e in g])} | "
                         f"{per_seed(g, 'delta_kid_x1e3')} | {mean_t(kid)} | "
                         f"{mean_t([e['metrics']['psnr_vs_ref'] for e in g], sign='')} |")
    lines += _correction_section(settings, methods, groups)
    lines += ["", "## Ranking where the intervals separate", "",
              "Methods by mean ΔFID; `<` only where the Welch 95 % interval of the difference of the two means over "
              "quantization seeds excludes 0, `≈` where it does not (a tie at this many seeds).", ""]
    for st in settings:
        ranked = sorted(((statistics.mean(e["delta_fid"] for e in g), m, [e["delta_fid"] for e in g])
                         for (ss, m), g in groups.items() if ss == st), key=lambda r: r[0])
        text = ranked[0][1] if ranked else ""
        rows = []
        for (d, m, v), (d2, m2, v2) in zip(ranked, ranked[1:]):
            w = _welch(v, v2)
            sep = w is not None and w[0] - w[1] > 0
            text += f" {'<' if sep else '≈'} {m2}"
            rows.append(f"| {m} -> {m2} | {d2 - d:+.2f} | {'-' if w is None else f'± {w[1]:.2f}'} | "
                        f"{'yes' if sep else 'no'} |")
        lines += [f"**{st.upper()}**: {text}", "", "| pair | gap in mean ΔFID | Welch 95 % half-width | separated |",
                  "|---|---|---|---|", *rows, ""]
    return lines


def _correction_section(settings, methods, groups) -> list[str]:
    """METHOD+ptqd entries against the same quantized models sampled without the correction:
    per seed the paired difference on the same noise with its bootstrap interval over images,
    and the mean over seeds with the t interval of the per-seed differences (paired by seed)."""
    rows = []
    for st in settings:
        for m in methods:
            g = sorted((e for e in groups.get((st, m), []) if e.get("vs_raw")), key=lambda e: e["qseed"])
            if not g:
                continue
            d = [e["delta_fid"] - e["raw"]["delta_fid"] for e in g]
            dp = [e["metrics"]["psnr_vs_ref"] - e["raw"]["metrics"]["psnr_vs_ref"] for e in g]
            per = ", ".join(f"{e['vs_raw']['delta_fid']['value']:+.2f} [{e['vs_raw']['delta_fid']['ci'][0]:+.2f}, "
                            f"{e['vs_raw']['delta_fid']['ci'][1]:+.2f}]" for e in g)
            h, hp = _t_half(d), _t_half(dp)
            raw = [e["raw"]["delta_fid"] for e in g]
            rows.append(f"| {st.upper()} | {m} | {statistics.mean(raw):+.2f} | {per} | {statistics.mean(d):+.2f}"
                        + ("" if h is None else f" ± {h:.2f}") + f" | {statistics.mean(dp):+.3f}"
                        + ("" if hp is None else f" ± {hp:.3f}") + " |")
    if not rows:
        return []
    return ["", "## Output correction against the same quantized model", "",
            "Each METHOD+ptqd model sampled with and without its correction (same quantized weights, same noise). "
            "ΔFID (corrected - raw) per seed [95 % bootstrap over images]; mean ± t95 over quantization seeds of the "
            "per-seed differences (paired by seed). Negative: the correction helps.", "",
            "| setting | method | raw ΔFID vs FP (mean) | ΔFID corrected - raw per seed | mean ± t95 | "
            "ΔPSNR vs FP dB mean ± t95 |", "|---|---|---|---|---|---|", *rows]


def build_table(model: str, notes: list[str] | None = None) -> None:
    es = entries(model)
    fp_f = model_dir(model) / f"fp-{es[0]['num'] if es else 1000}.json"
    if not fp_f.is_file():
        return
    fp = json.loads(fp_f.read_text())
    settings = sorted({e["setting"] for e in es}, key=lambda s: (s != "w8a8", s))
    methods = [m for m in MAIN_METHODS + ONE_SEED_METHODS if any(e["method"] == m for e in es)]
    methods += sorted({e["method"] for e in es} - set(methods))
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in es:
        groups.setdefault((e["setting"], e["method"]), []).append(e)
    key = es[0].get("fid_key", "fid_digits") if es else "fid_digits"
    name = "FID-" + key.split("_", 1)[1]
    fp_fids = [s[key] for s in fp["per_seed"]]
    fp_std = statistics.stdev(fp_fids) if len(fp_fids) > 1 else 0.0
    fp_mean = statistics.mean(fp_fids)
    meta = metadata()
    commits = sorted({e["git_commit"] for e in es})
    cpus = sorted({f"{e['machine'].get('cpu')} ({e['machine'].get('isa', '?')})" for e in es})
    lines = [f"# Recipes ranked over quantization seeds: {model}", "",
             f"- rebuilt by: `{meta['command'].split(' --note ')[0]}` at {meta['date']}",  # notes: below
             f"- entries measured with commits {', '.join(commits)} on {', '.join(cpus)}; each entry's command, "
             "date, machine, wall time and peak memory are in table.json",
             f"- every quantized model: {es[0]['num'] if es else '?'} samples, integer engine, sampling seed "
             f"{es[0]['sample_seed'] if es else '?'} (the same initial noise as FP); quantization seeds as listed",
             f"- iterations: every recipe's reference count x {', '.join(map(str, _scales(es)))} (one factor for "
             "all, as the entries' configs record it; see docs/recipes.md)",
             f"- FP32: {name} {fp_mean:.2f}, std over sampling seeds {fp['seeds']}: {fp_std:.2f} (the sampling "
             "noise floor); ΔFID = FID - FP's FID at the same sampling seed (paired, same noise)", "",
             f"## {name}, ΔFID vs FP and PSNR vs FP: mean ± std over quantization seeds", "",
             "| method | " + " | ".join(f"{s.upper()} FID | ΔFID | PSNR dB | seeds" for s in settings) + " |",
             "|---|" + "---|---|---|---|" * len(settings)]
    for m in methods:
        cells = []
        for s in settings:
            g = groups.get((s, m), [])
            cells += [_cell([e["metrics"][key] for e in g]) if g else "not run",
                      _cell([e["delta_fid"] for e in g]),
                      _cell([e["metrics"]["psnr_vs_ref"] for e in g]),
                      ",".join(str(e["qseed"]) for e in sorted(g, key=lambda e: e["qseed"])) or "-"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += _paired_section(settings, methods, groups, fp_std)
    lines += ["## Quantization cost on this machine (wall seconds of `edadm quantize`, peak RSS MB; mean over seeds; "
              "the saved weights file where recorded)", "",
              "| method | " + " | ".join(s.upper() for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        cells = []
        for s in settings:
            g = [e for e in groups.get((s, m), []) if not e["quantize"]["resumed"]]
            sizes = [e["quantize"]["weights_file_bytes"] for e in groups.get((s, m), [])
                     if e["quantize"].get("weights_file_bytes")]
            size = f", weights file {statistics.mean(sizes) / 2**20:.2f} MiB" if sizes else ""
            cells.append(f"{statistics.mean(e['quantize']['wall_seconds'] for e in g):.0f} s, "
                         f"{max(e['quantize']['peak_memory_mb'] for e in g):.0f} MB{size}" if g else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    loads = sorted({e["machine"].get("loadavg_1m") for e in es if e["machine"].get("loadavg_1m") is not None})
    lines += ["", f"1-minute load averages at the entries' starts: {loads} (2 cores; two bench jobs side by side "
              "make about 2: their wall times hold, a third process would not).", ""]
    notes_f = model_dir(model) / "notes.json"  # what the entries' JSON cannot say (pauses, shared cores)
    kept = json.loads(notes_f.read_text()) if notes_f.is_file() else []
    kept += [n for n in notes or [] if n not in kept]
    if kept:
        write_json(notes_f, kept)
        lines += ["## Notes on these measurements", ""] + [f"- {n}" for n in kept] + [""]
    write_text(model_dir(model) / "table.md", "\n".join(lines))
    write_json(model_dir(model) / "table.json", {**meta, "model": model, "fp": fp, "entries": es})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--methods", default=",".join(MAIN_METHODS))
    ap.add_argument("--settings", default="w8a8,w4a8")
    ap.add_argument("--qseeds", default="0,1,2", help="quantization seeds (edadm quantize --seed)")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--fp-seeds", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edadm-bench-cache")
    ap.add_argument("--quantize-args", default="", help="extra flags for edadm quantize (same for every method)")
    ap.add_argument("--engine", choices=["int", "fake"], default="int")
    ap.add_argument("--bootstrap", type=int, default=300, help="bootstrap draws for each entry's paired intervals")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--results", type=Path, default=COMMITTED, help="results root (a scratch directory for trials)")
    ap.add_argument("--note", action="append", default=[], help="a note kept with MODEL's table (notes.json)")
    args = ap.parse_args(argv)
    globals()["RESULTS"] = args.results
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.tables_only:
        build_table(args.model, args.note)
        return 0
    fp_seeds = [int(s) for s in args.fp_seeds.split(",")]
    if args.sample_seed not in fp_seeds:
        ap.error("--sample-seed must be one of --fp-seeds (the quantized models are paired with FP)")
    # A scratch --results directory takes FP's metrics from the committed reference (FP does not
    # depend on the trial), so a trial pairs with the same FP as the table and samples FP only
    # for images missing from the local cache.
    committed_fp = COMMITTED / args.model / f"fp-{args.num}.json"
    fp_ref = functools.cache(lambda: fp_reference(args.model, args.num, fp_seeds,
                                                  model_dir(args.model) / f"fp-{args.num}.json", args.cache,
                                                  args.batch_size, keep=[args.sample_seed],
                                                  source_f=committed_fp if committed_fp.is_file() else None))
    for setting in args.settings.split(","):
        for qseed in (int(s) for s in args.qseeds.split(",")):  # seed-major: all methods of seed 0 first
            for method in args.methods.split(","):
                f = model_dir(args.model) / "runs" / setting / f"{method}-q{qseed}.json"
                if f.is_file():
                    log.info("skip %s %s q%d (done)", setting, method, qseed)
                    continue
                log.info("== %s %s qseed %d", setting, method, qseed)
                entry = run_entry(args, setting, method, qseed, fp_ref)
                write_json(f, entry)
                log.info("%s %s q%d: %s %.2f (ΔFID %+.2f), PSNR %.2f dB, quantize %.0f s", setting, method,
                         qseed, entry["fid_key"], entry["metrics"][entry["fid_key"]], entry["delta_fid"],
                         entry["metrics"]["psnr_vs_ref"], entry["quantize"]["wall_seconds"])
                build_table(args.model)
    build_table(args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
