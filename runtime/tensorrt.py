"""TensorRT engines at run time, without torch: the one "is TensorRT usable here" check, optimisation profiles, and a
runner whose device memory and stream come from NVIDIA's cuda-python bindings.

TensorRT 10 and 11 share the name-based tensor API used here (set_input_shape, set_tensor_address,
execute_async_v3); cirn-export builds the engines (export/tensorrt.py) and checks them through EngineRunner.
"""
import numpy as np

from cirn.common.errors import CirnError
from cirn.common.metadata import from_dict, read_sidecar

from .backends import Backend


# ---------------------------------------------------------------- is TensorRT usable here
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


def import_cudart():
    """cuda-python's runtime bindings (cuda.bindings.runtime; cuda.cudart in cuda-python < 12.6), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def cuda_device_count():
    """How many CUDA GPUs the driver shows (0 without a driver, a GPU or cuda-python)."""
    cudart = import_cudart()
    if cudart is None:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def require_tensorrt(otherwise):
    """The tensorrt module once it, cuda-python and a CUDA GPU are there; a CirnError saying which is missing,
    ending with `otherwise` (what the user can do instead). Call it before writing anything."""
    try:
        import tensorrt
    except ImportError as err:
        raise CirnError(f"TensorRT needs the tensorrt package (TensorRT 10 or 11), which cannot be imported "
                        f"here ({err}): pip install 'cirn[gpu]' on a machine with an NVIDIA GPU; {otherwise}") from None
    version = getattr(tensorrt, "__version__", "?")
    trt_generation(version)  # refuses versions we do not support, before any work
    if import_cudart() is None:
        raise CirnError(f"TensorRT {version} is installed but cuda-python (GPU memory and streams) is not: "
                        f"pip install 'cirn[gpu]'; {otherwise}")
    if cuda_device_count() < 1:
        raise CirnError(f"TensorRT {version} is installed but no GPU is visible (no CUDA device or driver); "
                        f"{otherwise}")
    return tensorrt


def cuda_check(result, what):
    """The value(s) of a cuda-python call's (err, *values) tuple; a CirnError naming `what` on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    cudart = import_cudart()
    if err != cudart.cudaError_t.cudaSuccess:
        raise CirnError(f"CUDA failed in {what}: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else tuple(values) or None


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


# ---------------------------------------------------------------- running an engine
class DeviceBuffer:
    """cudaMalloc'd memory, grown when a larger shape needs it."""

    def __init__(self):
        self.ptr, self.nbytes = None, 0

    def ensure(self, nbytes, cudart):
        if nbytes > self.nbytes:
            self.free(cudart)
            self.ptr, self.nbytes = cuda_check(cudart.cudaMalloc(nbytes), "cudaMalloc"), nbytes
        return self.ptr

    def free(self, cudart):
        if self.ptr is not None:
            cuda_check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr, self.nbytes = None, 0


class EngineRunner:
    """A serialised engine with one input and one output: `run(frames (B, 3, H, W))` -> the output as a host array.

    One dedicated stream and device buffers reused per shape (grown when needed). With `cuda_graph`, each input
    shape gets its own execution context whose launch is captured once in a CUDA graph and replayed.
    """

    def __init__(self, engine_path, cuda_graph=False):
        trt = require_tensorrt("or run the .onnx model with --backend onnxruntime")
        self.trt, self.cudart = trt, import_cudart()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise CirnError(f"TensorRT {trt.__version__} cannot load the engine {engine_path} (built by another "
                            "TensorRT version or for another GPU? rebuild it with cirn-export --format tensorrt)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise CirnError(f"{engine_path} has {len(inputs)} inputs and {len(outputs)} outputs; a cirn engine has one "
                            "of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.stream = cuda_check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.cuda_graph = bool(cuda_graph)
        self._contexts = {}  # input shape -> {context, input, output, out_shape, graph}

    def _context(self, shape):
        """The execution context, buffers and (with cuda_graph) graph for one input shape, made on first use."""
        if shape in self._contexts:
            return self._contexts[shape]
        if self._contexts and not self.cuda_graph:  # one context serves every shape: reset its shape only
            slot = next(iter(self._contexts.values()))
        else:
            context = self.engine.create_execution_context()
            if context is None:
                raise CirnError("TensorRT could not create an execution context (out of GPU memory?)")
            slot = {"context": context, "input": DeviceBuffer(), "output": DeviceBuffer(), "graph": None}
        context = slot["context"]
        if not context.set_input_shape(self.input_name, tuple(shape)):
            raise CirnError(f"the engine does not take input shape {shape_string(shape)}: it is outside its "
                            "optimisation profile; rebuild the engine for that size or choose another --imgsz")
        out_shape = tuple(context.get_tensor_shape(self.output_name))
        in_ptr = slot["input"].ensure(int(np.prod(shape)) * self.input_dtype.itemsize, self.cudart)
        out_ptr = slot["output"].ensure(int(np.prod(out_shape)) * self.output_dtype.itemsize, self.cudart)
        if not (context.set_tensor_address(self.input_name, in_ptr)
                and context.set_tensor_address(self.output_name, out_ptr)):
            raise CirnError("TensorRT refused the engine's buffer addresses")
        slot = {**slot, "out_shape": out_shape}
        if self.cuda_graph:
            slot["graph"] = self._capture(context)
            self._contexts[shape] = slot
        else:
            self._contexts = {shape: slot}
        return slot

    def _capture(self, context):
        """One launch outside the capture (TensorRT allocates and chooses lazily), then a CUDA graph of the next."""
        cudart, stream = self.cudart, self.stream
        self._execute(context)
        cuda_check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        self._execute(context)
        graph = cuda_check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        graph_exec = cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        cuda_check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable graph keeps what it needs
        return graph_exec

    def _execute(self, context):
        if not context.execute_async_v3(int(self.stream)):
            raise CirnError("TensorRT failed to enqueue the engine (execute_async_v3 returned False)")

    def run(self, frames):
        """(B, 3, H, W) frames -> the engine's output (host array)."""
        cudart = self.cudart
        x = np.ascontiguousarray(frames, dtype=self.input_dtype)
        slot = self._context(tuple(x.shape))
        out = np.empty(slot["out_shape"], self.output_dtype)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(cudart.cudaMemcpyAsync(slot["input"].ptr, x.ctypes.data, x.nbytes, h2d, self.stream), "copy")
        if slot["graph"] is not None:
            cuda_check(cudart.cudaGraphLaunch(slot["graph"], self.stream), "cudaGraphLaunch")
        else:
            self._execute(slot["context"])
        cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, slot["output"].ptr, out.nbytes, d2h, self.stream), "copy")
        cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    def close(self):
        """Free the device buffers and the stream."""
        for slot in self._contexts.values():
            if slot["graph"] is not None:
                cuda_check(self.cudart.cudaGraphExecDestroy(slot["graph"]), "cudaGraphExecDestroy")
            slot["input"].free(self.cudart)
            slot["output"].free(self.cudart)
        self._contexts = {}
        if self.stream is not None:
            cuda_check(self.cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class TensorRTBackend(Backend):
    """A serialised TensorRT engine (its metadata in the `.json` beside it), run by EngineRunner.

    cuda_graph: capture the engine's launch for each input shape in a CUDA graph and replay it (less launch
    overhead for small models).
    """
    name = "tensorrt"

    def __init__(self, path, cuda_graph=False):
        require_tensorrt("or run the .onnx model with --backend onnxruntime")  # first: it says what to install
        metadata = from_dict(read_sidecar(path), str(path))
        self.runner = EngineRunner(path, cuda_graph)
        self.cuda_graph = bool(cuda_graph)
        super().__init__(metadata, "cuda", path)

    def _infer(self, frames):
        return self.runner.run(frames.transpose(0, 3, 1, 2))  # (B, 3, H, W)

    def describe(self):
        return f"TensorRT {self.runner.trt.__version__}{' with CUDA graphs' if self.cuda_graph else ''}"

    def close(self):
        self.runner.close()
