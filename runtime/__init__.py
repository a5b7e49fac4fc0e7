"""cirn.runtime: inference backends (torch, onnxruntime, tensorrt) and the video pipeline.

    from cirn.runtime import open_backend, run
    backend = open_backend("runs/oracle/export/model.onnx")          # or best.pt, or model.engine
    summary = run("drive.mp4", backend, out="drive_seg.mp4", batch=4, labels_dir="labels/")

`cirn-run SOURCE` is the same from the shell.
"""
from .backends import (BACKENDS, Backend, ModelMetadata, OnnxRuntimeBackend, TensorRTBackend, TorchBackend,
                       backend_for, open_backend, to_labels)
from .models import find_default_model
from .outputs import overlay
from .pipeline import Interrupted, benchmark_inference, format_summary, run
from .sources import open_source

__all__ = [
    "BACKENDS", "Backend", "Interrupted", "ModelMetadata", "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend",
    "backend_for", "benchmark_inference", "find_default_model", "format_summary", "open_backend", "open_source",
    "overlay", "run", "to_labels",
]
