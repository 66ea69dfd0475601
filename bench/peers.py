"""The int8 runtimes a user would pick instead of edadm, on the same FP denoiser.

ONNX Runtime static int8 (QDQ, per-channel s8 weights, u8 activations, MinMax calibration)
and OpenVINO int8 (NNCF post-training quantization, overflow fix on), each calibrated on the
same inputs edadm's rows are calibrated on, timed on the same inputs, with the output error
against the FP32 model beside the latency. Optional bench dependencies:
``pip install onnx onnxruntime openvino nncf onnxscript``; absent, the rows say so.

Both runtimes have the AVX2 saturation problem of edadm.deploy.kernels and ship a fix:
ONNX Runtime's ``reduce_range`` (7-bit weights), applied here where the CPU has no int32 dot
product, and NNCF's ``OverflowFix.ENABLE`` (7-bit weights in the layers that need it), always.
ONNX Runtime does not read ``ONEDNN_MAX_CPU_ISA`` (its MLAS kernels dispatch on CPUID), so
its rows under that cap run the machine's full ISA with the AVX2 fix on: an upper bound for a
real AVX2 CPU. OpenVINO's oneDNN fork does read it; its non-int8 ops are then held to f32
(they would pick bf16 from CPUID and fail).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edadm.deploy.onnx_export import OPSET, Signature
from edadm.utils import peak_rss_mb


def _stage(name: str) -> None:
    """Progress on stderr with the peak RSS so far: a worker killed for memory shows where."""
    import sys

    print(f"peers: {name} (peak RSS so far {peak_rss_mb():.0f} MB)", file=sys.stderr, flush=True)

RUNTIMES = ("ort-int8", "openvino-int8")


def export_onnx(unet, path: Path, example: dict) -> Path:
    """The FP denoiser as ONNX (edadm's export opset, dynamic batch), inputs named as diffusers names them
    (`example`: name -> tensor, e.g. sample, timestep, encoder_hidden_states). Weights over
    2 GiB (Stable Diffusion) go to external data beside the file."""
    names = list(example)
    dynamic = {n: {0: "batch"} for n in names} | {"out_sample": {0: "batch"}}
    # the TorchScript exporter: the dynamo one routes weights through shared-parameter ops that
    # ONNX Runtime's static quantizer refuses ("shared mode is not supported for weight")
    torch.onnx.export(Signature(unet, names).eval(), tuple(example.values()), str(path), input_names=names,
                      output_names=["out_sample"], opset_version=OPSET, dynamo=False, dynamic_axes=dynamic)
    return path


def _large(path: Path) -> bool:
    """Whether the exporter put the weights in external data (it does over protobuf's 2 GiB)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in m.graph.initializer)


def _np(inputs: dict) -> dict:
    return {k: v.numpy().astype(np.int64 if k == "timestep" else np.float32) for k, v in inputs.items()}


def ort_int8(fp_onnx: Path, out: Path, calib: list, int32_dot: bool, threads: int):
    """ONNX Runtime's static quantization and an inference session over it."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([_np(a) for a in calib])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    large = _large(fp_onnx)
    _stage("onnxruntime: shape inference (quant_pre_process)")
    quant_pre_process(str(fp_onnx), str(pre), skip_symbolic_shape=True, save_as_external_data=large)
    _stage("onnxruntime: quantize_static (calibration and QDQ insertion)")
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=not int32_dot,
                    use_external_data_format=large)
    _stage("onnxruntime: inference session on the int8 model")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    info = {"options": f"QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax, reduce_range={not int32_dot}",
            "version": ort.__version__}
    return (lambda args: torch.from_numpy(sess.run(None, _np(args))[0])), info


def openvino_int8(fp_onnx: Path, calib: list, threads: int, native_bf16: bool = True):
    """NNCF post-training int8 quantization of the same ONNX, compiled for the CPU."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    core = ov.Core()
    model = core.read_model(str(fp_onnx))
    qmodel = nncf.quantize(model, nncf.Dataset([_np(a) for a in calib]), subset_size=len(calib),
                           advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))
    config = {"INFERENCE_NUM_THREADS": threads}
    if not native_bf16:
        # OpenVINO picks bf16 for its non-int8 ops from CPUID; under ONEDNN_MAX_CPU_ISA (which
        # its oneDNN fork reads) that fails ("Supported primitive descriptors list is empty for
        # node ... Softmax"), so without native bf16 it is told f32, as it picks on such a CPU
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(qmodel, "CPU", config)
    req = compiled.create_infer_request()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    prec = compiled.get_property("INFERENCE_PRECISION_HINT")
    info = {"options": f"NNCF MinMax, OverflowFix.ENABLE, inference precision of non-int8 ops {prec}",
            "version": ov.__version__, "cpu_capabilities": list(caps)}

    def call(args):
        res = req.infer(_np(args))
        return torch.from_numpy(np.asarray(next(iter(res.values()))))
    return call, info


def build(runtime: str, unet, calib: list[dict], example: dict, int32_dot: bool, threads: int, workdir: Path):
    """(call(inputs) -> output tensor, info) for one runtime, from the FP unet; inputs are
    dicts of named tensors (sample, timestep[, encoder_hidden_states])."""
    t0 = time.perf_counter()
    _stage(f"{runtime}: exporting the FP denoiser to ONNX")
    fp_onnx = export_onnx(unet, workdir / "fp.onnx", example)
    if runtime == "ort-int8":
        call, info = ort_int8(fp_onnx, workdir / "ort-int8.onnx", calib, int32_dot, threads)
    elif runtime == "openvino-int8":
        from edadm.deploy.kernels import isa_info

        call, info = openvino_int8(fp_onnx, calib, threads, native_bf16=isa_info()["native_bf16"])
    else:
        raise ValueError(runtime)
    info["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    return call, info


if __name__ == "__main__":  # quick check on the shipped digits model
    from edadm.loading import load_pipeline

    unet = load_pipeline("digits-ddpm", device="cpu").unet.eval()
    g = torch.Generator().manual_seed(0)
    calib = [{"sample": torch.randn(4, 1, 32, 32, generator=g), "timestep": torch.randint(1, 1000, (4,), generator=g)}
             for _ in range(4)]
    x = {"sample": torch.randn(16, 1, 32, 32, generator=g), "timestep": torch.randint(1, 1000, (16,), generator=g)}
    with torch.no_grad():
        ref = unet(**x).sample
    for rt in RUNTIMES:
        with tempfile.TemporaryDirectory() as d:
            call, info = build(rt, unet, calib, calib[0], False, torch.get_num_threads(), Path(d))
            y = call(x)
            print(rt, info, float((y - ref).norm() / ref.norm()))
