"""Export a quantized pipeline: its directory (integer codes, scales, JSON, model card).

Layout (diffusers-like; the pipeline's other components are saved by their own
`save_pretrained`):

    DIR/model_index.json, DIR/scheduler/...     as diffusers writes them
    DIR/edadm_sampling.json                      sampler steps / eta the model was calibrated for
    DIR/unet/config.json                         the denoiser's diffusers config
    DIR/unet/edadm_quant.json                    versioned: quant config, per-layer specs, report
    DIR/unet/edadm_quant.safetensors             integer weight codes + scales, float rest
    DIR/README.md                                model card

Weight codes are unsigned: u = q - qmin, stored as uint8 (packed two per byte at <= 4 bits);
w = (u + qmin - zero_point) * scale per output channel.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..version import __version__
from ..config import QuantConfig
from ..recipes import resolve
from ..errors import EdadmError
from ..model.families import denoiser_name
from ..quant.attention import has_attention_quantizers
from ..quant.wrap import quant_modules
from ..state import as_pipeline, diffusers_pipeline
from ..utils import atomic_dir
from .layout import FORMAT_VERSION, NONPERSISTENT, QUANT_FILE, SAMPLING_FILE, TENSOR_FILE, tensor_part
from .load import load_quantized_unet
from .packing import pack_codes

log = logging.getLogger("edadm")





def quantized_state(unet: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors, layer table) for a fake-quantized denoiser: integer codes for weights."""
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    skip = set()
    for name, mod in quant_modules(unet):
        entry = {"type": type(mod).__name__, "spec": mod.spec.to_dict(), "weight_shape": list(mod.weight.shape),
                 "parts": []}
        for i, (wq, sl) in enumerate(mod.weight_quantizers()):
            if not bool(wq.initialized):
                raise EdadmError(f"layer {name} has no calibrated weight range; quantize before saving")
            w = mod.weight.detach()[:, sl].float()
            codes = (wq.quantize_int(w) - wq.qmin).to(torch.uint8)
            key = f"{name}.{tensor_part('weight', i)}"
            tensors[f"{key}.codes"] = pack_codes(codes.cpu(), wq.bits).contiguous()
            tensors[f"{key}.scale"] = wq.scale.detach().float().cpu().contiguous()
            tensors[f"{key}.zero_point"] = wq.zero_point.detach().float().cpu().contiguous()
            entry["parts"].append({"shape": list(w.shape), "qmin": wq.qmin})
        for i, aq in enumerate(mod.act_quantizers()):
            if not bool(aq.initialized):
                raise EdadmError(f"layer {name} has no calibrated activation range; quantize before saving")
            key = f"{name}.{tensor_part('input', i)}"
            tensors[f"{key}.scale"] = aq.scale.detach().float().cpu().contiguous()
            tensors[f"{key}.zero_point"] = aq.zero_point.detach().float().cpu().contiguous()
        layers[name] = entry
        skip.update({f"{name}.{k}" for k, _ in mod.named_parameters(recurse=True) if k != "bias"})
        skip.update({f"{name}.{k}" for k, _ in mod.named_buffers(recurse=True)})
    for name, mod in unet.named_modules():
        if has_attention_quantizers(mod):
            layers[name] = {"type": "attention", "spec": {"kind": "attention", "bits": mod.probs_quantizer.bits,
                                                         "symmetric": mod.q_quantizer.symmetric}}
    state = unet.state_dict()
    for k, v in state.items():
        if k not in skip:
            tensors[k] = v.detach().cpu().contiguous()
    # non-persistent buffers (DiT's fixed positional embedding): not in state_dict, and the
    # loader builds the model on the meta device, so they are stored too
    for k, v in unet.named_buffers():
        if k not in state and k not in skip:
            tensors[NONPERSISTENT + k] = v.detach().cpu().contiguous()
    return tensors, layers


def model_card(config: QuantConfig, report: dict | None, unet_class: str, engine_note: str) -> str:
    r = report or {}
    lines = [
        "---",
        "library_name: diffusers",
        "tags: [edadm, quantized, post-training-quantization, diffusion]",
        f"edadm_version: {__version__}",
        f"method: {config.method}",
        f"weight_bits: {config.weight_bits}",
        f"act_bits: {config.act_bits}",
        "---",
        f"# {unet_class} quantized with edadm ({config.method}, W{config.weight_bits}A{config.act_bits})",
        "",
        f"- Method: `{config.method}`; calibration strategy `{config.calib.strategy}`, "
        f"{config.calib.num_samples} samples from {config.calib.num_trajectories} full-precision trajectories "
        f"({r.get('steps', '?')} steps, eta {r.get('eta', '?')}).",
        f"- Weights: {config.weight_bits}-bit per output channel; activations: {config.act_bits}-bit per tensor, "
        "static scales shared by all timesteps. Layers kept at 8 bit: "
        + (", ".join(f"`{p}`" for p in config.keep_8bit) if config.keep_8bit is not None
           else "the denoiser family's (first time-embedding layer, output layer)") + ".",
        f"- Storage: integer weight codes in `unet/{TENSOR_FILE}` (`transformer/` for DiT; packed two per byte at <= 4 bits).",
        f"- Execution: {engine_note}",
        f"- Calibration time (s): {r.get('seconds', {})}; machine peak RSS {r.get('peak_memory_mb')} MB.",
        *([f"- Output correction: PTQD's per-step table in `edadm_correction.json`, fitted on "
           f"{config.correction_samples} held-out FP trajectories; applied by the sampler at the same steps and "
           "guidance (`--no-correction` samples without it)."] if config.output_correction == "ptqd" else []),
        "",
        "Load with `edadm.load(DIR)` or sample with `edadm sample DIR`.",
        "",
    ]
    return "\n".join(lines)


def save_quantized(pipe, out: str | Path, config: QuantConfig | None = None, report: dict | None = None,
                   extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a quantized pipeline directory atomically (never half-written)."""
    from safetensors.torch import save_file

    p = as_pipeline(pipe)
    if config is None:
        if not p.quantized:
            raise EdadmError("pipeline is not quantized; run edadm.quantize first (it returns the pipeline to save)")
        config, report = p.config, report or (p.report.to_dict() if p.report is not None else None)
    config = resolve(config)  # what ran (to_dict() of it is still what the user set)
    dname = denoiser_name(p)
    unet = getattr(p, dname)
    if not any(True for _ in quant_modules(unet)):
        source = p.source
        if source is None:
            raise EdadmError("the denoiser has no fake-quantized layers to save (quantize it, or load the "
                             "directory with engine='fake')")
        # an integer-engine or runtime pipeline: its codes are the source directory's; re-read them
        unet = load_quantized_unet(source, "cpu")[0]
    tensors, layers = quantized_state(unet)
    out = Path(out)
    with atomic_dir(out) as tmp:
        index = {"_class_name": type(diffusers_pipeline(p)).__name__, "_diffusers_version": _diffusers_version()}
        for cname, comp in p.components.items():
            if comp is None:
                index[cname] = [None, None]
                continue
            lib = type(comp).__module__.split(".")[0]
            index[cname] = [lib, type(comp).__name__]
            if cname != dname:
                comp.save_pretrained(tmp / cname)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (tmp / SAMPLING_FILE).write_text(json.dumps(p.sampling.to_dict()))
        if p.correction is not None:
            from ..output_correction import CORRECTION_FILE

            (tmp / CORRECTION_FILE).write_text(json.dumps(p.correction.to_dict()))
        (tmp / dname).mkdir()
        unet.save_config(tmp / dname)
        meta = {"format_version": FORMAT_VERSION, "edadm_version": __version__, "unet_class": type(unet).__name__,
                "config": config.to_dict(), "resolved_config": config.resolved_dict(), "layers": layers,
                "report": report}
        (tmp / dname / QUANT_FILE).write_text(json.dumps(meta, indent=2, default=str))
        save_file(tensors, str(tmp / dname / TENSOR_FILE), metadata={"format": "edadm", "version": str(FORMAT_VERSION)})
        (tmp / "README.md").write_text(model_card(config, report, type(unet).__name__,
                                                  "fake quantization in float (integer kernels: see the int engine)"))
        if report and report.get("counts"):
            from ..calib.plot import allocation_figure

            (tmp / "calibration").mkdir()
            (tmp / "calibration" / "counts.json").write_text(json.dumps(
                {"strategy": config.calib.strategy, "counts": report["counts"], "timesteps": report.get("timesteps"),
                 "details": report.get("allocation")}, indent=2))
            allocation_figure(report["counts"], report.get("timesteps") or [], tmp / "calibration" / "allocation.png",
                              title=f"{config.method}: {config.calib.strategy} allocation of "
                                    f"{sum(report['counts'])} samples", details=report.get("allocation"))
        for rel, data in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


