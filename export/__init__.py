"""cirn.export: the deployed graph, ONNX (FP32, FP16, INT8), TensorRT engines and parity checks.

    from cirn.export import export_checkpoint, read_metadata
    result = export_checkpoint("runs/stage2/best.pt", "deploy/", fp16=True, int8=True)
    read_metadata("deploy/model.onnx")["class_names"]
"""
import importlib

from .choices import DEFAULT_EXPORTER, DEFAULT_FLOORS, EXPORTERS, FORMATS, OUTPUTS

# The rest needs torch and onnx: imported on first use, so that reading the choices (the CLI does when any cirn
# command starts, cirn-run on a torch-free install included) imports neither.
_LAZY = {"DeployModel": "graph", "check_onnx": "onnx_export", "export_onnx": "onnx_export",
         "read_metadata": "onnx_export", "write_metadata": "onnx_export", "check_parity": "parity",
         "format_parity": "parity", "export_checkpoint": "pipeline", "find_latest_checkpoint": "pipeline",
         "convert_fp16": "precision", "quantize_int8": "precision"}

__all__ = ["DEFAULT_EXPORTER", "DEFAULT_FLOORS", "EXPORTERS", "FORMATS", "OUTPUTS", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
