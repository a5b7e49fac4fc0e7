"""The torch-free TensorRT runner (runtime/tensorrt.py) against fakes of cuda-python and TensorRT: device memory
lives in bytearrays, the "engine" sums the channels of its (B, 3, H, W) uint8 input into (B, H, W) labels. What
this checks: the copies in and out, one buffer reused and grown per shape, a context per shape with CUDA graphs,
and that every boolean TensorRT returns is checked. The real bindings run only on a GPU (test_export.py)."""
import ctypes
import json
import types

import numpy as np
import pytest

import cirn.runtime.tensorrt as rt
from cirn.common.errors import CirnError
from cirn.runtime import open_backend


class FakeCudart:
    """The slice of cuda.bindings.runtime the runner uses, with (err, value) returns."""

    class cudaError_t:  # noqa: N801 (the bindings' names)
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self):
        self.memory, self.next_ptr, self.mallocs, self.launches, self.captured = {}, 4096, 0, 0, []
        self.capturing = None

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaStreamCreate(self):
        return 0, 77

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaMalloc(self, nbytes):
        self.mallocs += 1
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 4096
        self.memory[ptr] = bytearray(nbytes)
        return 0, ptr

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:nbytes] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:nbytes]), nbytes)
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        self.captured.append(graph)
        return 0, graph

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph):
        self.captured.remove(graph)
        return (0,)

    def cudaGraphLaunch(self, graph, stream):
        for launch in graph:
            launch()
        return (0,)


class FakeContext:
    def __init__(self, cudart, engine):
        self.cudart, self.engine, self.shape, self.addresses = cudart, engine, None, {}

    def set_input_shape(self, name, shape):
        if not all(lo <= s <= hi for lo, s, hi in zip(self.engine.profile[0], shape, self.engine.profile[1])):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch, _, height, width = self.shape
        return (batch, height, width)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return ptr in self.cudart.memory

    def execute_async_v3(self, stream):
        def launch(shape=self.shape, src=self.addresses["frames"], dst=self.addresses["labels"]):
            self.cudart.launches += 1
            x = np.frombuffer(bytes(self.cudart.memory[src][:int(np.prod(shape))]), np.uint8).reshape(shape)
            labels = (x.astype(np.int64).sum(axis=1) % 19).astype(np.uint8)
            self.cudart.memory[dst][:labels.nbytes] = labels.tobytes()
        if self.engine.fail:
            return False
        if self.cudart.capturing is not None:
            self.cudart.capturing.append(launch)
        else:
            launch()
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, cudart, trt, profile, fail=False):
        self.cudart, self.trt, self.profile, self.fail, self.contexts = cudart, trt, profile, fail, 0

    def get_tensor_name(self, index):
        return ("frames", "labels")[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "frames" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return "uint8"

    def create_execution_context(self):
        self.contexts += 1
        return FakeContext(self.cudart, self)


def fake_tensorrt(cudart, profile=((1, 3, 8, 8), (4, 3, 64, 64)), fail=False):
    trt = types.SimpleNamespace(__version__="10.9.0", TensorIOMode=types.SimpleNamespace(INPUT=0, OUTPUT=1),
                                nptype=np.dtype)
    trt.engine = FakeEngine(cudart, trt, profile, fail)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: trt.engine)
    return trt


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    monkeypatch.setattr(rt, "import_cudart", lambda: cudart)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    meta = {"cirn_version": "0.1.0", "class_names": [f"c{i}" for i in range(19)], "palette": None,
            "input_size_hw": [16, 32], "dynamic": True, "output": "labels", "output_stride": 8,
            "tensorrt": {"profile": {"min": [1, 3, 8, 8], "opt": [1, 3, 16, 32], "max": [4, 3, 64, 64]}}}
    (tmp_path / "model.engine.json").write_text(json.dumps(meta))
    return cudart, trt, engine


def expected(frames_nhwc):
    return (frames_nhwc.astype(np.int64).sum(axis=-1) % 19).astype(np.uint8)


def test_engine_runner_copies_in_and_out_and_reuses_its_buffers(fakes):
    cudart, trt, engine = fakes
    backend = open_backend(engine)
    assert backend.name == "tensorrt" and backend.metadata.max_batch == 4
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 32, 3), dtype=np.uint8)
    assert np.array_equal(backend(frames), expected(frames))
    assert np.array_equal(backend(frames[:1]), expected(frames[:1]))  # smaller: same buffers
    assert cudart.mallocs == 2 and trt.engine.contexts == 1
    bigger = np.random.default_rng(1).integers(0, 256, (3, 32, 64, 3), dtype=np.uint8)
    assert np.array_equal(backend(bigger), expected(bigger))  # larger: grown, still one context
    assert cudart.mallocs == 4 and trt.engine.contexts == 1 and len(cudart.memory) == 2
    backend.close()
    assert cudart.memory == {}


def test_cuda_graphs_capture_once_per_shape_and_replay(fakes):
    cudart, trt, engine = fakes
    backend = open_backend(engine, cuda_graph=True)
    frames = np.random.default_rng(2).integers(0, 256, (1, 16, 32, 3), dtype=np.uint8)
    for _ in range(3):
        assert np.array_equal(backend(frames), expected(frames))
    other = np.random.default_rng(3).integers(0, 256, (2, 8, 16, 3), dtype=np.uint8)
    assert np.array_equal(backend(other), expected(other))
    assert len(cudart.captured) == 2 and trt.engine.contexts == 2  # one context and graph per shape
    assert cudart.launches == 2 + 3 + 1  # a launch before each capture, then the replays
    backend.close()
    assert cudart.captured == [] and cudart.memory == {}


def test_a_shape_outside_the_profile_and_a_failed_launch_are_clear_errors(fakes, monkeypatch):
    cudart, trt, engine = fakes
    runner = rt.EngineRunner(engine)
    with pytest.raises(CirnError, match="outside its optimisation profile"):
        runner.run(np.zeros((1, 3, 128, 128), np.uint8))
    trt.engine.fail = True
    with pytest.raises(CirnError, match="execute_async_v3 returned False"):
        runner.run(np.zeros((1, 3, 16, 16), np.uint8))
    monkeypatch.setattr(cudart, "cudaMalloc", lambda nbytes: (cudart.cudaError_t.cudaErrorMemoryAllocation, 0))
    with pytest.raises(CirnError, match="cudaMalloc"):
        rt.EngineRunner(engine).run(np.zeros((1, 3, 16, 16), np.uint8))


def test_no_gpu_or_no_cuda_python_says_what_is_missing(fakes, monkeypatch):
    cudart, trt, engine = fakes
    monkeypatch.setattr(rt, "cuda_device_count", lambda: 0)
    with pytest.raises(CirnError, match="no GPU is visible"):
        open_backend(engine)
    monkeypatch.setattr(rt, "import_cudart", lambda: None)
    with pytest.raises(CirnError, match="cuda-python"):
        open_backend(engine)
