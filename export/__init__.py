"""cirn.export: fused graph, ONNX, TensorRT, INT8, parity checks."""
