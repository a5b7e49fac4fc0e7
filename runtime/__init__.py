"""cirn.runtime: inference backends (torch, onnxruntime, tensorrt) and the video pipeline."""
