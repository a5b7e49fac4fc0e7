"""ONNX Runtime: the one session runner that cirn-run and cirn-export's parity check both use, and its backend.

CPU, CUDA (IO binding: the output is allocated on the GPU and copied back once) or the TensorRT execution provider
(engines cached in `{model}.trt-cache/`). ONNX Runtime comes in two builds that must not be installed together
(onnxruntime hides onnxruntime-gpu's CUDA provider): the messages say which to remove.
"""
import re
from importlib import metadata as distributions
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError
from cirn.common.metadata import INPUT_NAME, decode_props, from_dict

from .backends import Backend, available_cores
from .tensorrt import profile_shapes, shape_string

ORT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}


def _installed(name):
    try:
        distributions.version(name)
        return True
    except distributions.PackageNotFoundError:
        return False


def import_onnxruntime():
    """The onnxruntime module, or a CirnError saying which build to install."""
    try:
        import onnxruntime
    except ImportError:
        raise CirnError("running an .onnx model needs ONNX Runtime: pip install 'cirn[cpu]' (onnxruntime) or "
                        "'cirn[gpu]' (onnxruntime-gpu: CUDA and TensorRT, with the CPU provider). Install one, "
                        "never both") from None
    return onnxruntime


def ort_providers(ort, device, tensorrt=False, trt_options=None):
    """The provider list for a session on `device`; a CirnError naming the package when one is missing."""
    available = ort.get_available_providers()
    if device == "cpu" and not tensorrt:
        return ["CPUExecutionProvider"]
    both = _installed("onnxruntime") and _installed("onnxruntime-gpu")
    fix = ("both onnxruntime and onnxruntime-gpu are installed, and the CPU build hides the GPU one: "
           "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" if both else
           "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (one build only)")
    if "CUDAExecutionProvider" not in available:
        raise CirnError(f"ONNX Runtime {ort.__version__} here has no CUDA provider (available: "
                        f"{', '.join(available)}): {fix}; or run on the CPU with --device cpu")
    if not tensorrt:
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        raise CirnError(f"ONNX Runtime {ort.__version__} here has no TensorRT provider: install onnxruntime-gpu "
                        "and TensorRT (pip install 'cirn[gpu]'), or use --backend onnxruntime --device cuda")
    return trt_options


def ort_tensorrt_providers(precision, profile, cache_dir, generation=10, input_name=INPUT_NAME, device_id=0,
                           workspace_bytes=4 << 30):
    """Providers for a session running an exported graph through ONNX Runtime's TensorRT execution provider.

    Engines and tactic timings are cached in cache_dir, so only the first session for a shape profile builds.
    TensorRT 10 takes the FP32 graph with trt_fp16_enable for FP16; INT8 runs the symmetric Q/DQ graph
    (model.int8.tensorrt.onnx) on either generation. On TensorRT 11 the precision flags are gone and the graph
    alone decides. CUDA is the fallback for any node TensorRT rejects.
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


def provider_tensorrt_generation(ort):
    """The TensorRT major version ONNX Runtime's TensorRT provider loads: the libnvinfer.so.N its library links
    (whatever the `tensorrt` Python package next to it is); None when this build has no TensorRT provider."""
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not library.is_file():
        return None
    found = re.search(rb"libnvinfer\.so\.(\d+)", library.read_bytes())
    return int(found.group(1)) if found else None


def tensorrt_provider_precision(requested, metadata, path):
    """fp32 | fp16 | int8: the kernels the TensorRT provider is to run `metadata`'s graph with.

    auto follows the graph (model.fp16.onnx -> fp16, the symmetric Q/DQ model.int8.tensorrt.onnx -> int8). INT8
    needs that Q/DQ graph (explicit quantisation, no calibration table); the CPU's uint8 Q/DQ graph is refused.
    """
    graph = metadata.raw.get("precision", "fp32")
    precision = graph if requested == "auto" else requested
    if precision not in ("fp32", "fp16", "int8"):
        raise CirnError(f"the TensorRT provider runs fp32, fp16 or int8 kernels, not {precision}")
    target = (metadata.raw.get("quantization") or {}).get("target")
    if (precision == "int8" or graph == "int8") and not (graph == "int8" and target == "tensorrt"):
        raise CirnError(f"INT8 through the TensorRT provider runs the symmetric Q/DQ graph model.int8.tensorrt.onnx "
                        f"(cirn-export --int8 --format all writes it), not {Path(path).name}")
    return precision


class OrtSession:
    """One ONNX Runtime session of an exported graph: `run(x (B, 3, H, W))` -> the list of its outputs.

    model: a path, or the serialised graph (bytes: the parity check's copy that also outputs the logits).
    threads: intra-op threads on the CPU; None = the cores available. Spinning is off: ONNX Runtime's worker threads
    would otherwise busy-wait between calls, taking the cores the decoding and encoding threads need.
    """

    def __init__(self, model, device="cpu", threads=None, providers=None, name=None):
        ort = import_onnxruntime()
        name = name or str(model)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = int(threads or available_cores())
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers or ort_providers(ort, device))
        except Exception as err:
            raise CirnError(f"ONNX Runtime cannot load {name}: {err}") from None
        self.ort, self.device = ort, device
        graph_input = self.session.get_inputs()[0]
        if graph_input.type not in ORT_TYPES:
            raise CirnError(f"{name} takes {graph_input.type} frames: expected uint8 or float input")
        self.input_name, self.input_dtype = graph_input.name, ORT_TYPES[graph_input.type]
        self.input_shape = graph_input.shape
        self.output_names = [o.name for o in self.session.get_outputs()]

    def metadata(self, source):
        """The graph's cirn metadata dict (its metadata_props, read through ONNX Runtime)."""
        return decode_props(self.session.get_modelmeta().custom_metadata_map, source)

    def run(self, x):
        """(B, 3, H, W) frames -> [output, ...] as host arrays."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if self.device == "cpu":
            return self.session.run(self.output_names, {self.input_name: x})
        # IO binding: the input goes to the GPU once, the outputs stay there until the single copy back.
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for output in self.output_names:
            binding.bind_output(output, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


class OnnxRuntimeBackend(Backend):
    """An exported .onnx in ONNX Runtime: CPU, CUDA or its TensorRT execution provider (`tensorrt=True`).

    device: cpu, cuda, or auto: cuda when a session really runs there, else cpu. The build's provider list says
    what onnxruntime-gpu was compiled with, not whether this machine has a GPU: a CUDA session on a machine without
    one silently falls back to the CPU, so auto opens one and looks at the providers it got.
    precision (TensorRT provider only): auto (the graph's), fp32, fp16 or int8 (tensorrt_provider_precision).
    """
    name = "onnxruntime"

    def __init__(self, path, device="cpu", threads=None, tensorrt=False, precision="auto", max_batch=4):
        ort = import_onnxruntime()
        path = Path(path)
        cuda_session = None
        if device == "auto" and not tensorrt:
            device = "cpu"
            if "CUDAExecutionProvider" in ort.get_available_providers():
                cuda_session = OrtSession(path, "cuda", threads)
                if "CUDAExecutionProvider" in cuda_session.session.get_providers():
                    device = "cuda"
                else:
                    cuda_session = None  # it fell back: run a plain CPU session
        if tensorrt:  # the provider's options depend on the metadata: read it through a CPU session first
            device = "cuda"
            metadata = from_dict(OrtSession(path, "cpu", threads=1).metadata(str(path)), str(path))
            options = self._tensorrt_options(ort, path, metadata, precision, max_batch)
            self.runner = OrtSession(path, device, threads, ort_providers(ort, device, True, options))
        else:
            self.runner = cuda_session or OrtSession(path, device, threads)
            metadata = from_dict(self.runner.metadata(str(path)), str(path))
        used = self.runner.session.get_providers()
        wanted = "TensorrtExecutionProvider" if tensorrt else "CUDAExecutionProvider" if device == "cuda" else None
        if wanted and wanted not in used:
            raise CirnError(f"ONNX Runtime fell back to {', '.join(used)} instead of {wanted}: check the CUDA and "
                            "cuDNN (and TensorRT) libraries onnxruntime-gpu needs")
        self.ort, self.providers, self.tensorrt, self.threads = ort, used, tensorrt, self.runner.threads
        batch = self.runner.input_shape[0]
        if isinstance(batch, int) and metadata.max_batch != batch:
            metadata = metadata.replace(max_batch=batch)
        super().__init__(metadata, device, path)

    @staticmethod
    def _tensorrt_options(ort, path, metadata, precision, max_batch):
        # The generation of the library the provider loads decides which precision flags exist (10: fp16/int8
        # enable flags; 11: strongly typed, the graph decides); 10 when it cannot be read.
        generation = provider_tensorrt_generation(ort) or 10
        height, width = metadata.input_size_hw
        profile = profile_shapes(height, width, metadata.dynamic, max_batch=max_batch,
                                 multiple=metadata.output_stride)
        precision = tensorrt_provider_precision(precision, metadata, path)
        cache = path.with_name(path.name + ".trt-cache")
        cache.mkdir(exist_ok=True)
        return ort_tensorrt_providers(precision, profile, cache, generation)

    def _infer(self, frames):
        return self.runner.run(frames.transpose(0, 3, 1, 2))[0]  # (B, 3, H, W) in

    def describe(self):
        where = "TensorRT provider" if self.tensorrt else self.providers[0]
        threads = f", {self.threads} intra-op threads" if self.device == "cpu" else ""
        return f"onnxruntime {self.ort.__version__} ({where}){threads}"
