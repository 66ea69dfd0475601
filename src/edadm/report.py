"""`edadm report DIR`: one self-contained HTML page (and a markdown twin) about a quantized model.

Sections: settings; the calibration allocation (TDAC density / variety when used); the
reconstruction loss curves per unit, by term (block, FBR inner layers, AdaRound rounding)
with output error before / after; the per-layer quantization error (weight, input,
layer output); FP vs quantized samples from the same noise; metrics (PSNR vs FP from the
same noise, FID-digits / IS-digits where the digits classifier applies, and any
`metrics*.json` written into DIR by `edadm evaluate --json`).

The HTML embeds every figure as a base64 PNG (no external file or network access); the
markdown links the same PNGs, written beside it in DIR/report/.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from pathlib import Path

import torch

from .errors import EdadmError

log = logging.getLogger("edadm")

REPORT_DIR = "report"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def allocation_png(report: dict, title: str) -> bytes | None:
    from .calib.plot import allocation_figure

    if not report.get("counts"):
        return None
    buf = io.BytesIO()
    allocation_figure(report["counts"], report.get("timesteps") or [], buf, title=title,
                      details=report.get("allocation"))
    return buf.getvalue()


def loss_curves_png(recon: list[dict], max_units: int = 48) -> bytes | None:
    """Small multiples: one panel per reconstructed unit, each loss term against iterations."""
    units = [u for u in recon if u.get("history")][:max_units]
    if not units:
        return None
    plt = _plt()
    cols = min(6, len(units))
    rows = math.ceil(len(units) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    colors = {"block": "#4477aa", "inner": "#ee6677", "round": "#999933"}
    for ax, u in zip(axes.flat, units):
        it = [h["iter"] for h in u["history"]]
        for term, color in colors.items():
            v = [h[term] for h in u["history"]]
            if any(x > 0 for x in v):
                ax.plot(it, [max(x, 1e-12) for x in v], color=color, lw=1.2, label=term)
        ax.set_yscale("log")
        before, after = u.get("before"), u.get("after")
        ratio = f" {after / before:.2f}x" if before and after is not None else ""
        ax.set_title(f"{u['name']}{ratio}", fontsize=6)
        ax.tick_params(labelsize=5)
    for ax in list(axes.flat)[len(units):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.suptitle("reconstruction loss by term (title: output error after / before on the calibration set)",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _png(fig)


def layer_errors_png(rows: list[dict]) -> bytes | None:
    if not rows:
        return None
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(7.0, 0.16 * len(rows)), 3.4))
    x = np.arange(len(rows))
    w = 0.28
    for k, (key, color) in enumerate((("weight", "#4477aa"), ("input", "#ccbb44"), ("output", "#ee6677"))):
        v = [max(r[key], 1e-9) for r in rows]
        ax.bar(x + (k - 1) * w, v, width=w, color=color, label=f"{key} relative MSE")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], rotation=90, fontsize=5)
    ax.legend(fontsize=7)
    ax.set_title("per-layer quantization error, forward order (one calibration batch)", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def samples_png(fp: torch.Tensor, q: torch.Tensor, label: str, per_row: int = 16) -> bytes:
    from .eval.images import make_grid

    plt = _plt()
    n = min(len(fp), len(q))
    rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(2, 1, figsize=(per_row * 0.55, 2 * rows * 0.6 + 0.6))
    for ax, (name, imgs) in zip(axes, (("full precision", fp[:n]), (label, q[:n]))):
        grid = make_grid(imgs, nrow=per_row)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("same initial noise in the same position", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict) and {"mean", "std"} <= set(v):
        return f"{v['mean']:.4g} ± {v['std']:.2g}"
    return html.escape(str(v)) if not isinstance(v, (list, dict)) else html.escape(json.dumps(v))


def build_report(qdir: str | Path, fp_model: str | Path | None = None, num: int = 32, seed: int = 0,
                 device=None, engine: str = "int", progress: bool = False) -> Path:
    """Write DIR/report/{index.html, report.md, *.png}; returns the HTML path.

    fp_model: the full-precision pipeline (zoo name or directory) for the side-by-side
    samples; default the source recorded at quantization. num 0 skips sampling.
    """
    from .deploy.layout import is_quantized_dir
    from .deploy.load import read_quant_meta
    from .eval.metrics import psnr
    from .loading import load_pipeline, resolve_model_path
    from .sampling import generate
    from .utils import atomic_dir

    qdir = Path(qdir)
    if not is_quantized_dir(qdir):
        raise EdadmError(f"{qdir} is not an edadm quantized directory (no unet/edadm_quant.json)")
    if not isinstance(num, int) or num < 0:
        raise EdadmError(f"number of report samples must be >= 0, got {num!r}")
    meta = read_quant_meta(qdir)
    report = meta.get("report") if isinstance(meta.get("report"), dict) else {}
    cfg = meta.get("resolved_config") or meta["config"]  # the values it ran with
    label = f"{cfg.get('method')} W{cfg.get('weight_bits')}A{cfg.get('act_bits')}"
    figures: dict[str, bytes | None] = {
        "allocation": allocation_png(report, f"{cfg.get('method')}: {cfg.get('calib', {}).get('strategy')} allocation"),
        "loss_curves": loss_curves_png(report.get("recon") or []),
        "layer_errors": layer_errors_png(report.get("layer_errors") or []),
    }
    metrics: dict[str, object] = {}
    notes: list[str] = []
    source = fp_model or report.get("source")
    if num and source is None:
        notes.append("No samples: the full-precision model is unknown (pass --fp MODEL).")
    elif num:
        try:
            resolve_model_path(source)
        except EdadmError as exc:
            raise EdadmError(f"full-precision model for the report: {exc}") from exc
        t0 = time.time()
        fp = load_pipeline(source, device=device)
        qp = load_pipeline(qdir, device=device, engine=engine)
        fp_imgs = generate(fp, num, seed=seed, progress=progress)
        q_imgs = generate(qp, num, seed=seed, progress=progress)
        figures["samples"] = samples_png(fp_imgs, q_imgs, f"{label} ({engine} engine)")
        metrics["PSNR vs FP, same noise (dB)"] = psnr(q_imgs, fp_imgs)
        metrics["samples / seed"] = f"{num} / {seed}"
        from .eval.domains import domain_metrics, domain_of

        d = domain_of(q_imgs.shape[1:])
        if d is not None and num >= 2:
            for name, imgs in (("FP", fp_imgs), ("quantized", q_imgs)):
                m = domain_metrics(imgs)
                metrics[f"FID-{d.name} {name} ({num} samples; noisy below ~1000)"] = m[d.key]
                metrics[f"IS-{d.name} {name}"] = m[f"is_{d.name}"]
        metrics["report sampling seconds"] = round(time.time() - t0, 1)
    for f in sorted(qdir.glob("metrics*.json")):
        try:
            data = json.loads(f.read_text())
            for k, v in (data.get("summary") or {}).items():
                metrics[f"{f.name}: {k}"] = v
        except (OSError, json.JSONDecodeError, AttributeError):
            notes.append(f"{f.name} is not a readable metrics file; skipped.")

    settings = {"method": cfg.get("method"), "weights / activations": f"W{cfg.get('weight_bits')}A{cfg.get('act_bits')}",
                "attention bits": cfg.get("attn_bits"), "calibration": cfg.get("calib"),
                "reconstruction": cfg.get("recon"), "split shortcut": cfg.get("split_shortcut"),
                "denoiser": meta.get("unet_class"), "seconds": report.get("seconds"),
                "peak memory (MB)": report.get("peak_memory_mb"), "source": source}
    recon_rows = [(u["name"], u.get("kind"), u.get("before"), u.get("after"), u.get("seconds"), u.get("fallback"))
                  for u in report.get("recon") or []]
    captions = {"allocation": "Calibration samples per sampler step",
                "loss_curves": "Reconstruction loss curves by term",
                "layer_errors": "Per-layer quantization error",
                "samples": "Full precision vs quantized, same noise"}
    title = f"edadm report: {qdir.name} ({label})"

    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
         "img{max-width:100%;border:1px solid #eee}code{font-size:12px}</style></head><body>",
         f"<h1>{html.escape(title)}</h1>"]
    md = [f"# {title}", ""]
    h.append("<h2>Settings</h2><table>" + "".join(f"<tr><th>{html.escape(k)}</th><td><code>{_fmt(v)}</code></td></tr>"
                                                  for k, v in settings.items()) + "</table>")
    md += ["## Settings", "", "| | |", "|---|---|"] + [f"| {k} | `{json.dumps(v, default=str)}` |" for k, v in settings.items()]
    h.append("<h2>Metrics</h2>")
    md += ["", "## Metrics", ""]
    if metrics:
        h.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in metrics.items())
                 + "</table>")
        md += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    for n in notes or ([] if metrics else ["No metrics."]):
        h.append(f"<p>{html.escape(n)}</p>")
        md.append(n)
    for key, png in figures.items():
        h.append(f"<h2>{captions[key]}</h2>")
        md += ["", f"## {captions[key]}", ""]
        if png is None:
            why = {"loss_curves": "no reconstruction (method without it)", "allocation": "no calibration record",
                   "layer_errors": "no per-layer errors recorded"}[key]
            h.append(f"<p>None: {why}.</p>")
            md.append(f"None: {why}.")
            continue
        h.append(f"<img alt='{key}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        md.append(f"![{key}]({key}.png)")
    if recon_rows:
        h.append("<h2>Reconstruction per unit</h2><table><tr><th>unit</th><th>kind</th><th>output MSE before</th>"
                 "<th>after</th><th>s</th><th>fallback</th></tr>"
                 + "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in recon_rows) + "</table>")
        md += ["", "## Reconstruction per unit", "", "| unit | kind | before | after | s | fallback |", "|---|---|---|---|---|---|"]
        md += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in recon_rows]
    h.append("</body></html>")

    out = qdir / REPORT_DIR
    with atomic_dir(out) as tmp:
        (tmp / "index.html").write_text("\n".join(h))
        (tmp / "report.md").write_text("\n".join(md) + "\n")
        for key, png in figures.items():
            if png is not None:
                (tmp / f"{key}.png").write_bytes(png)
    return out / "index.html"
