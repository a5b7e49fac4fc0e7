"""TensorRT engines from the exported ONNX, for TensorRT 10 and 11, and the ONNX Runtime TensorRT route.

The two generations set precision in different places (../shared/REFERENCE.md, "Deployment facts"):
- TensorRT 10 (weakly typed): every engine is built from the FP32 graph; BuilderFlag.FP16 lets TensorRT pick
  half kernels, BuilderFlag.INT8 with an IInt8EntropyCalibrator2 over our calibration frames picks int8 ones
  (implicit quantisation: deprecated since 10.1, still the documented 10.x flow).
- TensorRT 11 (strongly typed, always): the flags and calibrators are gone; each precision is built from the graph
  that carries it: model.fp16.onnx (FP16 casts) and model.int8.onnx (Q/DQ, symmetric int8, the calibration
  done by export.precision.quantize_int8 on the same frames).
The generation is read from tensorrt.__version__ once (`trt_generation`) and every branch keys on it.

Nothing here runs without the tensorrt package and a CUDA GPU: `require_tensorrt` says which is missing.
"""
import json
import platform
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError

from .onnx_export import INPUT_NAME

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_NAMES = {"fp32": "model.engine", "fp16": "model.fp16.engine", "int8": "model.int8.engine"}
TIMING_CACHE_NAME = "tensorrt.timing.cache"


# ---------------------------------------------------------------- availability and generations
def require_tensorrt():
    """The imported tensorrt module, once it and a CUDA GPU are known to be there; a CirnError saying what is
    missing otherwise. Called before an export writes anything."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise CirnError(f"--format tensorrt needs the TensorRT Python package, which cannot be imported here "
                        f"({err}). Install it on a machine with an NVIDIA GPU (pip install 'cirn[gpu]'), or "
                        "export ONNX only (--format onnx) and build the engine on the deployment machine") from None
    import torch
    if not torch.cuda.is_available():
        raise CirnError(f"--format tensorrt needs a CUDA GPU to build and check engines; TensorRT "
                        f"{getattr(trt, '__version__', '?')} is installed but no GPU is visible. Export ONNX only "
                        "(--format onnx) here and build the engine on the deployment machine")
    trt_generation(trt.__version__)  # refuses versions we do not support, before any work
    return trt


def trt_generation(version):
    """Major version of a TensorRT version string: 10 (weakly typed builds) or 11+ (strongly typed only)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise CirnError(f"cannot read the TensorRT version {version!r}") from None
    if major < 10:
        raise CirnError(f"TensorRT {version} is too old: cirn builds engines with TensorRT 10 or 11 "
                        "(name-based tensor API); upgrade with pip install 'tensorrt>=10'")
    return major


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


# ---------------------------------------------------------------- optimisation profiles (pure functions)
def profile_shapes(height, width, dynamic=False, max_batch=4, min_scale=0.5, max_scale=2.0, multiple=8):
    """{'min', 'opt', 'max'} input shapes (B, 3, H, W) of the engine's optimisation profile.

    Static: all three are (1, 3, height, width). Dynamic: opt is (1, 3, height, width), min scales the frame by
    min_scale at batch 1, max by max_scale at max_batch; scaled sizes are rounded to `multiple` (the output stride,
    so feature maps stay whole) and kept at least `multiple`.
    """
    if height < 1 or width < 1:
        raise CirnError(f"the input size must be positive, got {height}x{width}")
    opt = (1, 3, height, width)
    if not dynamic:
        return {"min": opt, "opt": opt, "max": opt}
    if max_batch < 1:
        raise CirnError(f"the largest batch must be at least 1, got {max_batch}")
    if not 0 < min_scale <= 1 <= max_scale:
        raise CirnError(f"need 0 < min_scale <= 1 <= max_scale, got {min_scale} and {max_scale}")

    def scaled(size, factor, round_up):
        value = size * factor / multiple
        value = int(np.ceil(value)) if round_up else int(np.floor(value))
        return max(multiple, value * multiple)

    low = (1, 3, min(height, scaled(height, min_scale, False)), min(width, scaled(width, min_scale, False)))
    high = (max_batch, 3, max(height, scaled(height, max_scale, True)), max(width, scaled(width, max_scale, True)))
    return {"min": low, "opt": opt, "max": high}


def shape_string(shape):
    """(1, 3, 128, 256) -> '1x3x128x256' (trtexec and ONNX Runtime's TensorRT provider options)."""
    return "x".join(str(int(d)) for d in shape)


# ---------------------------------------------------------------- the ONNX Runtime TensorRT execution provider
def ort_tensorrt_providers(precision, profile, cache_dir, generation=10, input_name=INPUT_NAME, device_id=0,
                           workspace_bytes=4 << 30):
    """Providers for onnxruntime.InferenceSession (onnxruntime-gpu) running an exported graph through TensorRT.

    Engines and tactic timings are cached in cache_dir, so only the first session for a shape profile builds.
    Load it with the ONNX file `ort_tensorrt_onnx` names: the FP32 graph with trt_fp16_enable for FP16 on
    TensorRT 10, the symmetric Q/DQ graph (model.int8.tensorrt.onnx) for INT8 on either generation (explicit
    quantisation: no calibration table). On TensorRT 11 the precision flags are gone and the graph alone decides.
    CUDA is the fallback for any node TensorRT rejects.
    """
    options = {
        "device_id": device_id,
        "trt_max_workspace_size": int(workspace_bytes),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": f"{input_name}:{shape_string(profile['min'])}",
        "trt_profile_opt_shapes": f"{input_name}:{shape_string(profile['opt'])}",
        "trt_profile_max_shapes": f"{input_name}:{shape_string(profile['max'])}",
    }
    if generation < 11:
        options["trt_fp16_enable"] = precision in ("fp16", "int8")
        options["trt_int8_enable"] = precision == "int8"
    return [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {"device_id": device_id})]


def ort_tensorrt_onnx(precision, generation, onnx_files):
    """The ONNX file to give onnxruntime with ort_tensorrt_providers for `precision`."""
    if precision == "int8":
        return engine_onnx("int8", 11, onnx_files)  # the Q/DQ graph, on either generation
    return engine_onnx(precision, generation, onnx_files)


# ---------------------------------------------------------------- building engines
def _entropy_calibrator(trt, frames, cache_path):
    """An IInt8EntropyCalibrator2 (TensorRT 10) feeding (1, 3, H, W) frames from device memory, one per batch."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 base classes must be initialised explicitly
            self.frames, self.index, self.batch = frames, 0, None

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.index >= len(self.frames):
                return None
            # Kept on self: TensorRT reads the pointer after get_batch returns.
            self.batch = torch.from_numpy(np.ascontiguousarray(self.frames[self.index][None])).cuda()
            self.index += 1
            return [int(self.batch.data_ptr())]

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
    trt = require_tensorrt()
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
    config.add_optimization_profile(optimization_profile)

    calibration_cache = None
    if generation < 11:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8 layers' neighbours run in half, not float
        if precision == "int8":
            if not calibration_frames:
                raise CirnError("a TensorRT 10 INT8 engine needs calibration frames")
            calibration_cache = engine_path.with_name(engine_path.name + ".calib")
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _entropy_calibrator(trt, calibration_frames, calibration_cache)
            config.set_calibration_profile(optimization_profile)
    # TensorRT 11: onnx_path is the graph carrying the precision (engine_onnx); there is nothing to set.

    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if log:
        log(f"building the TensorRT {trt.__version__} {precision} engine from {Path(onnx_path).name} "
            f"(profile min {shape_string(profile['min'])}, opt {shape_string(profile['opt'])}, "
            f"max {shape_string(profile['max'])})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CirnError(f"TensorRT could not build the {precision} engine from {onnx_path}; its log above says why")
    with open(engine_path, "wb") as f:
        f.write(serialized)
    if cache is not None:
        with open(timing_cache, "wb") as f:
            f.write(cache.serialize())
    import torch
    return {"version": trt.__version__, "generation": generation, "strongly_typed": generation >= 11,
            "precision": precision, "built_from": Path(onnx_path).name,
            "profile": {k: list(v) for k, v in profile.items()},
            "device": torch.cuda.get_device_name(0), "host": platform.node(),
            "calibration_cache": calibration_cache.name if calibration_cache else None}


def write_engine_metadata(engine_path, metadata, engine_info):
    """The JSON beside an engine (`model.engine.json`): the ONNX metadata plus how the engine was built."""
    path = Path(engine_path)
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({**metadata, "precision": engine_info["precision"], "tensorrt": engine_info},
                                  indent=2) + "\n")
    return sidecar


# ---------------------------------------------------------------- running engines (parity on the GPU)
class TensorRTRunner:
    """A serialised engine with one input and one output: `run(frames)` -> (output, logits or None), `time(frame)`.

    Buffers are torch CUDA tensors, so no pycuda or cuda-python is needed.
    """

    def __init__(self, engine_path, output_kind):
        import torch
        trt = require_tensorrt()
        self.torch, self.output_kind = torch, output_kind
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise CirnError(f"TensorRT {trt.__version__} cannot load the engine {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))

    def _execute(self, frames):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(frames.astype(self.input_dtype, copy=False))).cuda()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.from_numpy(np.empty(shape, dtype=self.output_dtype)).cuda()
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise CirnError("TensorRT failed to run the engine")
        stream.synchronize()
        return out

    def run(self, frames):
        output = self._execute(frames).cpu().numpy()
        return output, (output if self.output_kind == "logits" else None)

    def time(self, frame, min_runs=20, min_seconds=0.5):
        from .parity import median_latency
        return median_latency(lambda: self._execute(frame), min_runs, min_seconds)
