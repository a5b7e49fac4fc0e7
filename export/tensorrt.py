"""TensorRT engines from the exported ONNX, for TensorRT 10 and 11, and the ONNX Runtime TensorRT route.

The two generations set precision in different places (../shared/REFERENCE.md, "Deployment facts"):
- TensorRT 10 (weakly typed): every engine is built from the FP32 graph; BuilderFlag.FP16 lets TensorRT pick
  half kernels, BuilderFlag.INT8 with an IInt8EntropyCalibrator2 over our calibration frames picks int8 ones
  (implicit quantisation: deprecated since 10.1, still the documented 10.x flow).
- TensorRT 11 (strongly typed, always): the flags and calibrators are gone; each precision is built from the graph
  that carries it: model.fp16.onnx (FP16 casts) and model.int8.onnx (Q/DQ, symmetric int8, the calibration
  done by export.precision.quantize_int8 on the same frames).
The generation is read from tensorrt.__version__ once (`trt_generation`) and every branch keys on it.

What running an engine needs (the "is TensorRT usable here" check, optimisation profiles, the engine runner with
cuda-python buffers) is cirn.runtime.tensorrt: the exporter checks its engines through the runtime's own runner.
"""
import json
import platform
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError
from cirn.common.metadata import sidecar_path
from cirn.runtime.tensorrt import (DeviceBuffer, cuda_check, import_cudart, profile_shapes, require_tensorrt,
                                   shape_string, trt_generation)

__all__ = ["ENGINE_NAMES", "PRECISIONS", "TIMING_CACHE_NAME", "build_engine", "engine_onnx", "ort_tensorrt_onnx",
           "profile_shapes", "require_tensorrt_for_export", "shape_string", "trt_generation",
           "write_engine_metadata"]

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_NAMES = {"fp32": "model.engine", "fp16": "model.fp16.engine", "int8": "model.int8.engine"}
TIMING_CACHE_NAME = "tensorrt.timing.cache"


def require_tensorrt_for_export():
    """The tensorrt module, once TensorRT, cuda-python and a GPU are there; else a CirnError (written nothing)."""
    return require_tensorrt("export ONNX only (--format onnx) here and build the engine on the deployment machine")


def engine_onnx(precision, generation, onnx_files):
    """The ONNX file an engine of `precision` is built from: TensorRT 10 builds every precision from the FP32 graph
    (builder flags choose the kernels); TensorRT 11 needs the graph that carries the precision: FP16 casts, or
    the symmetric Q/DQ graph for INT8.

    onnx_files: {'fp32': path, 'fp16': path, 'int8-tensorrt': path, ...}, those exported.
    """
    if precision not in PRECISIONS:
        raise CirnError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    key = "fp32" if generation < 11 else {"fp32": "fp32", "fp16": "fp16", "int8": "int8-tensorrt"}[precision]
    if key not in onnx_files:
        raise CirnError(f"a TensorRT {generation} {precision} engine is built from the {key} ONNX graph, which "
                        "was not exported")
    return Path(onnx_files[key])


# ---------------------------------------------------------------- the ONNX Runtime TensorRT execution provider
def ort_tensorrt_onnx(precision, generation, onnx_files):
    """The ONNX file to give onnxruntime with runtime.ort.ort_tensorrt_providers for `precision`."""
    if precision == "int8":
        return engine_onnx("int8", 11, onnx_files)  # the Q/DQ graph, on either generation
    return engine_onnx(precision, generation, onnx_files)


# ---------------------------------------------------------------- building engines
def _entropy_calibrator(trt, frames, cache_path, input_dtype):
    """An IInt8EntropyCalibrator2 (TensorRT 10) feeding (1, 3, H, W) frames of the network's input dtype from one
    device buffer (cuda-python), one frame per batch."""
    cudart = import_cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 base classes must be initialised explicitly
            self.frames, self.index, self.buffer = frames, 0, DeviceBuffer()

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.index >= len(self.frames):
                return None
            batch = np.ascontiguousarray(self.frames[self.index][None], dtype=input_dtype)  # (1, 3, H, W)
            ptr = self.buffer.ensure(batch.nbytes, cudart)
            cuda_check(cudart.cudaMemcpy(ptr, batch.ctypes.data, batch.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")
            self.index += 1
            return [int(ptr)]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(onnx_path, engine_path, precision, profile, calibration_frames=None, timing_cache=None,
                 workspace_bytes=4 << 30, log=None):
    """Build and serialise a TensorRT engine of `precision` from `onnx_path`; returns the engine's info dict.

    profile: profile_shapes(...). calibration_frames: (3, H, W) arrays at the opt size, needed for INT8 on
    TensorRT 10 (its calibration cache is written beside the engine). timing_cache: a file read if present and
    rewritten after the build, so later builds skip the tactic timings they already have.
    """
    trt = require_tensorrt_for_export()
    generation = trt_generation(trt.__version__)
    engine_path = Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Flags 0: explicit batch is the only mode since TensorRT 10; strong typing is the only mode in 11.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CirnError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    input_name = network.get_input(0).name
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(input_name, profile["min"], profile["opt"], profile["max"])
    if config.add_optimization_profile(optimization_profile) < 0:
        raise CirnError(f"TensorRT rejected the optimisation profile {profile} of {onnx_path}")

    calibration_cache = calibrator = None
    if generation < 11:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8 layers' neighbours run in half, not float
        if precision == "int8":
            if not calibration_frames:
                raise CirnError("a TensorRT 10 INT8 engine needs calibration frames")
            calibration_cache = engine_path.with_name(engine_path.name + ".calib")
            config.set_flag(trt.BuilderFlag.INT8)
            input_dtype = np.dtype(trt.nptype(network.get_input(0).dtype))
            calibrator = _entropy_calibrator(trt, calibration_frames, calibration_cache, input_dtype)
            config.int8_calibrator = calibrator
            # Calibration runs at the calibration profile's opt shape: one frame at the export size, which is what
            # get_batch hands over (the optimisation profile's opt may be another batch).
            one_frame = (1, *profile["opt"][1:])
            calibration_profile = builder.create_optimization_profile()
            calibration_profile.set_shape(input_name, one_frame, one_frame, one_frame)
            if not config.set_calibration_profile(calibration_profile):
                raise CirnError(f"TensorRT rejected the calibration profile {shape_string(one_frame)}")
    # TensorRT 11: onnx_path is the graph carrying the precision (engine_onnx); there is nothing to set.

    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise CirnError(f"TensorRT refused the timing cache {timing_cache} (written by another TensorRT version "
                            "or GPU?); delete it and export again")
    if log:
        log(f"building the TensorRT {trt.__version__} {precision} engine from {Path(onnx_path).name} "
            f"(profile min {shape_string(profile['min'])}, opt {shape_string(profile['opt'])}, "
            f"max {shape_string(profile['max'])})")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:  # its frame buffer on the GPU: calibration is over once the build returns
            calibrator.buffer.free(import_cudart())
    if serialized is None:
        raise CirnError(f"TensorRT could not build the {precision} engine from {onnx_path}; its log above says why")
    with open(engine_path, "wb") as f:
        f.write(serialized)
    if cache is not None:
        with open(timing_cache, "wb") as f:
            f.write(cache.serialize())
    cudart = import_cudart()
    device = cuda_check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties").name
    device = device.split(b"\0")[0].decode() if isinstance(device, bytes) else str(device)
    return {"version": trt.__version__, "generation": generation, "strongly_typed": generation >= 11,
            "precision": precision, "built_from": Path(onnx_path).name,
            "profile": {k: list(v) for k, v in profile.items()},
            "device": device, "host": platform.node(),
            "calibration_cache": calibration_cache.name if calibration_cache else None}


def write_engine_metadata(engine_path, metadata, engine_info):
    """The JSON beside an engine (`model.engine.json`): the ONNX metadata plus how the engine was built."""
    sidecar = sidecar_path(engine_path)
    sidecar.write_text(json.dumps({**metadata, "precision": engine_info["precision"], "tensorrt": engine_info},
                                  indent=2) + "\n")
    return sidecar


