"""How noisy is each quality metric, and which one can rank quantization methods? (issue 36)

Measured on the FP model itself, then on models with a known difference, all from one run:

1. FP at several sampling seeds: each metric's spread over seeds at `--num` images, its
   bootstrap standard error at the same size (is the bootstrap interval honest?), and FID /
   KID's spread against the sample count from disjoint subsets of all FP images pooled.
2. A null model: FP with a random relative perturbation of every weight, its size tuned so
   that PSNR vs FP matches `--target-psnr` (a W4A8 model's): the same image-level difference
   as quantization, without quantization's systematic error. A metric that calls it worse
   than FP by as much as a W4A8 model measures fidelity, not quality.
3. Quantized models (`--methods`, integer engine) paired with FP on the same noise.

Every metric gets its bootstrap interval (edadm.eval.yardstick.measure), every paired
difference its paired interval. Images are cached under --cache (a rerun resumes); the
results go to bench/results/yardstick/MODEL.{json,md}.

    cd bench && python yardstick.py --model digits-ddpm
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from common import fp_images_file, metadata, write_json, write_text  # noqa: E402
from quality import quantize_subprocess  # noqa: E402

from edadm.eval.domains import domain_features, domain_reference  # noqa: E402
from edadm.eval.metrics import psnr  # noqa: E402
from edadm.eval.yardstick import Features, Reference, measure, set_metrics  # noqa: E402
from edadm.loading import load_pipeline  # noqa: E402
from edadm.sampling import generate  # noqa: E402
from edadm.utils import atomic_file  # noqa: E402

log = logging.getLogger("bench.yardstick")
RESULTS = Path(__file__).parent / "results" / "yardstick"
SET_KEYS = ("fid", "kid_x1e3", "class_tv", "precision", "recall")
PAIR_KEYS = ("psnr", "class_flip", "feat_dist")
NAMES = {"fid": "FID-digits", "kid_x1e3": "KID-digits x 10³", "class_tv": "class-histogram TV",
         "precision": "precision", "recall": "recall", "psnr": "PSNR vs FP (dB)", "class_flip": "class flips vs FP",
         "feat_dist": "paired feature distance"}


def cached_images(cache: Path, key: str, make) -> torch.Tensor:
    """Images for `key`, sampled once (uint8 on disk: what a PNG would hold)."""
    f = cache / f"yardstick-{key}.pt"
    if f.is_file():
        return torch.load(f).float() / 255
    t0 = time.time()
    imgs = make()
    log.info("%s: %d images in %.0f s", key, len(imgs), time.time() - t0)
    u8 = (imgs * 255).round().to(torch.uint8)
    with atomic_file(f) as tmp:
        torch.save(u8, tmp)
    return u8.float() / 255


def perturbed(unet, rel: float, seed: int):
    """A copy of `unet` with every weight matrix / kernel w moved by rel * std(w) * N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(unet)
    with torch.no_grad():
        for name, p in sorted(out.named_parameters()):
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=g) * (rel * float(p.std())))
    return out


def tune_perturbation(pipe, fp: torch.Tensor, target_psnr: float, batch: int, seed: int) -> tuple[float, list]:
    """Relative weight noise (perturbation `seed`) whose images land at target_psnr vs the FP
    images `fp` (the first images of sampling seed 0), by bisection on log(rel): PSNR falls with
    the noise. Tuned per perturbation seed: one noise level gives PSNRs 10 dB apart between
    seeds (a draw that hits a sensitive layer harder)."""
    unet0, lo, hi, trace = pipe.unet, 3e-3, 0.1, []
    for _ in range(6):
        mid = math.sqrt(lo * hi)
        pipe.unet = perturbed(unet0, mid, seed=seed)
        p = psnr(generate(pipe, len(fp), seed=0, batch_size=batch, progress=False), fp)
        trace.append({"rel": mid, "psnr": p})
        log.info("perturbation %.4f: PSNR vs FP %.2f dB (target %.2f)", mid, p, target_psnr)
        lo, hi = (mid, hi) if p > target_psnr else (lo, mid)
    pipe.unet = unet0
    return math.sqrt(lo * hi), trace


def subset_spread(pool: Features, ref: Reference, sizes: list[int], seed: int = 0) -> dict:
    """FID / KID / class TV spread over disjoint subsets of the pooled FP images, per size."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(pool))
    out = {}
    for n in sizes:
        k = len(pool) // n
        if k < 2:
            continue
        vals = [set_metrics(pool.take(perm[i * n:(i + 1) * n]), ref, with_recall=False) for i in range(k)]
        out[str(n)] = {m: {"mean": float(np.mean([v[m] for v in vals])), "std": float(np.std([v[m] for v in vals], ddof=1)),
                           "subsets": k} for m in ("fid", "kid_x1e3", "class_tv")}
    return out


def run(args) -> dict:
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model)
    ref = domain_reference()
    res = {**metadata(), "model": args.model, "num": args.num, "reps": args.reps, "fp": {}, "null": {}, "methods": {}}

    def fp_make(s):  # recipes.py's FP images of that seed, when its cache has them
        f = fp_images_file(cache, args.model, args.num, s)
        return torch.load(f) if f.is_file() else generate(pipe, args.num, seed=s, batch_size=args.batch_size)

    fp_imgs = {s: cached_images(cache, f"{args.model}-fp-{args.num}-s{s}", lambda s=s: fp_make(s))
               for s in args.fp_seeds}
    fp = {s: domain_features(im) for s, im in fp_imgs.items()}
    for s in args.fp_seeds:
        res["fp"][str(s)] = measure(fp[s], ref, reps=args.reps, seed=s)
        log.info("FP seed %d: %s", s, {k: round(v["value"], 3) for k, v in res["fp"][str(s)]["set"].items()})
    pool = Features(np.concatenate([fp[s].feats for s in args.fp_seeds]),
                    np.concatenate([fp[s].pred for s in args.fp_seeds]))
    res["fp_subsets"] = subset_spread(pool, ref, args.subset_sizes)

    res["null_perturbation"] = {"target_psnr": args.target_psnr, "tune_num": args.tune_num, "rel": {}, "tuning": {}}
    unet0 = pipe.unet
    for p in range(args.null_models):
        s = args.fp_seeds[p % len(args.fp_seeds)]
        tuned = cache / f"yardstick-{args.model}-null{p}-{args.target_psnr:g}-{args.tune_num}.json"
        if tuned.is_file():
            rel, trace = json.loads(tuned.read_text())
        else:
            rel, trace = tune_perturbation(pipe, fp_imgs[args.fp_seeds[0]][:args.tune_num], args.target_psnr,
                                           args.batch_size, seed=p)
            tuned.write_text(json.dumps([rel, trace]))
        res["null_perturbation"]["rel"][str(p)] = rel
        res["null_perturbation"]["tuning"][str(p)] = trace
        key = f"{args.model}-null{p}-{rel:.5f}-{args.num}-s{s}"

        def make(p=p, s=s):
            pipe.unet = perturbed(unet0, rel, seed=p)
            try:
                return generate(pipe, args.num, seed=s, batch_size=args.batch_size)
            finally:
                pipe.unet = unet0
        res["null"][f"p{p}-s{s}"] = measure(domain_features(cached_images(cache, key, make)), ref, fp[s], reps=args.reps,
                                            seed=100 + p)

    for spec in args.methods:
        method, setting = spec.split(":")
        w, a = (int(v) for v in setting.lstrip("w").split("a"))
        tag = hashlib.sha1(" ".join(args.quantize_args).encode()).hexdigest()[:8]
        qdir = cache / f"q-{args.model}-{setting}-{method}-q{args.qseed}-{tag}"
        if not (qdir / "unet" / "edadm_quant.json").is_file():
            q = quantize_subprocess(args.model, method, w, a, qdir, ["--seed", str(args.qseed), *args.quantize_args])
            log.info("%s %s quantized in %.0f s", method, setting, q["wall_seconds"])
        qpipe = None
        for s in args.method_seeds:
            key = f"{args.model}-{setting}-{method}-q{args.qseed}-{tag}-{args.num}-s{s}"

            def make(s=s):
                nonlocal qpipe
                qpipe = qpipe or load_pipeline(qdir)
                return generate(qpipe, args.num, seed=s, batch_size=args.batch_size)
            res["methods"][f"{method} {setting} s{s}"] = measure(domain_features(cached_images(cache, key, make)), ref, fp[s],
                                                                reps=args.reps, seed=200 + s)
    res["quantize_args"] = args.quantize_args
    res["qseed"] = args.qseed
    return res


def _ci(m: dict, d: int = 2) -> str:
    if m["ci"] is None:
        return f"{m['value']:.{d}f}"
    return f"{m['value']:.{d}f} [{m['ci'][0]:.{d}f}, {m['ci'][1]:.{d}f}]"


def page(res: dict) -> str:
    mach = res["machine"]
    fp = res["fp"]
    seeds = sorted(fp, key=int)
    lines = [f"# Yardstick study: {res['model']}, {res['num']} images per set", "",
             f"`{res['command']}`  ", f"{res['date']}, commit {res['git_commit']}, "
             f"{mach.get('cpu', '')} ({mach.get('isa', '')}), {res['reps']} bootstrap draws, 95 % intervals.", "",
             "## 1. FP against itself: spread over sampling seeds vs the bootstrap's", "",
             "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | sd over seeds | mean bootstrap SE |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for k in SET_KEYS:
        vals = [fp[s]["set"][k]["value"] for s in seeds]
        ses = [fp[s]["set"][k]["se"] for s in seeds if fp[s]["set"][k]["se"] is not None]
        lines.append(f"| {NAMES[k]} | " + " | ".join(f"{v:.3f}" for v in vals)
                     + f" | {np.std(vals, ddof=1):.3f} | " + (f"{np.mean(ses):.3f}" if ses else "-") + " |")
    lines += ["", "Disjoint subsets of all FP images pooled: sd of each metric against the subset size.", "",
              "| images | subsets | FID-digits mean ± sd | KID x 10³ mean ± sd | class TV mean ± sd |", "|---|---|---|---|---|"]
    for n, v in res["fp_subsets"].items():
        lines.append(f"| {n} | {v['fid']['subsets']} | " + " | ".join(
            f"{v[m]['mean']:.3f} ± {v[m]['std']:.3f}" for m in ("fid", "kid_x1e3", "class_tv")) + " |")
    nul = res["null_perturbation"]
    lines += ["", "## 2. Paired differences vs FP (same noise), with 95 % paired bootstrap intervals", "",
              "Null models: FP with relative weight noise "
              + ", ".join(f"{v:.4f} (seed {k})" for k, v in nul["rel"].items())
              + f", each tuned to PSNR vs FP {nul['target_psnr']:.1f} dB on the first {nul['tune_num']} images "
              "of sampling seed 0; quantized models: "
              f"`edadm quantize --seed {res['qseed']} {' '.join(res['quantize_args'])}`, integer engine.", "",
              "| model vs FP | " + " | ".join(f"Δ {NAMES[k]}" for k in SET_KEYS if k != "recall")
              + " | " + " | ".join(NAMES[k] for k in PAIR_KEYS) + " |",
              "|---|" + "---|" * (len(SET_KEYS) - 1 + len(PAIR_KEYS))]
    rows = [(f"null {k}", v) for k, v in res["null"].items()] + list(res["methods"].items())
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(_ci(m["delta"][k], 3 if k != "fid" else 2)
                                                  for k in SET_KEYS if k != "recall")
                     + " | " + " | ".join(_ci(m["pair"][k], 3 if k != "psnr" else 2) for k in PAIR_KEYS) + " |")
    lines += ["", "Unpaired, for comparison: the same metrics of each set alone against the real digits.", "",
              "| set | " + " | ".join(NAMES[k] for k in SET_KEYS) + " |", "|---|" + "---|" * len(SET_KEYS)]
    for label, m in [(f"FP seed {s}", fp[s]) for s in seeds] + rows:
        lines.append(f"| {label} | " + " | ".join(_ci(m["set"][k], 3 if k != "fid" else 2) for k in SET_KEYS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits-ddpm")
    ap.add_argument("--num", type=int, default=1000, help="images per set")
    ap.add_argument("--fp-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--subset-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[250, 500, 1000, 2000, 3000])
    ap.add_argument("--target-psnr", type=float, default=22.0, help="null model's PSNR vs FP (eda-dm-plus W4A8's)")
    ap.add_argument("--tune-num", type=int, default=100, help="images per bisection step of the null's noise")
    ap.add_argument("--null-models", type=int, default=3, help="perturbation seeds (model p is sampled at FP seed p)")
    ap.add_argument("--methods", nargs="*", default=["naive:w4a8", "eda-dm-plus:w4a8", "eda-dm-plus:w8a8"])
    ap.add_argument("--method-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    ap.add_argument("--qseed", type=int, default=0)
    ap.add_argument("--quantize-args", default="--iters-scale 0.04", help="extra edadm quantize flags")
    ap.add_argument("--reps", type=int, default=500, help="bootstrap draws")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edadm-bench-cache"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--tables-only", action="store_true", help="rebuild the page from the JSON")
    args = ap.parse_args(argv)
    args.quantize_args = args.quantize_args.split()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_grad_enabled(False)
    out = args.results / f"{args.model}.json"
    res = json.loads(out.read_text()) if args.tables_only else run(args)
    if not args.tables_only:
        write_json(out, res)
    write_text(out.with_suffix(".md"), page(res))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
