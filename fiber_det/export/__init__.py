"""Deployment: FIBER as an ONNX graph (:func:`export_onnx`) and its onnxruntime runner
(:class:`OnnxPredictor`, the ``FIBERPredictor`` interface). See the README, "Deploy"."""

from .exporter import ExportReport, export_graph, export_onnx
from .graph import ExportableFIBER
from .runner import OnnxDetector, OnnxPredictor, onnx_providers

__all__ = [
    "ExportReport",
    "ExportableFIBER",
    "OnnxDetector",
    "OnnxPredictor",
    "export_graph",
    "export_onnx",
    "onnx_providers",
]
