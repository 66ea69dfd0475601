"""Small ONNX graph queries shared by the export (onnx_export.py) and its TensorRT form (tensorrt.py)."""
from __future__ import annotations


def graph_consumers(graph) -> dict[str, list]:
    """Tensor name -> the nodes of an ONNX graph that read it, in graph order."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers
