"""Inference backends behind one small interface: PyTorch checkpoints, ONNX Runtime and TensorRT engines.

    backend = open_backend("runs/oracle/export/model.onnx")   # chosen from the suffix: .pt, .onnx, .engine
    backend.warmup((128, 256), batch=4)
    labels = backend(frames)   # (B, H, W, 3) uint8 RGB at an accepted size -> (B, H, W) uint8 trainIds
    backend.metadata.class_names, backend.metadata.palette, backend.metadata.input_size

Every backend runs the same deployed graph (export.graph.DeployModel: RGB 0-255 in, normalisation, C + ACM,
upsampling and argmax inside), so they differ only in speed and in the last bits of the logits. A model exported
with probs or logits yields (B, C, H, W) float32 probabilities instead of labels (`to_labels` takes the argmax).
Frames are (B, H, W, 3) as decoders give them; the backends transpose to the graph's (B, 3, H, W).

A missing library or GPU is a CirnError that says what to install. ONNX Runtime comes in two builds that must not be
installed together (onnxruntime hides onnxruntime-gpu's CUDA provider): the messages say which to remove.
"""
import abc
import os
import time
from dataclasses import dataclass, field
from importlib import metadata as distributions
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
            ".trt": "tensorrt"}


@dataclass(frozen=True)
class ModelMetadata:
    """What a runtime needs to know about a model, from the export's metadata (or the checkpoint's config)."""
    class_names: tuple
    palette: np.ndarray       # (C, 3) uint8 RGB per trainId
    input_size: tuple         # (H, W) the model was exported (or trained) at
    dynamic: bool             # accepts any frame size (and batch)
    output: str               # labels | probs | logits: what the graph returns
    max_batch: int = None     # largest batch the graph takes (None: any)
    min_size: tuple = None    # (H, W) bounds of a dynamic TensorRT profile; None: unbounded
    max_size: tuple = None
    output_stride: int = 8
    raw: dict = field(default_factory=dict, repr=False)  # the metadata as stored

    @property
    def num_classes(self):
        """How many classes the model predicts."""
        return len(self.class_names)


def metadata_from_export(meta):
    """ModelMetadata of an exported model's metadata dict (export.read_metadata)."""
    from cirn.train.labels import PALETTE
    names = tuple(meta["class_names"])
    palette = np.asarray(meta["palette"] if meta.get("palette") else _fallback_palette(len(names), PALETTE), np.uint8)
    max_batch, min_size, max_size = (None if meta.get("dynamic") else 1), None, None
    profile = (meta.get("tensorrt") or {}).get("profile")
    if profile:  # an engine accepts what its optimisation profile covers
        max_batch = int(profile["max"][0])
        min_size, max_size = tuple(profile["min"][2:]), tuple(profile["max"][2:])
    return ModelMetadata(names, palette, tuple(meta["input_size"]), bool(meta.get("dynamic")), meta["output"],
                         max_batch, min_size, max_size, int(meta.get("output_stride", 8)), meta)


def _fallback_palette(num_classes, palette):
    """Cityscapes colours, then deterministic pseudo-random ones for a model with more classes."""
    extra = np.random.default_rng(0).integers(0, 256, (max(0, num_classes - len(palette)), 3))
    return np.concatenate([palette, extra.astype(np.uint8)])[:num_classes]


def to_labels(output):
    """(B, H, W) uint8 labels of a backend output: labels pass through, probabilities (B, C, H, W) are argmaxed."""
    if output.ndim == 3:
        return output
    return output.argmax(axis=1).astype(np.uint8)


def available_cores():
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------- the interface
class Backend(abc.ABC):
    """One loaded model. `backend(frames)` -> labels or probabilities; subclasses implement `_infer`.

    frames: (B, H, W, 3) uint8 RGB, any B; sizes the model accepts (`check_size`). Batches larger than the graph's
    `metadata.max_batch` are split and run in turn.
    """
    name = "backend"

    def __init__(self, metadata, device, path=None):
        self.metadata = metadata
        self.device = device
        self.path = str(path) if path is not None else None  # the model file

    def __call__(self, frames):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise CirnError(f"a backend takes (B, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
        self.check_size(frames.shape[1:3])
        step = self.metadata.max_batch or len(frames)
        outputs = [self._infer(frames[i:i + step]) for i in range(0, len(frames), step)]
        output = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        if self.metadata.output == "logits":
            output = _softmax(output)
        return output

    @abc.abstractmethod
    def _infer(self, frames):
        """(b, H, W, 3) uint8 -> the graph's output as a host array; b <= metadata.max_batch."""

    def check_size(self, size):
        """A CirnError when the model cannot take frames of size (H, W)."""
        meta, size = self.metadata, tuple(int(s) for s in size)
        if not meta.dynamic and size != tuple(meta.input_size):
            raise CirnError(f"the model takes {meta.input_size[1]}x{meta.input_size[0]} frames only (a static "
                            f"export), not {size[1]}x{size[0]}; re-export it with --dynamic to choose the size")
        if meta.min_size and not all(lo <= s <= hi for lo, s, hi in zip(meta.min_size, size, meta.max_size)):
            raise CirnError(f"{size[1]}x{size[0]} is outside the engine's profile "
                            f"({meta.min_size[1]}x{meta.min_size[0]} to {meta.max_size[1]}x{meta.max_size[0]}); "
                            "rebuild the engine for that size or choose another --imgsz")

    def warmup(self, size=None, batch=1, runs=2):
        """Run `runs` batches of black frames at size (H, W) (default: the model's) so that lazy initialisation,
        kernel selection and compilation happen before anything is timed; returns the seconds it took."""
        size = tuple(size or self.metadata.input_size)
        start = time.perf_counter()
        frames = np.zeros((batch, *size, 3), np.uint8)
        for _ in range(runs):
            self(frames)
        return time.perf_counter() - start

    def describe(self):
        """One line: backend, device and what matters for speed."""
        return f"{self.name} on {self.device}"

    def close(self):  # noqa: B027 (a no-op by default; backends that hold resources override it)
        """Release what the backend holds (sessions, GPU memory)."""


def _softmax(logits):
    """(B, C, H, W) logits -> probabilities, in float32."""
    logits = logits.astype(np.float32, copy=False)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- PyTorch
class TorchBackend(Backend):
    """A cirn checkpoint (.pt) in PyTorch: engine.load_model wrapped in export's DeployModel, eager by default.

    device: cpu or cuda. precision: fp32, or autocast fp16 / bf16 (fp16 needs CUDA); auto = fp16 on CUDA, fp32 on
    CPU. compile: torch.compile the graph (the first calls at each shape compile: warm up before timing).
    output: labels or probs. input_size: the run's data.target_size_wh, the scale the model was trained at.
    threads: PyTorch's CPU threads (process-wide); None = all cores but one. OpenMP's barriers spin: a team that
    shares its cores with the pipeline's decoding and encoding threads (or another process) slows down by an order
    of magnitude (measured on 2 busy cores: 421 ms a frame with 2 threads, 14 ms with 1).
    """
    name = "torch"

    def __init__(self, checkpoint, device="cpu", precision="auto", compile=False, output="labels", threads=None):
        import torch

        from cirn.export.graph import DeployModel
        from cirn.train.engine import load_model
        from cirn.train.evaluate import class_names
        from cirn.train.labels import PALETTE
        if device == "cuda" and not torch.cuda.is_available():
            raise CirnError("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                            "run on the CPU with --device cpu, or install a CUDA build of PyTorch on a GPU machine")
        if precision not in PRECISIONS:
            raise CirnError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        precision = ("fp16" if device == "cuda" else "fp32") if precision == "auto" else precision
        if precision == "fp16" and device != "cuda":
            raise CirnError("fp16 autocast needs CUDA; on the CPU use --precision fp32 or bf16")
        if device == "cpu":
            torch.set_num_threads(int(threads or max(1, available_cores() - 1)))
        model, state = load_model(checkpoint)
        deploy = DeployModel(model, output).to(device).eval()
        self.torch, self.precision, self.compiled = torch, precision, bool(compile)
        self.graph = torch.compile(deploy) if compile else deploy
        self.pin = device == "cuda"
        data = state["config"].get("data", {})
        width, height = data.get("target_size_wh", data.get("target_size", (256, 128)))  # target_size: older runs
        names = tuple(class_names(model.num_classes))
        palette = np.asarray(PALETTE[:len(names)] if len(names) <= len(PALETTE)
                             else _fallback_palette(len(names), PALETTE), np.uint8)
        meta = {"source_checkpoint": str(Path(checkpoint).resolve()), "model": state["model_meta"]["name"],
                "normalization": model.normalization}
        super().__init__(ModelMetadata(names, palette, (int(height), int(width)), True, output, None, None, None,
                                       int(model.output_stride), meta), device, checkpoint)

    def _infer(self, frames):
        torch = self.torch
        x = torch.from_numpy(frames)
        if self.pin:
            x = x.pin_memory()  # page-locked: the copy below runs asynchronously
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, H, W), channels-last memory
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            output = self.graph(x)
        return output.float().cpu().numpy() if output.is_floating_point() else output.cpu().numpy()

    def describe(self):
        return (f"torch {self.torch.__version__} on {self.device}, {self.precision}"
                f"{', torch.compile' if self.compiled else ', eager'}"
                f"{'' if self.device == 'cuda' else f', {self.torch.get_num_threads()} threads'}")


# ---------------------------------------------------------------- ONNX Runtime
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
        raise CirnError("running an .onnx model needs ONNX Runtime: pip install onnxruntime (CPU) or "
                        "onnxruntime-gpu (CUDA and TensorRT; it includes the CPU provider). Install one, never "
                        "both") from None
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


class OnnxRuntimeBackend(Backend):
    """An exported .onnx in ONNX Runtime: CPU, CUDA (IO binding: the output is allocated on the GPU and copied back
    once) or its TensorRT execution provider (`tensorrt=True`; engines cached in `{model}.trt-cache/`).

    threads: intra-op threads on the CPU; None = the cores available. Spinning is off: ONNX Runtime's worker threads
    would otherwise busy-wait between calls, taking the cores the decoding and encoding threads need.
    precision (TensorRT provider only): fp32 or fp16 kernels; the graph decides on TensorRT 11.
    """
    name = "onnxruntime"

    def __init__(self, path, device="cpu", threads=None, tensorrt=False, precision="auto", max_batch=4):
        from cirn.export.onnx_export import read_metadata
        ort = import_onnxruntime()
        path = Path(path)
        metadata = metadata_from_export(read_metadata(path))
        trt_options = None
        if tensorrt:
            device = "cuda"
            trt_options = self._tensorrt_options(path, metadata, precision, max_batch)
        providers = ort_providers(ort, device, tensorrt, trt_options)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = int(threads or available_cores())
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:
            raise CirnError(f"ONNX Runtime cannot load {path}: {err}") from None
        used = self.session.get_providers()
        wanted = "TensorrtExecutionProvider" if tensorrt else "CUDAExecutionProvider" if device == "cuda" else None
        if wanted and wanted not in used:
            raise CirnError(f"ONNX Runtime fell back to {', '.join(used)} instead of {wanted}: check the CUDA and "
                            "cuDNN (and TensorRT) libraries onnxruntime-gpu needs")
        self.ort, self.providers, self.tensorrt = ort, used, tensorrt
        graph_input, graph_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = graph_input.name, graph_output.name
        if graph_input.type not in ORT_TYPES:
            raise CirnError(f"{path} takes {graph_input.type} frames: expected uint8 or float input")
        self.input_dtype = ORT_TYPES[graph_input.type]
        batch = graph_input.shape[0]
        if isinstance(batch, int) and metadata.max_batch != batch:
            metadata = _replace(metadata, max_batch=batch)
        super().__init__(metadata, device, path)

    @staticmethod
    def _tensorrt_options(path, metadata, precision, max_batch):
        from cirn.export.tensorrt import ort_tensorrt_providers, profile_shapes, trt_generation
        try:
            import tensorrt
            generation = trt_generation(tensorrt.__version__)
        except ImportError:
            generation = 10  # the provider loads TensorRT's libraries itself; 10 is the oldest we support
        height, width = metadata.input_size
        profile = profile_shapes(height, width, metadata.dynamic, max_batch=max_batch,
                                 multiple=metadata.output_stride)
        precision = "fp32" if precision == "auto" else precision
        if precision not in ("fp32", "fp16"):
            raise CirnError(f"the TensorRT provider runs fp32 or fp16 kernels, not {precision}; for INT8 load "
                            "model.int8.tensorrt.onnx")
        cache = path.with_name(path.name + ".trt-cache")
        cache.mkdir(exist_ok=True)
        return ort_tensorrt_providers(precision, profile, cache, generation)

    def _infer(self, frames):
        x = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=self.input_dtype)  # (B, 3, H, W)
        if self.device == "cpu":
            return self.session.run([self.output_name], {self.input_name: x})[0]
        # IO binding: the input goes to the GPU once, the output stays there until the single copy back.
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(self.output_name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def describe(self):
        where = "TensorRT provider" if self.tensorrt else self.providers[0]
        threads = f", {self.threads} intra-op threads" if self.device == "cpu" else ""
        return f"onnxruntime {self.ort.__version__} ({where}){threads}"


def _replace(metadata, **changes):
    from dataclasses import replace
    return replace(metadata, **changes)


# ---------------------------------------------------------------- TensorRT
def import_tensorrt_runtime():
    """The tensorrt module once it and a CUDA GPU are there; a CirnError saying what is missing otherwise."""
    try:
        import tensorrt
    except ImportError:
        raise CirnError("running a TensorRT engine needs the tensorrt package (TensorRT 10 or 11) and an NVIDIA GPU: "
                        "pip install 'cirn[gpu]' on the GPU machine; or run the .onnx model with --backend "
                        "onnxruntime") from None
    import torch
    if not torch.cuda.is_available():
        raise CirnError(f"TensorRT {tensorrt.__version__} is installed but PyTorch sees no CUDA GPU (the engine's "
                        "buffers are torch CUDA tensors): run on a GPU machine with a CUDA build of PyTorch")
    return tensorrt


class TensorRTBackend(Backend):
    """A serialised TensorRT engine (with its `.json` metadata beside it), through export.tensorrt.TensorRTRunner
    (name-based tensor API of TensorRT 10 and 11, torch CUDA buffers).

    cuda_graph: capture the engine's launch for each input shape in a CUDA graph and replay it (static buffers,
    one host-to-device and one device-to-host copy per batch): less launch overhead for small models.
    """
    name = "tensorrt"

    def __init__(self, path, cuda_graph=False):
        from cirn.export.onnx_export import read_metadata
        from cirn.export.tensorrt import TensorRTRunner, trt_generation
        trt = import_tensorrt_runtime()
        trt_generation(trt.__version__)
        metadata = metadata_from_export(read_metadata(path))
        self.runner = TensorRTRunner(path, metadata.output)
        self.trt, self.cuda_graph, self._graphs = trt, bool(cuda_graph), {}
        super().__init__(metadata, "cuda", path)

    def _infer(self, frames):
        x = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # (B, 3, H, W)
        if not self.cuda_graph:
            return self.runner.run(x)[0]
        graph = self._graphs.get(x.shape) or self._capture(x.shape)
        graph["input"].copy_(self.runner.torch.from_numpy(x.astype(self.runner.input_dtype, copy=False)),
                             non_blocking=False)
        graph["graph"].replay()
        return graph["output"].cpu().numpy()

    def _capture(self, shape):
        """Static buffers and a CUDA graph of execute_async_v3 for one input shape."""
        torch, runner = self.runner.torch, self.runner
        context = runner.context
        to_torch = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32,
                    np.dtype(np.float16): torch.float16}
        x = torch.zeros(shape, dtype=to_torch[runner.input_dtype], device="cuda")
        context.set_input_shape(runner.input_name, tuple(shape))
        out_shape = tuple(context.get_tensor_shape(runner.output_name))
        out = torch.empty(out_shape, dtype=to_torch[runner.output_dtype], device="cuda")
        context.set_tensor_address(runner.input_name, x.data_ptr())
        context.set_tensor_address(runner.output_name, out.data_ptr())
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            # One launch outside the capture: TensorRT allocates and chooses lazily on the first call.
            if not context.execute_async_v3(stream.cuda_stream):
                raise CirnError("TensorRT failed to run the engine")
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            context.execute_async_v3(stream.cuda_stream)
        self._graphs[tuple(shape)] = {"graph": graph, "input": x, "output": out}
        return self._graphs[tuple(shape)]

    def describe(self):
        return f"TensorRT {self.trt.__version__}{' with CUDA graphs' if self.cuda_graph else ''}"


# ---------------------------------------------------------------- choosing one
def backend_for(model, backend=None):
    """The backend name for a model file: `backend` if given (checked against the file), else from the suffix."""
    suffix = Path(model).suffix.lower()
    if suffix not in SUFFIXES:
        raise CirnError(f"cannot tell how to run {model}: expected a .pt checkpoint, an .onnx model or a TensorRT "
                        ".engine")
    natural = SUFFIXES[suffix]
    if backend is None:
        return natural
    if backend not in BACKENDS:
        raise CirnError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == natural or (backend == "tensorrt" and natural == "onnxruntime"):
        return backend
    if natural == "torch":
        raise CirnError(f"--backend {backend} runs exported models; export {model} first (cirn-export "
                        f"{model}) and pass its model.onnx")
    raise CirnError(f"--backend {backend} cannot run a {suffix} file ({model}); it runs "
                    f"{'.pt checkpoints' if backend == 'torch' else '.onnx models'}")


def default_device(backend):
    """cuda when this machine can run `backend` on a GPU, else cpu."""
    if backend == "tensorrt":
        return "cuda"
    if backend == "torch":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        import onnxruntime
    except ImportError:
        return "cpu"
    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def open_backend(model, backend=None, device=None, precision="auto", threads=None, compile=False,
                 cuda_graph=False, output="labels", max_batch=4):
    """Load `model` in a backend: torch for .pt, onnxruntime for .onnx (tensorrt = its TensorRT provider),
    tensorrt for .engine; device None = cuda when usable, else cpu. Returns a Backend.

    precision: torch autocast (auto, fp32, fp16, bf16) or the TensorRT provider's kernels. threads: CPU threads of
    ONNX Runtime or PyTorch. compile: torch.compile. cuda_graph: TensorRT engines. output: torch's output (labels,
    probs).
    max_batch: largest batch of the TensorRT provider's profile for a dynamic model.
    """
    model = Path(model)
    if not model.is_file():
        raise CirnError(f"model {model} does not exist")
    backend = backend_for(model, backend)
    if device is not None and device not in DEVICES:
        raise CirnError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if backend == "tensorrt" and device == "cpu":
        raise CirnError("TensorRT runs on NVIDIA GPUs only: drop --device cpu, or run the .onnx model with "
                        "--backend onnxruntime --device cpu")
    device = device or default_device(backend)
    if backend == "torch":
        return TorchBackend(model, device, precision, compile, output, threads)
    if backend == "onnxruntime" or model.suffix.lower() == ".onnx":
        return OnnxRuntimeBackend(model, device, threads, tensorrt=backend == "tensorrt", precision=precision,
                                  max_batch=max_batch)
    return TensorRTBackend(model, cuda_graph)
