"""edadm: post-training quantization of diffusion models with EDA-DM, run on integer kernels."""
from .version import __version__  # noqa: E402

from .config import CalibConfig, QuantConfig  # noqa: E402
from .errors import EdadmError  # noqa: E402
from .state import Pipeline, SamplingSettings  # noqa: E402


def quantize(pipe, config: QuantConfig | None = None, progress: bool = True, trajectories=None):
    """Quantize the denoiser of `pipe` in place; returns the quantized Pipeline (.config,
    .report). See :func:`edadm.api.quantize`
    (`trajectories`: from :func:`edadm.api.calibration_trajectories`, to share one FP
    collection between settings)."""
    from .api import quantize as _q

    return _q(pipe, config, progress=progress, trajectories=trajectories)


def load(path, device=None, engine: str = "int", compile: bool = False, dtype="auto") -> Pipeline:
    """Load a zoo name, a diffusers directory or an edadm quantized directory as a Pipeline.

    engine (quantized directories): "int" integer kernels, "fake" the float simulation,
    "onnxruntime" / "openvino" the ONNX export on that runtime (docs/deployment.md); compile: run the denoiser under torch.compile, in bf16 where the hardware has it, else
    float32 (one compile per input shape); dtype (quantized directories): the denoiser's float
    dtype, "auto" = float16 for the integer engine on CUDA, float32 elsewhere."""
    from .loading import load_pipeline

    return load_pipeline(path, device=device, engine=engine, compile=compile, dtype=dtype)


def save(pipe, out, **kwargs):
    """Save a quantized pipeline directory (integer weights + scales, JSON, model card)."""
    from .deploy import save_quantized

    return save_quantized(pipe, out, **kwargs)


def generate(pipe, num: int, seed: int = 0, **kwargs):
    """`num` images [num, C, H, W] in [0, 1] from the pipeline's own sampler settings; image i
    depends only on (seed, i). See :func:`edadm.sampling.generate`."""
    from .sampling import generate as _g

    return _g(pipe, num, seed=seed, **kwargs)


def export_onnx(source, out, **kwargs):
    """Write a quantized directory's (or quantized pipeline's) denoiser as ONNX with QDQ nodes
    and integer weights; returns what was written. See :func:`edadm.deploy.onnx_export.export_onnx`."""
    from .deploy.onnx_export import export_onnx as _export

    return _export(source, out, **kwargs)


__all__ = ["CalibConfig", "EdadmError", "Pipeline", "QuantConfig", "SamplingSettings", "__version__", "export_onnx",
           "generate", "load", "quantize", "save"]
