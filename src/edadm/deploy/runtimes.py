"""The exported denoiser on ONNX Runtime or OpenVINO, inside edadm's scheduler loop.

`load_pipeline(QDIR, engine="onnxruntime" | "openvino")` loads the quantized directory, exports
its denoiser once (QDIR/onnx/denoiser.onnx, reused while it is newer than the quantized
weights) and puts a `RuntimeDenoiser` in the pipeline's place: sampling, evaluation and the
CLI then measure quality and speed on the runtime a user deploys.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..errors import EdadmError

log = logging.getLogger("edadm")
from .engines import RUNTIME_ENGINES  # noqa: E402

_EXTRA = {"onnxruntime": ("onnxruntime", "edadm[onnx]"), "openvino": ("openvino", "edadm[openvino]")}


def _require(engine: str) -> None:
    import importlib.util

    for mod in ("onnx", _EXTRA[engine][0]):
        if importlib.util.find_spec(mod) is None:
            raise EdadmError(f"--engine {engine} needs the {mod} package: pip install '{_EXTRA[engine][1]}'")


def needs_overflow_fix() -> bool:
    """Whether the runtimes here need the overflow-fix export: without int32 dot products (VNNI /
    AMX) their u8 x s8 kernels sum pairs in int16, which full-range 8-bit weights overflow
    (measured: docs/deployment.md, bench/results/export/agreement_avx2.md)."""
    from .kernels import isa_info

    return not isa_info()["int32_dot"]


def export_name(overflow_fix: bool) -> str:
    return "denoiser-overflow-fix.onnx" if overflow_fix else "denoiser.onnx"


def cached_export(qdir: Path, pipe, overflow_fix: bool = False) -> Path:
    """QDIR/onnx/denoiser.onnx (denoiser-overflow-fix.onnx), exported now unless a current one is there."""
    from .layout import ONNX_DIR, quant_subdir
    from .onnx_export import export_onnx

    out = qdir / ONNX_DIR / export_name(overflow_fix)
    weights = max((f.stat().st_mtime for f in (qdir / quant_subdir(qdir)).glob("*") if f.is_file()), default=0.0)
    if out.is_file() and out.stat().st_mtime >= weights:
        return out
    try:
        out.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise EdadmError(f"cannot write the ONNX export beside {qdir} ({exc}); run edadm export QDIR --out FILE "
                         "on a writable copy") from exc
    info = export_onnx(pipe, out, overflow_fix=overflow_fix)
    log.info("exported the denoiser to %s (%d integer weight initializers)", out, info["folded_weights"])
    return out


class RuntimeDenoiser(nn.Module):
    """A denoiser-shaped wrapper: model(sample, timestep, **kw).sample, run by a runtime."""

    def __init__(self, run, names: list[str], config, engine: str, path: Path):
        super().__init__()
        self._run, self.input_names, self.config, self.engine, self.path = run, names, config, engine, path
        self.register_buffer("_anchor", torch.zeros(()))  # .device / .to() behave like a module's

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, sample: torch.Tensor, timestep, **kw):
        n = sample.shape[0]
        t = torch.as_tensor(timestep).reshape(-1).to(torch.long)
        feeds = {"sample": sample.detach().float().cpu().numpy(),
                 "timestep": (t.expand(n) if t.numel() == 1 else t).cpu().numpy()}
        for name in self.input_names[2:]:
            if name not in kw:
                raise EdadmError(f"the exported denoiser needs {name}")
            v = kw[name]
            feeds[name] = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
            if name == "class_labels":
                feeds[name] = feeds[name].astype(np.int64)
            else:
                feeds[name] = feeds[name].astype(np.float32)
        out = torch.from_numpy(np.ascontiguousarray(self._run(feeds))).to(sample.device)
        return SimpleNamespace(sample=out)


def runtime_session(path: Path, engine: str, threads: int | None = None):
    """(run(feeds) -> first output array, what the runtime reports about itself)."""
    _require(engine)
    threads = threads or torch.get_num_threads()
    if engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return (lambda feeds: sess.run(None, feeds)[0]), {"onnxruntime": ort.__version__}
    import openvino as ov

    core = ov.Core()
    # f32 for the layers edadm keeps in float: the simulation's numbers (bf16 would change them)
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    return (lambda feeds: compiled(feeds)[0]), {"openvino": ov.__version__, "kernels": openvino_kernels(compiled)}


def openvino_kernels(compiled) -> dict[str, int]:
    """How many convolutions / fully connected / matmuls OpenVINO runs at which precision."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if kind in ("Convolution", "FullyConnected", "MatMul"):
            prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            counts[f"{kind} {prec}"] = counts.get(f"{kind} {prec}", 0) + 1
    return dict(sorted(counts.items()))


def load_runtime(path: Path, engine: str, device):
    """The quantized directory `path` as a pipeline whose denoiser runs on `engine`."""
    from ..model.families import denoiser_name, get_denoiser
    from .load import load_quantized

    if engine not in RUNTIME_ENGINES:
        raise EdadmError(f"unknown runtime {engine!r}; choose from {', '.join(RUNTIME_ENGINES)}")
    _require(engine)
    if torch.device(device).type != "cpu":
        raise EdadmError(f"--engine {engine} runs on the CPU here; use --device cpu (on NVIDIA GPUs see "
                         "docs/deployment.md: TensorRT from the same export)")
    path = Path(path)
    pipe = load_quantized(path, device="cpu", engine="fake")
    onnx_path = cached_export(path, pipe, overflow_fix=needs_overflow_fix())
    from .onnx_export import example_inputs

    den = get_denoiser(pipe)
    names, _ = example_inputs(den, 1)
    run, info = runtime_session(onnx_path, engine)
    wrapper = RuntimeDenoiser(run, names, den.config, engine, onnx_path)
    wrapper.runtime_info = info
    # diffusers' setattr would register it as a component
    object.__setattr__(pipe.pipe, denoiser_name(pipe), wrapper)
    pipe.engine = engine
    log.info("denoiser on %s (%s)%s", engine, onnx_path, f": {info['kernels']}" if info.get("kernels") else "")
    return pipe
