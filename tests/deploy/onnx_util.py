"""Helpers shared by the ONNX export tests (test_onnx_export.py, test_tensorrt_export.py)."""
from __future__ import annotations

import numpy as np


def rel(a, b) -> float:
    """Relative L2 error of a against the reference b."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def ort_float(path, feeds):
    """First output of an ONNX file on ONNX Runtime's CPU provider with graph optimisations off
    (the graph evaluated as written: Q/DQ pairs are not fused into integer kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
