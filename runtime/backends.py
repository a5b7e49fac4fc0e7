"""Inference backends behind one small interface: PyTorch checkpoints, ONNX Runtime and TensorRT engines.

    backend = open_backend("runs/oracle/export/model.onnx")   # chosen from the suffix: .pt, .onnx, .engine
    backend.warmup((128, 256), batch=4)
    labels = backend(frames)   # (B, H, W, 3) uint8 RGB at an accepted size -> (B, H, W) uint8 trainIds
    backend.metadata.class_names, backend.metadata.palette, backend.metadata.input_size_hw

Every backend runs the same deployed graph (RGB 0-255 in, normalisation, C + ACM, upsampling and argmax inside), so
they differ only in speed and in the last bits of the logits. A model exported with probs or logits yields
(B, C, H, W) float32 probabilities instead of labels (`to_labels` takes the argmax). Frames are (B, H, W, 3) as
decoders give them; the backends transpose to the graph's (B, 3, H, W).

The ONNX Runtime (ort.py) and TensorRT (tensorrt.py) backends need numpy and their own library only; torch and the
model code are imported only when a .pt checkpoint is opened. A missing library or GPU is a CirnError that says
what to install.
"""
import abc
import os
import time
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError
from cirn.common.metadata import ModelMetadata

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # int8: the TensorRT provider on a Q/DQ graph
TORCH_PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # autocast
SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
            ".trt": "tensorrt"}


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
        if not meta.dynamic and size != tuple(meta.input_size_hw):
            raise CirnError(f"the model takes {meta.input_size_hw[1]}x{meta.input_size_hw[0]} frames only (a static "
                            f"export), not {size[1]}x{size[0]}; re-export it with --dynamic to choose the size")
        low, high = meta.min_size_hw, meta.max_size_hw
        if low and not all(lo <= s <= hi for lo, s, hi in zip(low, size, high)):
            raise CirnError(f"{size[1]}x{size[0]} is outside the engine's profile ({low[1]}x{low[0]} to "
                            f"{high[1]}x{high[0]}); rebuild the engine for that size or choose another --imgsz")

    def warmup(self, size=None, batch=1, runs=2):
        """Run `runs` batches of black frames at size (H, W) (default: the model's) so that lazy initialisation,
        kernel selection and compilation happen before anything is timed; returns the seconds it took."""
        size = tuple(size or self.metadata.input_size_hw)
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
    """A cirn checkpoint (.pt) in PyTorch: checkpoint.load_model wrapped in export's DeployModel, eager by default.

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
        from cirn.train.checkpoint import load_model
        from cirn.train.labelmaps import checkpoint_class_set
        if device == "cuda" and not torch.cuda.is_available():
            raise CirnError("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                            "run on the CPU with --device cpu, or install a CUDA build of PyTorch on a GPU machine")
        if precision not in TORCH_PRECISIONS:
            raise CirnError(f"the torch backend runs {', '.join(TORCH_PRECISIONS)}, not {precision!r}: for INT8 "
                            "export the model (cirn-export --int8) and run model.int8.onnx")
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
        names, palette = checkpoint_class_set(state)
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
    """The device when none is given: cuda for engines; for checkpoints cuda when PyTorch sees a GPU; for ONNX
    models `auto` (OnnxRuntimeBackend opens a CUDA session and keeps it only if it really runs on the GPU)."""
    if backend == "tensorrt":
        return "cuda"
    if backend == "torch":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "auto"


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
        from .ort import OnnxRuntimeBackend
        return OnnxRuntimeBackend(model, device, threads, tensorrt=backend == "tensorrt", precision=precision,
                                  max_batch=max_batch)
    from .tensorrt import TensorRTBackend
    return TensorRTBackend(model, cuda_graph)
