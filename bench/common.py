"""Shared helpers for benchmark scripts: machine / commit metadata and result writing."""
from __future__ import annotations

import fcntl
import json
import logging
import sys
import time
from pathlib import Path

import torch

from edadm.provenance import git_commit, machine_info
from edadm.eval.evaluate import evaluate_pipeline
from edadm.eval.metrics import mean_std
from edadm.loading import load_pipeline
from edadm.utils import atomic_file

log = logging.getLogger("bench.common")


def metadata(argv: list[str] | None = None) -> dict:
    return {"command": "python " + " ".join(argv if argv is not None else sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git_commit": git_commit(), "machine": machine_info()}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def fp_images_file(cache: Path, model: str, num: int, seed: int) -> Path:
    """Local cache of FP's images for one sampling seed (not committed: each seed's images
    depend on that seed alone, so runs over different seed lists share them)."""
    return cache / f"fp-{model}-{num}-seed{seed}.pt"


def fp_reference(model: str, num: int, seeds: list[int], res_f: Path, cache: Path, batch_size: int,
                 keep: list[int] | None = None, source_f: Path | None = None) -> tuple[dict, dict]:
    """FP's metrics at sampling `seeds` and its images for the `keep` seeds (default: all).

    The metrics come from the committed file `source_f` (default `res_f`) when it holds every
    seed asked for (a subset is derived from it and written to `res_f` if that is another
    file); otherwise FP is sampled at every seed and `res_f` written. Images live in the local
    cache, one file per seed; a machine or session that has the committed metrics but not the
    images samples only the missing seeds and logs how far their FID-digits lands from the
    committed one (float sums differ between CPUs): the committed metrics stay the reference.
    Two jobs may call this side by side: the second waits on a file lock for the first's run."""
    keep = list(seeds if keep is None else keep)
    source_f = source_f or res_f
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"fp-{model}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        source = json.loads(source_f.read_text()) if source_f.is_file() else None
        if source is not None and set(seeds) <= set(source["seeds"]):
            res = source
            if sorted(seeds) != sorted(source["seeds"]):
                per_seed = [m for m in source["per_seed"] if m["seed"] in seeds]
                res = {**source, "seeds": seeds, "per_seed": per_seed, "subset_of": source_f.name,
                       "summary": {k: mean_std(m[k] for m in per_seed) for k in source["summary"]}}
            if res_f != source_f and not res_f.is_file():
                write_json(res_f, res)
            missing = [s for s in keep if not fp_images_file(cache, model, num, s).is_file()]
            if missing:
                fresh, imgs = evaluate_pipeline(load_pipeline(model), num, missing, batch_size=batch_size,
                                                progress=True)
                key = next(k for k in ("fid_digits", "fid_photos") if k in fresh["per_seed"][0])
                ref = {m["seed"]: m[key] for m in source["per_seed"]}
                for m in fresh["per_seed"]:
                    log.info("FP seed %d sampled again here: %s %.3f (committed %.3f, %s)", m["seed"], key,
                             m[key], ref[m["seed"]], (source.get("machine") or {}).get("isa"))
                _save_images(cache, model, num, imgs)
        else:
            t0 = time.time()
            res, imgs = evaluate_pipeline(load_pipeline(model), num, seeds, batch_size=batch_size, progress=True)
            res.update(metadata(), num=num, seeds=seeds, eval_seconds=round(time.time() - t0, 1))
            _save_images(cache, model, num, {s: imgs[s] for s in keep})
            write_json(res_f, res)
    return res, {s: torch.load(fp_images_file(cache, model, num, s)) for s in keep}


def _save_images(cache: Path, model: str, num: int, imgs: dict) -> None:
    for seed, im in imgs.items():
        with atomic_file(fp_images_file(cache, model, num, seed)) as tmp:
            torch.save(im, tmp)
