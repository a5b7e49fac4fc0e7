"""Reduced-precision ONNX variants of the FP32 graph: FP16 (casts in the graph) and INT8 (static Q/DQ).

Both keep the graph's inputs and outputs as exported (uint8/float frames in; uint8 labels or float32 probs/logits
out), so a runtime feeds every variant the same way. TensorRT 11 (strongly typed, no precision flags) builds them
as they are: FP16 from the casts, INT8 from the Q/DQ nodes of the symmetric ('tensorrt') INT8 graph.
"""
from pathlib import Path

import numpy as np
import onnx

from cirn.common.errors import CirnError

from .onnx_export import INPUT_NAME


def convert_fp16(src, dst):
    """FP32 ONNX at `src` -> FP16 ONNX at `dst` (weights and activations in half, IO types kept); returns dst.

    Uses the float16 converter that ships inside onnxruntime (onnxruntime.transformers.float16, the same code as
    onnxconverter-common), so no extra package is needed. The result runs on ONNX Runtime's CPU provider as is
    (slower than FP32 there: CPUs lack fast FP16 kernels; it exists for GPUs and TensorRT 11) and is scored
    against FP32 by the parity check.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = onnx.load(str(src))
    # keep_io_types: the Cast of the uint8 input goes straight to float16; float outputs come back as float32.
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(dst))
    return Path(dst)


class FrameCalibrationReader:
    """onnxruntime CalibrationDataReader over frames in the graph's input format: one (1, 3, H, W) array per call.

    frames: (3, H, W) RGB 0-255 arrays, cast to `dtype` (the graph input's: uint8 or float32).
    """

    def __init__(self, frames, input_name=INPUT_NAME, dtype=np.uint8):
        self.frames = list(frames)
        self.input_name = input_name
        self.dtype = dtype
        self._next = 0

    def get_next(self):
        if self._next >= len(self.frames):
            return None
        frame = self.frames[self._next]
        self._next += 1
        return {self.input_name: np.ascontiguousarray(frame[None], dtype=self.dtype)}  # (1, 3, H, W)

    def rewind(self):
        self._next = 0


INT8_TARGETS = ("cpu", "tensorrt")


def quantize_int8(src, dst, frames, calibrate_method="minmax", work_dir=None, target="cpu"):
    """FP32 ONNX at `src` -> INT8 Q/DQ ONNX at `dst`, calibrated on `frames` ((3, H, W) arrays); returns dst.

    Static quantisation in QDQ format of the convolutions, weights int8 symmetric per output channel. The
    activations depend on who runs the graph:
    - target 'cpu': uint8 with a zero point. ONNX Runtime's x86 int8 kernels are built for u8 x s8 products;
      symmetric s8 activations measured 1.5x slower than u8 (and than FP32) on the toy model, at equal accuracy.
    - target 'tensorrt': int8 symmetric (zero point 0), the only activation quantisation TensorRT's explicit
      (Q/DQ) mode accepts: the graph TensorRT 11 and ONNX Runtime's TensorRT provider build INT8 engines from.
    The attention branch (pooling, sigmoid), residual adds, the bilinear upsampling, softmax and argmax stay in
    float: quantising them too measured barely faster and 2 points less label agreement.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise CirnError(f"unknown calibration method {calibrate_method!r}: expected one of {', '.join(methods)}")
    if target not in INT8_TARGETS:
        raise CirnError(f"unknown INT8 target {target!r}: expected one of {', '.join(INT8_TARGETS)}")
    if not frames:
        raise CirnError("INT8 calibration needs at least one image")
    src, dst = Path(src), Path(dst)
    graph_input = onnx.load(str(src), load_external_data=False).graph.input[0]
    reader = FrameCalibrationReader(frames, graph_input.name,
                                    onnx.helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type))
    symmetric = target == "tensorrt"
    prepared = Path(work_dir or dst.parent) / (dst.stem + ".prep.onnx")
    try:
        # ONNX shape inference + ORT's basic graph fusions, which the quantiser expects. Symbolic shape inference
        # is skipped: it cannot resolve our dynamic-size graphs (and the exporter already fixed what it could).
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
            per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            calibrate_method=methods[calibrate_method],
            # MinMax calibration keeps only per-tensor min/max reductions per image, so memory stays small on
            # big models. (Not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops each chunk it should merge.)
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    finally:
        prepared.unlink(missing_ok=True)
    return dst


def quantization_metadata(target, calibrate_method, num_images):
    """How an INT8 graph was quantised, for its metadata."""
    return {"format": "QDQ", "target": target, "weights": "int8 symmetric, per output channel",
            "activations": "int8 symmetric" if target == "tensorrt" else "uint8 asymmetric",
            "quantized_ops": ["Conv"], "calibration": calibrate_method, "calibration_images": num_images}
