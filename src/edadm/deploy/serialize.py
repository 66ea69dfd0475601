"""Save and load quantized pipelines.

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

from .. import __version__
from ..config import QuantConfig
from ..errors import EdadmError
from ..pipeline import QUANT_FILE, SAMPLING_FILE, quiet_diffusers, read_sampling_defaults, sampling_defaults
from ..quant.modules import LayerSpec, QuantMixin
from ..quant.wrap import quant_modules, wrap_model
from ..utils import atomic_dir
from .packing import pack_codes, unpack_codes

log = logging.getLogger("edadm")

FORMAT_VERSION = 1
TENSOR_FILE = "edadm_quant.safetensors"


def quantized_state(unet: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors, layer table) for a fake-quantized denoiser: integer codes for weights."""
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    qnames = dict(quant_modules(unet))
    skip = set()
    for name, mod in qnames.items():
        wq = mod.weight_quantizer
        if not bool(wq.initialized):
            raise EdadmError(f"layer {name} has no calibrated weight range; quantize before saving")
        q = wq.quantize_int(mod.weight.detach().float())
        codes = (q - wq.qmin).to(torch.uint8)
        tensors[f"{name}.weight.codes"] = pack_codes(codes.cpu(), wq.bits).contiguous()
        tensors[f"{name}.weight.scale"] = wq.scale.detach().float().cpu().contiguous()
        tensors[f"{name}.weight.zero_point"] = wq.zero_point.detach().float().cpu().contiguous()
        entry = {"type": type(mod).__name__, "spec": mod.spec.to_dict(), "weight_shape": list(mod.weight.shape),
                 "qmin": wq.qmin}
        aq = mod.act_quantizer
        if aq is not None:
            if not bool(aq.initialized):
                raise EdadmError(f"layer {name} has no calibrated activation range; quantize before saving")
            tensors[f"{name}.input.scale"] = aq.scale.detach().float().cpu().contiguous()
            tensors[f"{name}.input.zero_point"] = aq.zero_point.detach().float().cpu().contiguous()
        layers[name] = entry
        skip.update({f"{name}.{k}" for k, _ in mod.named_parameters(recurse=True) if k != "bias"})
        skip.update({f"{name}.{k}" for k, _ in mod.named_buffers(recurse=True)})
    for k, v in unet.state_dict().items():
        if k not in skip:
            tensors[k] = v.detach().cpu().contiguous()
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
        + ", ".join(f"`{p}`" for p in config.keep_8bit) + ".",
        f"- Storage: integer weight codes in `unet/{TENSOR_FILE}` (packed two per byte at <= 4 bits).",
        f"- Execution: {engine_note}",
        f"- Calibration time (s): {r.get('seconds', {})}; machine peak RSS {r.get('peak_memory_mb')} MB.",
        "",
        "Load with `edadm.load(DIR)` or sample with `edadm sample DIR`.",
        "",
    ]
    return "\n".join(lines)


def save_quantized(pipe, out: str | Path, config: QuantConfig | None = None, report: dict | None = None,
                   extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a quantized pipeline directory atomically (never half-written)."""
    from safetensors.torch import save_file

    if config is None:
        if not hasattr(pipe, "_edadm_quant"):
            raise EdadmError("pipeline is not quantized; run edadm.quantize first")
        config, rep = pipe._edadm_quant
        report = report or rep.__dict__
    unet = pipe.unet
    tensors, layers = quantized_state(unet)
    defaults = sampling_defaults(pipe)
    out = Path(out)
    with atomic_dir(out) as tmp:
        index = {"_class_name": type(pipe).__name__, "_diffusers_version": _diffusers_version()}
        for cname, comp in pipe.components.items():
            if comp is None:
                index[cname] = [None, None]
                continue
            lib = type(comp).__module__.split(".")[0]
            index[cname] = [lib, type(comp).__name__]
            if cname != "unet":
                comp.save_pretrained(tmp / cname)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (tmp / SAMPLING_FILE).write_text(json.dumps({"steps": defaults.steps, "eta": defaults.eta}))
        (tmp / "unet").mkdir()
        unet.save_config(tmp / "unet")
        meta = {"format_version": FORMAT_VERSION, "edadm_version": __version__, "unet_class": type(unet).__name__,
                "config": config.to_dict(), "layers": layers, "report": report}
        (tmp / "unet" / QUANT_FILE).write_text(json.dumps(meta, indent=2, default=str))
        save_file(tensors, str(tmp / "unet" / TENSOR_FILE), metadata={"format": "edadm", "version": str(FORMAT_VERSION)})
        (tmp / "README.md").write_text(model_card(config, report, type(unet).__name__,
                                                  "fake quantization in float (integer kernels: see the int engine)"))
        for rel, data in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def read_quant_meta(path: str | Path) -> dict:
    f = Path(path) / "unet" / QUANT_FILE
    try:
        meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdadmError(f"cannot read {f}: {exc}") from exc
    if not isinstance(meta, dict) or "layers" not in meta or "config" not in meta:
        raise EdadmError(f"{f} is not an edadm quantization file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise EdadmError(f"{f} has format version {meta['format_version']}, newer than this edadm supports ({FORMAT_VERSION})")
    return meta


def load_quantized_unet(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild the fake-quantized denoiser from integer codes, without its FP checkpoint."""
    import diffusers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_quant_meta(path)
    config = QuantConfig.from_dict(meta["config"])
    cls = getattr(diffusers, meta.get("unet_class", ""), None)
    if cls is None:
        raise EdadmError(f"{path}: unknown denoiser class {meta.get('unet_class')!r}")
    try:
        unet_config = cls.load_config(str(path / "unet"))
    except Exception as exc:
        raise EdadmError(f"{path}/unet: cannot read config.json ({exc})") from exc
    try:
        tensors = load_file(str(path / "unet" / TENSOR_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EdadmError(f"{path}/unet/{TENSOR_FILE}: cannot read tensors ({str(exc).splitlines()[0]})") from exc
    with torch.device("meta"):
        unet = cls.from_config(unet_config)
    plan = {name: LayerSpec(**entry["spec"]) for name, entry in meta["layers"].items()}
    try:
        wrap_model(unet, plan=plan)
    except (AttributeError, KeyError) as exc:
        raise EdadmError(f"{path}: layer table does not match the {cls.__name__} config ({exc})") from exc
    state = {}
    for name, entry in meta["layers"].items():
        mod: QuantMixin = unet.get_submodule(name)
        spec = mod.spec
        try:
            codes = unpack_codes(tensors.pop(f"{name}.weight.codes"), spec.weight_bits, tuple(entry["weight_shape"]))
            scale = tensors.pop(f"{name}.weight.scale")
            zp = tensors.pop(f"{name}.weight.zero_point")
        except KeyError as exc:
            raise EdadmError(f"{path}: tensor {exc} missing from {TENSOR_FILE}") from exc
        view = (-1,) + (1,) * (codes.dim() - 1)
        w = (codes.float() + entry["qmin"] - zp.reshape(view)) * scale.reshape(view)
        state[f"{name}.weight"] = w
        state[f"{name}.weight_quantizer.scale"] = scale
        state[f"{name}.weight_quantizer.zero_point"] = zp
        state[f"{name}.weight_quantizer.initialized"] = torch.tensor(True)
        if mod.act_quantizer is not None:
            state[f"{name}.act_quantizer.scale"] = tensors.pop(f"{name}.input.scale")
            state[f"{name}.act_quantizer.zero_point"] = tensors.pop(f"{name}.input.zero_point")
            state[f"{name}.act_quantizer.initialized"] = torch.tensor(True)
    state.update(tensors)
    try:
        unet.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise EdadmError(f"{path}: tensors do not match the model ({str(exc).splitlines()[0]})") from exc
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.eval()
    return unet.to(device), config, meta


def load_quantized(path: str | Path, device: torch.device | str = "cpu", engine: str = "fake"):
    """Load a quantized pipeline directory as a diffusers pipeline."""
    from diffusers import DiffusionPipeline

    if engine != "fake":
        raise EdadmError(f"engine {engine!r} is not available; use --engine fake")
    path = Path(path)
    quiet_diffusers()
    unet, config, meta = load_quantized_unet(path, device)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), unet=unet, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:
        raise EdadmError(f"cannot load pipeline components from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    pipe.set_progress_bar_config(disable=True)
    pipe._edadm_sampling = read_sampling_defaults(path)
    pipe._edadm_quant = (config, meta.get("report"))
    return pipe.to(device)
