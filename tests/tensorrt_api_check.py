"""The child process of test_tensorrt_api.py: cirn's real TensorRT code against the REAL TensorRT and cuda-python
bindings, with every object the bindings would get from the GPU made by `create_autospec` of the real class.

Run as `python tensorrt_api_check.py REPORT.json` with `tensorrt_bindings` (TensorRT's Python bindings, loaded
over stand-in libnvinfer/libnvonnxparser/libnvinfer_plugin) and `cuda.bindings` (cuda-python) on sys.path; it
writes {scenario: {"ok": ...} or {"error": type, "message": ...}, "version": ..., "returns": ...} to REPORT.json.

How the stand-ins check our code:
- TensorRT objects (Builder, IBuilderConfig, ICudaEngine, IExecutionContext, ...) are
  `create_autospec(cls, spec_set=True, instance=True)`: reading or setting an attribute the class lacks is an
  AttributeError. Each method call is matched against the signatures pybind11 writes into the method's docstring
  (argument count, keyword names, and the types it can read: str, bool, int, Buffer, sequences, TensorRT enums and
  classes); what a stand-in returns is checked against the docstring's return type. A method this file does not
  model raises, and so does reading a property before it is set (values set on properties are checked against the
  class docstring's `:ivar name: :class:`Type``).
- The `tensorrt` module our code imports holds the real enums, Logger, Dims, nptype and IInt8EntropyCalibrator2;
  only Builder, OnnxParser and Runtime (which would reach libnvinfer) return the stand-ins.
- cuda.bindings.runtime: the real enums and handle types; the functions used are autospecs of the real Cython
  functions (their signatures are introspectable and bound on every call) running on host memory, so the engine
  stand-in really computes labels and the runner's copies in and out are checked.
"""
import ctypes
import importlib.util
import inspect
import json
import re
import sys
import tempfile
import traceback
import types
from pathlib import Path
from unittest import mock

import numpy as np
import tensorrt_bindings as real_trt
from cuda.bindings import runtime as real_cudart

# ---------------------------------------------------------------- pybind11 signatures from docstrings
SIGNATURE = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\) -> (.+)$")
UNCHECKED = set()  # annotations met that `accepts` cannot check (reported, not silently passed)


def _split_top(text, sep=","):
    """Split at `sep` outside brackets: 'a: list[int], b: X = <E.A: 0>' -> ['a: list[int]', ' b: X = <E.A: 0>']."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "[(<{"
        depth -= char in "])>}"
        if char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def overloads(func):
    """[(params, returns)] of a pybind11 function: params [(name, annotation, has_default)] without self."""
    found = []
    for line in (func.__doc__ or "").splitlines():
        match = SIGNATURE.match(line.strip())
        if not match or match.group(1) != func.__name__:
            continue
        params = []
        for part in _split_top(match.group(2)):
            name, _, rest = part.partition(":")
            annotation, eq, _ = rest.partition(" = ")
            params.append((name.strip(), annotation.strip(), bool(eq)))
        if params and params[0][0] == "self":
            params = params[1:]
        found.append((params, match.group(3).strip()))
    return found


def _resolve(annotation):
    """The real class a 'tensorrt_bindings.tensorrt.X.Y' annotation names, or None."""
    path = annotation.removeprefix("tensorrt_bindings.tensorrt.").removeprefix("tensorrt.")
    if path == annotation and annotation not in dir(real_trt):
        return None
    obj = real_trt
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def accepts(annotation, value):
    """Whether pybind11 would take `value` for `annotation` (as far as it can be told without libnvinfer)."""
    if " | " in annotation:
        return any(accepts(a, value) for a in _split_top(annotation, "|"))
    if annotation in ("object", ""):
        return True
    if annotation == "None":
        return value is None
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "bool":
        return isinstance(value, (bool, np.bool_))
    if annotation in ("int", "typing.SupportsInt"):
        return hasattr(type(value), "__index__") and not isinstance(value, float)
    if annotation in ("float", "typing.SupportsFloat"):
        return isinstance(value, (int, float, np.floating))
    if annotation in ("typing_extensions.Buffer", "collections.abc.Buffer", "buffer"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    if annotation in ("tuple", "list"):
        return isinstance(value, {"tuple": tuple, "list": list}[annotation])
    sequence = re.fullmatch(r"(?:collections\.abc\.Sequence|list|typing\.List)\[(.+)\]", annotation)
    if sequence:
        return isinstance(value, (list, tuple)) and all(accepts(sequence.group(1), v) for v in value)
    cls = _resolve(annotation)
    if cls is real_trt.IHostMemory:
        # Made by libnvinfer only. Its docstring: "exposes a buffer interface using Python's buffer protocol", and
        # dtype/nbytes (checked in main); the stand-in is a memoryview, which has both protocol and nbytes.
        return isinstance(value, memoryview)
    if cls is real_trt.Dims:
        return isinstance(value, real_trt.Dims) or (isinstance(value, (tuple, list))
                                                    and all(hasattr(type(v), "__index__") for v in value))
    if cls is not None:
        return isinstance(value, cls)  # enums are classes too; autospec instances pass as their class
    UNCHECKED.add(annotation)
    return True


def check_call(owner, name, args, kwargs):
    """The return annotation of the first overload of owner.name that takes (args, kwargs); else TypeError."""
    func = getattr(owner, name)
    candidates = overloads(func)
    if not candidates:
        raise AssertionError(f"{owner.__name__}.{name} has no pybind11 signature in its docstring")
    for params, returns in candidates:
        signature = inspect.Signature([
            inspect.Parameter(p, inspect.Parameter.POSITIONAL_ONLY if re.fullmatch(r"arg\d+", p)
                              else inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=None if has_default else inspect.Parameter.empty)
            for p, _, has_default in params])
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            continue
        annotations = {p: a for p, a, _ in params}
        if all(accepts(annotations[k], v) for k, v in bound.arguments.items()):
            return returns
    shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    raise TypeError(f"{owner.__name__}.{name}({shown}) matches none of the bindings' signatures: "
                    + " | ".join(f"({', '.join(f'{p}: {a}' for p, a, _ in ps)}) -> {r}" for ps, r in candidates))


def checked(owner, name, impl):
    """A side effect for an autospec'd method: the call checked against the docstring, then impl, its result
    checked against the return annotation. impl None: the method is not modelled here (an error if called)."""
    def call(*args, **kwargs):
        if impl is None:
            raise AssertionError(f"{owner.__name__}.{name} is called but tensorrt_api_check.py does not model it")
        returns = check_call(owner, name, args, kwargs)
        result = impl(*args, **kwargs)
        if not accepts(returns, result):
            raise TypeError(f"{owner.__name__}.{name} returns {returns}; the stand-in returned {result!r}")
        return result
    return call


IVAR = re.compile(r":ivar (\w+): :class:`([\w.]+)`")


class Slot:
    """A property of an autospec'd TensorRT object: reading it before it is set is an error; values set are
    checked against the type in the class docstring (`:ivar name: :class:`Type``)."""

    def __init__(self, cls, name):
        self.cls, self.name = cls, name
        self.annotation = dict(IVAR.findall(cls.__doc__ or "")).get(name)

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        values = vars(instance).setdefault("_slots", {})
        if self.name not in values:
            raise AssertionError(f"{self.cls.__name__}.{self.name} is read but tensorrt_api_check.py never set it")
        return values[self.name]

    def __set__(self, instance, value):
        if self.annotation and not accepts(self.annotation, value):
            raise TypeError(f"{self.cls.__name__}.{self.name} holds a {self.annotation}, got {value!r}")
        vars(instance).setdefault("_slots", {})[self.name] = value


def autospec(cls, **methods):
    """create_autospec(cls, spec_set=True, instance=True) whose methods run checked(methods[name]) and whose
    properties are Slots. Names in `methods` that this generation's class lacks are ignored (our code then meets
    the AttributeError)."""
    stand_in = mock.create_autospec(cls, spec_set=True, instance=True)
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, property):
            setattr(type(stand_in), name, Slot(cls, name))
        elif callable(getattr(cls, name)) and not isinstance(getattr(cls, name), type):
            getattr(stand_in, name).side_effect = checked(cls, name, methods.get(name))
    return stand_in


def constructor(cls, make):
    """trt.Builder / OnnxParser / Runtime: the call checked against cls.__init__'s docstring, then make(*args)."""
    def construct(*args, **kwargs):
        check_call(cls, "__init__", args, kwargs)
        return make(*args, **kwargs)
    return construct


# ---------------------------------------------------------------- cuda-python on host memory
class Device:
    """cuda.bindings.runtime with host memory for device memory: `module` is what import_cudart returns."""

    FUNCTIONS = ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaStreamCreate", "cudaStreamDestroy",
                 "cudaStreamSynchronize", "cudaMalloc", "cudaFree", "cudaMemcpy", "cudaMemcpyAsync",
                 "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch",
                 "cudaGraphDestroy", "cudaGraphExecDestroy")

    def __init__(self):
        self.memory, self.streams, self.graphs = {}, set(), {}
        self.next_ptr, self.capturing, self.launches, self.stream_of_launches = 1 << 20, None, 0, set()
        device = self

        class Module(types.ModuleType):
            def __getattr__(self, name):
                value = getattr(real_cudart, name)  # AttributeError: the real bindings lack it
                if name in Device.FUNCTIONS:
                    value = device._function(name)
                elif callable(value) and not isinstance(value, type):
                    raise AssertionError(f"cudart.{name} is used but tensorrt_api_check.py does not model it")
                setattr(self, name, value)
                return value

        self.module = Module("cuda.bindings.runtime (stand-in)")

    def _function(self, name):
        real, impl = getattr(real_cudart, name), getattr(self, "_" + name)
        signature = inspect.signature(real)

        def call(*args, **kwargs):
            signature.bind(*args, **kwargs)  # the real Cython signature (autospec skips Cython functions)
            return impl(*args, **kwargs)
        return mock.create_autospec(real, side_effect=call)

    @staticmethod
    def ok(*values):
        return (real_cudart.cudaError_t.cudaSuccess, *values)

    def _expect(self, value, cls, what):
        if not isinstance(value, cls):
            raise TypeError(f"{what} takes a {cls.__name__}, got {value!r}")

    def _cudaGetDeviceCount(self):
        return self.ok(1)

    def _cudaGetDeviceProperties(self, device):
        props = real_cudart.cudaDeviceProp()
        props.name = b"Stand-in GPU".ljust(256, b"\0")
        return self.ok(props)

    def _cudaStreamCreate(self):
        stream = real_cudart.cudaStream_t(len(self.streams) + 0x5000)
        self.streams.add(int(stream))
        return self.ok(stream)

    def _cudaStreamDestroy(self, stream):
        self._expect(stream, real_cudart.cudaStream_t, "cudaStreamDestroy")
        self.streams.remove(int(stream))
        return self.ok()

    def _cudaStreamSynchronize(self, stream):
        self._expect(stream, real_cudart.cudaStream_t, "cudaStreamSynchronize")
        return self.ok()

    def _cudaMalloc(self, size):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + size + 4096
        self.memory[ptr] = bytearray(size)
        return self.ok(ptr)

    def _cudaFree(self, ptr):
        del self.memory[ptr]
        return self.ok()

    def _copy(self, dst, src, count, kind):
        self._expect(kind, real_cudart.cudaMemcpyKind, "cudaMemcpy")
        if kind == real_cudart.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:count] = ctypes.string_at(src, count)
        elif kind == real_cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            ctypes.memmove(dst, bytes(self.memory[src][:count]), count)
        else:
            raise AssertionError(f"unexpected copy kind {kind}")
        return self.ok()

    def _cudaMemcpy(self, dst, src, count, kind):
        return self._copy(dst, src, count, kind)

    def _cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self._expect(stream, real_cudart.cudaStream_t, "cudaMemcpyAsync")
        return self._copy(dst, src, count, kind)

    def _cudaStreamBeginCapture(self, stream, mode):
        self._expect(mode, real_cudart.cudaStreamCaptureMode, "cudaStreamBeginCapture")
        self.capturing = []
        return self.ok()

    def _cudaStreamEndCapture(self, stream):
        graph = real_cudart.cudaGraph_t(len(self.graphs) + 0x7000)
        self.graphs[int(graph)], self.capturing = self.capturing, None
        return self.ok(graph)

    def _cudaGraphInstantiate(self, graph, flags):
        self._expect(graph, real_cudart.cudaGraph_t, "cudaGraphInstantiate")
        self._expect(flags, int, "cudaGraphInstantiate's flags")
        return self.ok(real_cudart.cudaGraphExec_t(int(graph)))

    def _cudaGraphDestroy(self, graph):
        self._expect(graph, real_cudart.cudaGraph_t, "cudaGraphDestroy")
        return self.ok()

    def _cudaGraphExecDestroy(self, graph_exec):
        self._expect(graph_exec, real_cudart.cudaGraphExec_t, "cudaGraphExecDestroy")
        self.graphs.pop(int(graph_exec))
        return self.ok()

    def _cudaGraphLaunch(self, graph_exec, stream):
        self._expect(graph_exec, real_cudart.cudaGraphExec_t, "cudaGraphLaunch")
        for launch in self.graphs[int(graph_exec)]:
            launch()
        return self.ok()

    def enqueue(self, stream_handle, launch):
        """What execute_async_v3 does with a launch: recorded while capturing, else run now."""
        if int(stream_handle) not in self.streams:
            raise AssertionError(f"enqueued on stream {stream_handle}, not one made by cudaStreamCreate")
        self.stream_of_launches.add(int(stream_handle))
        if self.capturing is not None:
            self.capturing.append(launch)
        else:
            launch()


# ---------------------------------------------------------------- the tensorrt module our code imports
def tensorrt_module(builder=None, parser=None, runtime=None):
    """The `tensorrt` module as pip's tensorrt package makes it (its __init__.py: `from tensorrt_bindings import *`
    and __version__), whose Builder, OnnxParser and Runtime return stand-ins."""
    trt = types.ModuleType("tensorrt")
    exec("from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__", trt.__dict__)
    trt.Builder = constructor(real_trt.Builder, lambda logger: builder)
    trt.OnnxParser = constructor(real_trt.OnnxParser, lambda network, logger: parser)
    trt.Runtime = constructor(real_trt.Runtime, lambda logger: runtime)
    return trt


def load_cirn(device, trt):
    """cirn.runtime.tensorrt and cirn.export.tensorrt with `trt` as tensorrt and `device` as cuda-python.

    export/tensorrt.py is loaded from its file: importing the cirn.export package would import torch (seconds),
    and the module itself needs only numpy and cirn.runtime."""
    sys.modules["tensorrt"] = trt
    import cirn.runtime.tensorrt as runtime_tensorrt
    runtime_tensorrt.import_cudart = lambda: device.module
    folder = importlib.util.find_spec("cirn.export").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("cirn_export_tensorrt", Path(folder) / "tensorrt.py")
    export_tensorrt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_tensorrt)
    export_tensorrt.import_cudart = lambda: device.module  # imported by name there
    return runtime_tensorrt, export_tensorrt


# ---------------------------------------------------------------- scenarios
def build(precision, input_dtype="uint8", force_generation=None):
    """build_engine of `precision` with a timing cache and calibration frames; TensorRT's side simulated, including
    calling the TensorRT 10 calibrator as TensorRT does (get_batch_size, get_batch until None, the cache)."""
    device = Device()
    dtype = {"uint8": real_trt.DataType.UINT8, "float32": real_trt.DataType.FLOAT}[input_dtype]
    tensor = autospec(real_trt.ITensor)
    tensor.name, tensor.dtype = "frames", dtype
    network = autospec(real_trt.INetworkDefinition, get_input=lambda index: tensor)
    parser = autospec(real_trt.OnnxParser, parse_from_file=lambda model: True)
    profiles, flags, calibrated = [], [], []

    def new_profile():
        shapes = {}
        profile = autospec(real_trt.IOptimizationProfile,
                           set_shape=lambda input, min, opt, max: shapes.update({input: (min, opt, max)}))
        profiles.append((profile, shapes))
        return profile

    timing_cache = autospec(real_trt.ITimingCache, serialize=lambda: memoryview(b"timing cache"))
    config = autospec(real_trt.IBuilderConfig, set_memory_pool_limit=lambda pool, pool_size: None,
                      add_optimization_profile=lambda profile: 0, set_flag=flags.append,
                      set_calibration_profile=lambda profile: True,
                      create_timing_cache=lambda serialized_timing_cache: timing_cache,
                      set_timing_cache=lambda cache, ignore_mismatch: True)

    def build_serialized_network(network, config):
        if real_trt.BuilderFlag.__members__.get("INT8") in flags:
            calibrated.extend(calibrate(config.int8_calibrator, device, input_dtype))
        return memoryview(f"{precision} engine".encode())

    builder = autospec(real_trt.Builder, create_network=lambda flags=0: network,
                       create_builder_config=lambda: config, create_optimization_profile=new_profile,
                       build_serialized_network=build_serialized_network)
    trt = tensorrt_module(builder=builder, parser=parser)
    runtime_tensorrt, export_tensorrt = load_cirn(device, trt)
    if force_generation:
        export_tensorrt.trt_generation = lambda version: force_generation
    generation = export_tensorrt.trt_generation(trt.__version__)

    frames = [np.random.default_rng(i).integers(0, 256, (3, 16, 32), dtype=np.uint8) for i in range(3)]
    profile = runtime_tensorrt.profile_shapes(16, 32, dynamic=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "model.onnx").write_bytes(b"onnx")
        engine_path, cache_path = tmp / "model.engine", tmp / "tensorrt.timing.cache"
        info = export_tensorrt.build_engine(tmp / "model.onnx", engine_path, precision, profile,
                                            calibration_frames=frames, timing_cache=cache_path, log=lambda s: None)
        assert engine_path.read_bytes() == f"{precision} engine".encode()
        assert cache_path.read_bytes() == b"timing cache"
        calib_file = engine_path.with_name("model.engine.calib")
        calib_written = calib_file.read_bytes() if calib_file.is_file() else None

    flag = real_trt.BuilderFlag.__members__
    expected_flags = [] if generation >= 11 else {"fp32": [], "fp16": [flag.get("FP16")],
                                                  "int8": [flag.get("FP16"), flag.get("INT8")]}[precision]
    assert flags == expected_flags, (flags, expected_flags)
    assert config.set_memory_pool_limit.call_args == mock.call(real_trt.MemoryPoolType.WORKSPACE, 4 << 30)
    optimisation, shapes = profiles[0]
    assert shapes == {"frames": (profile["min"], profile["opt"], profile["max"])}
    assert config.add_optimization_profile.call_args == mock.call(optimisation)
    assert config.set_timing_cache.call_args == mock.call(timing_cache, ignore_mismatch=False)
    assert config.create_timing_cache.call_args == mock.call(b"")
    if generation < 11 and precision == "int8":
        one_frame = (1, 3, 16, 32)
        calibration, shapes = profiles[1]
        assert shapes == {"frames": (one_frame,) * 3}
        assert config.set_calibration_profile.call_args == mock.call(calibration)
        expected = [f[None].astype(input_dtype).tobytes() for f in frames]
        assert calibrated == expected, "the calibrator handed TensorRT other bytes than the frames in the input dtype"
        assert calib_written == b"calibration table"
    else:
        assert len(profiles) == 1 and calibrated == [] and calib_written is None
    assert info["device"] == "Stand-in GPU" and info["generation"] == generation
    assert device.memory == {}, "device memory left allocated after the build"
    return {"flags": [str(f) for f in flags], "generation": generation}


def calibrate(calibrator, device, input_dtype):
    """TensorRT 10's side of calibration: the overrides called through the real base class's signatures."""
    base = real_trt.IInt8EntropyCalibrator2
    assert isinstance(calibrator, base)
    ours = [n for n in vars(type(calibrator)) if not n.startswith("_")]
    missing = [n for n in ours if not hasattr(base, n)]
    assert not missing, f"the calibrator defines {missing}, which TensorRT never calls (not in {base.__name__})"

    def call(name, *args):
        returns = check_call(base, name, args, {})
        result = getattr(calibrator, name)(*args)
        none_allowed = name in ("get_batch", "read_calibration_cache")  # their docstrings: "return None"
        if not (accepts(returns, result) or (none_allowed and result is None)):
            raise TypeError(f"the calibrator's {name} returns {result!r}, TensorRT reads {returns}")
        return result

    assert call("get_batch_size") == 1
    assert call("read_calibration_cache") is None
    nbytes = 3 * 16 * 32 * np.dtype(input_dtype).itemsize
    batches = []
    while (pointers := call("get_batch", ["frames"])) is not None:
        batches.append(bytes(device.memory[pointers[0]][:nbytes]))
    call("write_calibration_cache", memoryview(b"calibration table"))
    assert call("read_calibration_cache") == b"calibration table"
    return batches


def run_engine(cuda_graph):
    """open_backend on a .engine: EngineRunner and TensorRTBackend over an engine stand-in that sums the channels of
    its (B, 3, H, W) uint8 input into (B, H, W) labels; two shapes, a repeat, a shape outside the profile, close."""
    device = Device()
    low, high = (1, 3, 8, 8), (4, 3, 64, 64)
    contexts = []

    def new_context(*args, **kwargs):
        state = {"addresses": {}}

        def set_input_shape(name, shape):
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                return False
            state["shape"] = tuple(shape)
            return True

        def execute_async_v3(stream_handle):
            def launch(shape=state["shape"], src=state["addresses"]["frames"], dst=state["addresses"]["labels"]):
                device.launches += 1
                x = np.frombuffer(bytes(device.memory[src][:int(np.prod(shape))]), np.uint8).reshape(shape)
                labels = (x.astype(np.int64).sum(axis=1) % 19).astype(np.uint8)
                device.memory[dst][:labels.nbytes] = labels.tobytes()
            device.enqueue(stream_handle, launch)
            return True

        context = autospec(
            real_trt.IExecutionContext, set_input_shape=set_input_shape,
            get_tensor_shape=lambda name: real_trt.Dims((state["shape"][0], *state["shape"][2:])),
            set_tensor_address=lambda name, memory: bool(state["addresses"].update({name: memory})
                                                         or memory in device.memory),
            execute_async_v3=execute_async_v3)
        contexts.append(context)
        return context

    io = real_trt.TensorIOMode
    engine = autospec(real_trt.ICudaEngine, get_tensor_name=lambda index: ("frames", "labels")[index],
                      get_tensor_mode=lambda name: io.INPUT if name == "frames" else io.OUTPUT,
                      get_tensor_dtype=lambda name: real_trt.DataType.UINT8,
                      create_execution_context=new_context)
    engine.num_io_tensors = 2
    runtime = autospec(real_trt.Runtime, deserialize_cuda_engine=lambda serialized_engine: engine)
    trt = tensorrt_module(runtime=runtime)
    load_cirn(device, trt)
    from cirn.common.errors import CirnError
    from cirn.runtime import open_backend

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.engine"
        path.write_bytes(b"serialized engine")
        meta = {"cirn_version": "0.1.0", "class_names": [f"c{i}" for i in range(19)], "palette": None,
                "input_size_hw": [16, 32], "dynamic": True, "output": "labels", "output_stride": 8,
                "tensorrt": {"profile": {"min": list(low), "opt": [1, 3, 16, 32], "max": list(high)}}}
        (Path(tmp) / "model.engine.json").write_text(json.dumps(meta))
        backend = open_backend(path, cuda_graph=cuda_graph)
        assert runtime.deserialize_cuda_engine.call_args == mock.call(b"serialized engine")
        rng = np.random.default_rng(0)
        for shape in [(2, 16, 32, 3), (2, 16, 32, 3), (1, 32, 64, 3)]:
            frames = rng.integers(0, 256, shape, dtype=np.uint8)  # (B, H, W, 3)
            labels = backend(frames)
            assert np.array_equal(labels, (frames.astype(np.int64).sum(axis=-1) % 19).astype(np.uint8))
        try:  # the runner itself (the backend refuses sizes outside the sidecar's profile before it)
            backend.runner.run(np.zeros((1, 3, 128, 128), np.uint8))
            raise AssertionError("a shape outside the profile was accepted")
        except CirnError as err:
            assert "outside its optimisation profile" in str(err)
        description = backend.describe()
        assert len(device.graphs) == (2 if cuda_graph else 0)  # one executable graph per shape
        backend.close()
    assert device.memory == {} and device.streams == set() and device.graphs == {}  # close frees all of it
    assert len(contexts) == (3 if cuda_graph else 1)  # with graphs: a context per shape (the refused one too)
    assert len(device.stream_of_launches) == 1
    return {"contexts": len(contexts), "launches": device.launches, "describe": description}


def returns_relied_on():
    """The docstring return types of the TensorRT calls whose result our code branches on or writes."""
    calls = [("OnnxParser", "parse_from_file"), ("IBuilderConfig", "add_optimization_profile"),
             ("IBuilderConfig", "set_calibration_profile"), ("IBuilderConfig", "set_timing_cache"),
             ("Builder", "build_serialized_network"), ("ITimingCache", "serialize"),
             ("Runtime", "deserialize_cuda_engine"), ("IExecutionContext", "set_input_shape"),
             ("IExecutionContext", "set_tensor_address"), ("IExecutionContext", "execute_async_v3"),
             ("IExecutionContext", "get_tensor_shape")]
    found = {}
    for cls, name in calls:
        func = getattr(getattr(real_trt, cls), name, None)
        if func is not None:
            found[f"{cls}.{name}"] = sorted({r.removeprefix("tensorrt_bindings.tensorrt.") for _, r in overloads(func)})
    return found


SCENARIOS = {
    "build-fp32": lambda: build("fp32"),
    "build-fp16": lambda: build("fp16"),
    "build-int8": lambda: build("int8"),
    "build-int8-float32-input": lambda: build("int8", input_dtype="float32"),
    "run": lambda: run_engine(cuda_graph=False),
    "run-cuda-graph": lambda: run_engine(cuda_graph=True),
    "build-fp16-as-generation-10": lambda: build("fp16", force_generation=10),
    "build-int8-as-generation-10": lambda: build("int8", force_generation=10),
}


def main(report_path):
    host_memory = {n for n in dir(real_trt.IHostMemory) if not n.startswith("_")}
    assert "buffer protocol" in real_trt.IHostMemory.__doc__ and host_memory <= {"dtype", "nbytes"}, host_memory
    report = {"version": real_trt.__version__, "returns": returns_relied_on()}
    for name, scenario in SCENARIOS.items():
        try:
            report[name] = {"ok": scenario()}
        except Exception as err:  # reported to the test, which says which scenarios must pass or fail
            report[name] = {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    report["unchecked_annotations"] = sorted(UNCHECKED)
    Path(report_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
