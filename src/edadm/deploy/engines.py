"""The engines a quantized directory runs on: one table, from which loading, the CLI's
--engine choices and the error messages are derived."""
from __future__ import annotations

# name -> (kind, what it is). kind "torch": edadm's own modules (deploy.load loads
# them); "runtime": the ONNX export on another runtime (deploy.runtimes).
ENGINES: dict[str, tuple[str, str]] = {
    "int": ("torch", "integer kernels, exact on every ISA (deploy.intengine)"),
    "fake": ("torch", "the float simulation used during calibration"),
    "onnxruntime": ("runtime", "the ONNX export on ONNX Runtime (edadm[onnx])"),
    "openvino": ("runtime", "the ONNX export on OpenVINO (edadm[openvino])"),
}
DEFAULT_ENGINE = "int"  # edadm.load, load_quantized and every CLI command
TORCH_ENGINES = tuple(n for n, (k, _) in ENGINES.items() if k == "torch")
RUNTIME_ENGINES = tuple(n for n, (k, _) in ENGINES.items() if k == "runtime")


def help_text() -> str:
    return "; ".join(f"{n}: {about}" for n, (_, about) in ENGINES.items())
