"""cirn.runtime: inference backends (onnxruntime, tensorrt; torch for .pt) and the video pipeline.

    from cirn.runtime import open_backend, run
    backend = open_backend("runs/oracle/export/model.onnx")          # or best.pt, or model.engine
    summary = run("drive.mp4", backend, out="drive_seg.mp4", batch=4, labels_dir="labels/")

`cirn-run SOURCE` is the same from the shell. Deployment needs numpy, OpenCV and the backend's library only
(`pip install cirn[cpu]` or `cirn[gpu]`): nothing here imports torch, cirn.train or cirn.export, except the torch
backend when a .pt checkpoint is opened.
"""
from cirn.common.metadata import ModelMetadata

from .backends import BACKENDS, Backend, TorchBackend, backend_for, open_backend, to_labels
from .models import find_default_model
from .ort import OnnxRuntimeBackend, OrtSession
from .outputs import overlay
from .pipeline import Interrupted, benchmark_inference, format_summary, run
from .sources import open_source
from .tensorrt import EngineRunner, TensorRTBackend

__all__ = [
    "BACKENDS", "Backend", "EngineRunner", "Interrupted", "ModelMetadata", "OnnxRuntimeBackend", "OrtSession",
    "TensorRTBackend", "TorchBackend", "backend_for", "benchmark_inference", "find_default_model", "format_summary",
    "open_backend", "open_source", "overlay", "run", "to_labels",
]
