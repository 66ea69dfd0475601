"""Load a quantized directory: one reader of the layer table and tensors feeding both torch
engines (the fake-quant simulation and the integer engine)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import QuantConfig
from ..recipes import resolve
from ..errors import EdadmError
from ..quant.modules import QuantMixin, int_kernel_problem
from ..quant.wrap import spec_from_dict, wrap_model
from ..state import Pipeline, QuantReport
from ..utils import release_free_memory
from .layout import (FORMAT_VERSION, NONPERSISTENT, QUANT_FILE, TENSOR_FILE, check_component_libraries, quant_subdir,
                     quiet_diffusers, recorded_sampling, restore_scheduler, tensor_part)
from .packing import unpack_codes

log = logging.getLogger("edadm")





def saved_config(meta: dict) -> QuantConfig:
    """The config a directory was quantized with: what the user set, resolved by today's
    recipes; if those resolve it differently from what ran (a recipe changed since), what
    ran (resolved_config), so the config always describes the stored model."""
    config = QuantConfig.from_dict(meta["config"])
    ran = meta.get("resolved_config")
    if isinstance(ran, dict) and config.resolved_dict() != ran:
        log.info("the recipes now resolve this directory's config differently; using the values it ran with")
        config = QuantConfig.from_dict(ran)
    return resolve(config)


def read_quant_meta(path: str | Path) -> dict:
    f = Path(path) / (quant_subdir(path) or "unet") / QUANT_FILE
    try:
        meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdadmError(f"cannot read {f}: {exc}") from exc
    if not isinstance(meta, dict) or "layers" not in meta or "config" not in meta:
        raise EdadmError(f"{f} is not an edadm quantization file")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise EdadmError(f"{f}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise EdadmError(f"{f} has format version {version}, newer than this edadm supports ({FORMAT_VERSION})")
    _check_layer_table(meta, f)
    return meta


def _check_layer_table(meta: dict, f: Path) -> None:
    """The structure the loaders rely on; values are checked where they are used."""
    if not isinstance(meta["config"], dict):
        raise EdadmError(f"{f}: 'config' must be an object")
    if not isinstance(meta.get("unet_class"), str):
        raise EdadmError(f"{f}: 'unet_class' must be a class name")
    if not isinstance(meta.get("report", {}), (dict, type(None))):
        raise EdadmError(f"{f}: 'report' must be an object")
    layers = meta["layers"]
    if not isinstance(layers, dict):
        raise EdadmError(f"{f}: 'layers' must be an object")
    for name, e in layers.items():
        if not isinstance(e, dict) or not isinstance(e.get("type"), str) or not isinstance(e.get("spec"), dict):
            raise EdadmError(f"{f}: layer {name!r} needs a 'type' and a 'spec' object")
        if e["type"] == "attention":
            continue
        parts = e.get("parts")
        if (not isinstance(parts, list) or not 1 <= len(parts) <= 2
                or not all(isinstance(p, dict) and isinstance(p.get("qmin"), int) and isinstance(p.get("shape"), list)
                           and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in p["shape"])
                           for p in parts)):
            raise EdadmError(f"{f}: layer {name!r} has a malformed 'parts' list")


class _TensorReader:
    """The tensors of one safetensors file, each read when it is popped.

    Read with pread into private memory, not served from a file mapping: a loaded model then
    holds no mapping of the file (mapped pages that were read count in its resident memory
    for as long as any tensor views them), and only one layer's codes are in memory at a
    time while the integer weights are built. Older safetensors without the pread backend
    fall back to its memory map. A dict-like subset: pop, keys, [] (for dict.update), in."""

    def __init__(self, file: Path):
        from safetensors import safe_open

        try:
            self._f = safe_open(str(file), framework="pt", backend="pread")
        except TypeError:  # pragma: no cover - safetensors < 0.8
            self._f = safe_open(str(file), framework="pt")
        self._keys = dict.fromkeys(self._f.keys())

    def pop(self, key: str, *default):
        if key not in self._keys:
            if default:
                return default[0]
            raise KeyError(key)
        del self._keys[key]
        return self._f.get_tensor(key)

    def keys(self) -> list[str]:
        return list(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._f.get_tensor(key)

    def __contains__(self, key: str) -> bool:
        return key in self._keys


def _read_quant_files(path: Path):
    import diffusers
    from safetensors import SafetensorError

    meta = read_quant_meta(path)
    config = saved_config(meta)
    cls = getattr(diffusers, meta.get("unet_class", ""), None)
    if cls is None:
        raise EdadmError(f"{path}: unknown denoiser class {meta.get('unet_class')!r}")
    sub = quant_subdir(path) or "unet"
    try:
        unet_config = cls.load_config(str(path / sub))
    except Exception as exc:
        raise EdadmError(f"{path}/{sub}: cannot read config.json ({exc})") from exc
    try:
        tensors = _TensorReader(path / sub / TENSOR_FILE)
    except (SafetensorError, OSError, ValueError) as exc:
        raise EdadmError(f"{path}/{sub}/{TENSOR_FILE}: cannot read tensors ({str(exc).splitlines()[0]})") from exc
    with torch.device("meta"):
        unet = cls.from_config(unet_config)
    return meta, config, cls, unet, tensors


def _wrap_from_meta(unet, meta: dict, path: Path, cls, attention_only: bool = False) -> None:
    try:
        plan = {name: spec_from_dict(entry["spec"]) for name, entry in meta["layers"].items()
                if not attention_only or entry.get("type") == "attention"}
        wrap_model(unet, plan=plan)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EdadmError(f"{path}: layer table does not match the {cls.__name__} config ({exc})") from exc


def _layer_tensors(tensors: dict, name: str, entry: dict, spec) -> tuple[list, list, list]:
    """Per weight part: (signed codes int16, scale, zero point); per input part: (scale, zero point)."""
    weights, acts = [], []
    for i, part in enumerate(entry["parts"]):
        key = f"{name}.{tensor_part('weight', i)}"
        codes = unpack_codes(tensors.pop(f"{key}.codes"), spec.weight_bits, tuple(part["shape"]))
        weights.append((codes.to(torch.int16) + part["qmin"], tensors.pop(f"{key}.scale"),
                        tensors.pop(f"{key}.zero_point")))
    if spec.act_bits:
        for i in range(len(entry["parts"])):
            key = f"{name}.{tensor_part('input', i)}"
            acts.append((tensors.pop(f"{key}.scale"), tensors.pop(f"{key}.zero_point")))
    return weights, acts


def _load_state(unet, state: dict, path: Path) -> None:
    extra = {k[len(NONPERSISTENT):]: state.pop(k) for k in [k for k in state if k.startswith(NONPERSISTENT)]}
    try:
        unet.load_state_dict(state, strict=True, assign=True)
        for k, v in extra.items():
            owner, _, leaf = k.rpartition(".")
            mod = unet.get_submodule(owner)
            if leaf not in mod._buffers:
                raise RuntimeError(f"unexpected buffer {k}")
            mod._buffers[leaf] = v
    except (RuntimeError, AttributeError) as exc:
        raise EdadmError(f"{path}: tensors do not match the model ({str(exc).splitlines()[0]})") from exc
    released = {f"{m}.w{i}" for m, mod in unet.named_modules() if getattr(mod, "released", False)
                for i in range(mod.num_parts)}  # integer weights held prepacked by oneDNN only
    missing = [n for n, b in unet.named_buffers() if b.is_meta and n not in released]
    if missing:
        raise EdadmError(f"{path}: buffer(s) {', '.join(missing[:3])} not stored in {TENSOR_FILE}: re-export it")
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.eval()


def load_quantized_unet(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild the fake-quantized denoiser (the simulation) from integer codes, without its
    FP checkpoint."""
    path = Path(path)
    meta, config, cls, unet, tensors = _read_quant_files(path)
    _wrap_from_meta(unet, meta, path, cls)
    state = {}
    for name, entry in meta["layers"].items():
        if entry.get("type") == "attention":
            continue
        mod: QuantMixin = unet.get_submodule(name)
        try:
            weights, acts = _layer_tensors(tensors, name, entry, mod.spec)
        except KeyError as exc:
            raise EdadmError(f"{path}: tensor {exc} missing from {TENSOR_FILE}") from exc
        parts = []
        for i, (codes, scale, zp) in enumerate(weights):
            view = (-1,) + (1,) * (codes.dim() - 1)
            parts.append((codes.float() - zp.reshape(view)) * scale.reshape(view))
            qname = "weight_quantizer" if i == 0 else f"weight_quantizer{i + 1}"
            state.update({f"{name}.{qname}.scale": scale, f"{name}.{qname}.zero_point": zp,
                          f"{name}.{qname}.initialized": torch.tensor(True)})
        for i, (scale, zp) in enumerate(acts):
            qname = "act_quantizer" if i == 0 else f"act_quantizer{i + 1}"
            state.update({f"{name}.{qname}.scale": scale, f"{name}.{qname}.zero_point": zp,
                          f"{name}.{qname}.initialized": torch.tensor(True)})
        state[f"{name}.weight"] = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    state.update(tensors)
    _load_state(unet, state, path)
    return unet.to(device), config, meta


def load_int_unet(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """Rebuild the denoiser for integer execution straight from the stored codes: every
    quantized Conv2d / Linear becomes an IntLayer holding int8 weights; no float copy of a
    quantized weight is made (except for layers the method keeps in float input)."""
    from ..quant.wrap import set_submodule
    from .intengine import build_int_layer, freeze_attention_quantizers, prepare_int

    path = Path(path)
    meta, config, cls, unet, tensors = _read_quant_files(path)
    _wrap_from_meta(unet, meta, path, cls, attention_only=True)
    # On the CPU each layer is prepacked for oneDNN as soon as it is built and drops its plain
    # int8 weights: the loaded model holds one copy of the integer weights, and the load
    # never more than one layer's second copy (elsewhere the layers are prepared after the move)
    early = torch.device(device).type == "cpu"
    state = {}
    for name, entry in meta["layers"].items():
        if entry.get("type") == "attention":
            continue
        try:
            spec = spec_from_dict(entry["spec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EdadmError(f"{path}: layer {name}: bad spec ({exc})") from exc
        why = int_kernel_problem(spec)  # decided at quantize time (quant.modules), obeyed here
        if why:
            raise EdadmError(f"{path}: layer {name} has {why}; use --engine fake")
        try:
            mod = unet.get_submodule(name)
            weights, acts = _layer_tensors(tensors, name, entry, spec)
            bias = tensors.pop(f"{name}.bias", None)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise EdadmError(f"{path}: layer {name}: {exc} missing or inconsistent in {TENSOR_FILE}") from exc
        layer = build_int_layer(name, mod, weights, acts or None, spec.act_bits, spec.act_symmetric, bias,
                                prepare=early)
        if layer is None:  # the spec allows int8, so the stored codes are corrupt
            raise EdadmError(f"{path}: layer {name}: weight codes minus zero point exceed int8 (inconsistent "
                             f"{TENSOR_FILE})")
        if early:
            layer.release_int_weights()
        set_submodule(unet, name, layer)
        state.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    state.update(tensors)
    _load_state(unet, state, path)
    freeze_attention_quantizers(unet)
    unet.to(device=device, dtype=dtype)  # float backends rebuild their weights in dtype, once
    prepare_int(unet, release=True)
    release_free_memory()  # the per-layer temporaries of the load, back to the OS
    return unet, config, meta


def default_dtype(device: torch.device | str, engine: str) -> torch.dtype | None:
    """The denoiser's float dtype when none is asked for: float16 for the integer engine on
    CUDA (its layers run fp16 tensor-core math on the codes' values, docs/kernels.md "CUDA"),
    else the stored one (float32)."""
    return torch.float16 if engine == "int" and torch.device(device).type == "cuda" else None


def load_quantized(path: str | Path, device: torch.device | str = "cpu", engine: str = "int",
                   dtype: torch.dtype | str | None = "auto") -> Pipeline:
    """Load a quantized pipeline directory (engine "int": integer kernels, "fake": the float
    simulation; the same default as edadm.load). dtype: the denoiser's float dtype ("auto":
    `default_dtype`; None: as stored)."""
    from diffusers import DiffusionPipeline

    from .engines import TORCH_ENGINES as ENGINES

    if engine not in ENGINES:
        raise EdadmError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    path = Path(path)
    quiet_diffusers()
    check_component_libraries(path)
    if dtype == "auto":
        dtype = default_dtype(device, engine)
    try:
        if engine == "int":
            unet, config, meta = load_int_unet(path, device, dtype)
        else:
            unet, config, meta = load_quantized_unet(path, device)
            if dtype is not None:
                unet.to(dtype)
    except EdadmError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        # the layer table and the tensors passed the structural checks but disagree with
        # each other or with the architecture (an edited or mixed-up directory)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise EdadmError(f"{path}: quantized files are inconsistent ({type(exc).__name__}: {first})") from exc
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), **{quant_subdir(path) or "unet": unet},
                                                 local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:
        raise EdadmError(f"cannot load pipeline components from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    pipe.set_progress_bar_config(disable=True)
    restore_scheduler(pipe, path)
    # source: save() of an int-engine pipeline re-reads the codes from there
    from ..output_correction import read_correction

    return Pipeline(pipe=pipe.to(device), sampling=recorded_sampling(pipe, path), config=config,
                    report=QuantReport.from_dict(meta.get("report")), source=path, engine=engine,
                    correction=read_correction(path))
