"""cirn.export: the deployed graph, ONNX (FP32, FP16, INT8), TensorRT engines and parity checks.

    from cirn.export import export_checkpoint, read_metadata
    result = export_checkpoint("runs/stage2/best.pt", "deploy/", fp16=True, int8=True)
    read_metadata("deploy/model.onnx")["class_names"]
"""
from .graph import OUTPUTS, DeployModel
from .onnx_export import DEFAULT_EXPORTER, EXPORTERS, check_onnx, export_onnx, read_metadata, write_metadata
from .parity import DEFAULT_FLOORS, check_parity, format_parity
from .pipeline import FORMATS, export_checkpoint, find_latest_checkpoint
from .precision import convert_fp16, quantize_int8

__all__ = [
    "DEFAULT_EXPORTER", "DEFAULT_FLOORS", "DeployModel", "EXPORTERS", "FORMATS", "OUTPUTS", "check_onnx",
    "check_parity", "convert_fp16", "export_checkpoint", "export_onnx", "find_latest_checkpoint", "format_parity",
    "quantize_int8", "read_metadata", "write_metadata",
]
