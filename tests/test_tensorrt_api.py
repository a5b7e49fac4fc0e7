"""cirn's TensorRT code against the real TensorRT 10 and 11 Python bindings and cuda-python, without a GPU; and the
ONNX Runtime GPU provider options against onnxruntime-gpu's provider libraries.

What it checks, on TensorRT 10.16.1.11 for CUDA 12 (tensorrt-cu12-bindings, with cuda-bindings 12.9.4) and for
CUDA 13 (tensorrt-cu13-bindings 10.16.1.11: what the `gpu` extra installs, the TensorRT that onnxruntime-gpu 1.31's
provider links; with cuda-bindings 13.5.0), and TensorRT 11.4.0.106 (tensorrt-cu13-bindings, with cuda-bindings
13.5.0): export.tensorrt.build_engine (FP32, FP16, INT8 with a timing
cache and calibration frames, uint8 and float32 inputs) and runtime's EngineRunner/TensorRTBackend (with and without
CUDA graphs) run against stand-ins made from the real classes (tests/tensorrt_api_check.py says how): an attribute,
method, keyword, enum value or argument type our code uses that a generation's bindings lack fails the test, and so
does a stand-in return value that the bindings' docstring does not promise. The TensorRT 10 branch forced onto the
11 bindings fails (BuilderFlag.FP16 is gone there), shown by a test.

How: the wheels (TensorRT bindings ~1.3 MB without CUDA libraries, cuda-bindings ~10 MB, onnxruntime-gpu 255 MB)
are fetched with `pip download --no-deps` into $CIRN_TRT_WHEELS or pytest's cache (reused when present; a failed
download skips, or fails under CI=true). The C symbols `tensorrt.so` imports from libnvinfer, libnvonnxparser and
libnvinfer_plugin (`nm -D --undefined-only`) are compiled by gcc into stand-in libraries with the sonames it asks
for (`readelf -d`: .so.10 or .so.11), so the real Python classes load; that happens in a child process
(LD_LIBRARY_PATH), never in the pytest process. cuda.bindings imports without a driver: its real functions are
autospecced.

What it cannot check: no kernel runs and nothing reaches libnvinfer, so TensorRT's own behaviour (what it returns
for a real ONNX graph, whether a profile is valid, calibration quality) is modelled, not observed. pybind11 methods
have no inspect.signature; their docstrings do, so argument names and counts are checked, types only as far as
`accepts` can read the annotations (those it cannot are reported and must stay within KNOWN_UNCHECKED). IHostMemory
is stood in by a memoryview (its docstring: the buffer protocol, dtype, nbytes). The provider options are checked
as names only (string constants of the provider library), not their values. The GPU run is test_export.py's engine
test.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PATHFINDER = ("cuda-pathfinder", "1.9.1")  # cuda-bindings imports it (it finds the CUDA libraries at call time)
BINDINGS = {  # id: the wheels of one install
    "tensorrt10-cuda12": [("tensorrt-cu12-bindings", "10.16.1.11"), ("cuda-bindings", "12.9.4"), PATHFINDER],
    "tensorrt10-cuda13": [("tensorrt-cu13-bindings", "10.16.1.11"), ("cuda-bindings", "13.5.0"), PATHFINDER],
    "tensorrt11-cuda13": [("tensorrt-cu13-bindings", "11.4.0.106"), ("cuda-bindings", "13.5.0"), PATHFINDER],
}
PASSING = ["build-fp32", "build-fp16", "build-int8", "build-int8-float32-input", "run", "run-cuda-graph"]
KNOWN_UNCHECKED = set()  # annotations tensorrt_api_check.accepts cannot read; none today


def unavailable(reason):
    """Skip outside CI; under CI this check must run, so fail."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def wheel(cache, name, version):
    """The wheel of name==version for this Python in `cache`, downloaded with pip when missing."""
    stem = re.sub(r"[-_.]+", "_", name).lower()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"

    def found():
        return [w for w in cache.glob(f"{stem}-{version}-*.whl") if tag in w.name or "-py3-none-" in w.name]

    if not found():
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                 "--dest", str(cache), f"{name}=={version}"], capture_output=True, text=True)
        if result.returncode != 0 or not found():
            unavailable(f"cannot download {name}=={version} (pip download: {result.stderr.strip()[-300:]})")
    return found()[0]


def stub_libraries(module, out):
    """Stand-in libraries for the TensorRT libraries `module` links (same sonames), defining every symbol it imports
    that this process does not provide (the TensorRT C entry points; never called: the stand-ins replace the
    objects they would make). Returns {soname: [symbols]}."""
    import ctypes
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(libnv\w+\.so\.\d+)\]",
                        subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True).stdout)
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(module)], capture_output=True, text=True).stdout
    process = ctypes.CDLL(None)
    symbols = [s for kind, s in re.findall(r"^\s+([Uw])\s+(\w+)$", undefined, re.M)
               if kind == "U" and not s.startswith(("Py", "_Py")) and not hasattr(process, s)]
    library = {name.split(".so")[0]: name for name in needed}  # libnvinfer -> libnvinfer.so.10
    assert set(library) == {"libnvinfer", "libnvonnxparser", "libnvinfer_plugin"}, needed

    def home(symbol):
        if "OnnxParser" in symbol:
            return library["libnvonnxparser"]
        return library["libnvinfer_plugin" if symbol == "initLibNvInferPlugins" else "libnvinfer"]

    by_library = {soname: [s for s in symbols if home(s) == soname] for soname in needed}
    out.mkdir(parents=True, exist_ok=True)
    for soname, names in by_library.items():
        source = out / f"{soname}.c"
        source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in names))
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}", str(source)],
                       check=True, capture_output=True)
    return by_library


@pytest.fixture(scope="session")
def wheel_cache(request):
    """$CIRN_TRT_WHEELS, else pytest's cache (.pytest_cache), else (cache plugin off) this session's tmp folder."""
    folder, cache_plugin = os.environ.get("CIRN_TRT_WHEELS"), getattr(request.config, "cache", None)
    if folder:
        cache = Path(folder)
    elif cache_plugin is not None:
        cache = cache_plugin.mkdir("tensorrt-api-wheels")
    else:
        cache = request.getfixturevalue("tmp_path_factory").mktemp("wheels")
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session", params=sorted(BINDINGS))
def bindings(request, wheel_cache, tmp_path_factory):
    """{generation, libraries, report}: the child process's report for one install (run once per session)."""
    wheels = BINDINGS[request.param]
    generation = int(wheels[0][1].split(".")[0])
    for tool in ("gcc", "nm", "readelf"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is needed to build the stand-in TensorRT libraries")
    root = tmp_path_factory.mktemp(request.param)
    site = root / "site"
    for name, version in wheels:
        with zipfile.ZipFile(wheel(wheel_cache, name, version)) as archive:
            archive.extractall(site)
    libraries = stub_libraries(site / "tensorrt_bindings" / "tensorrt.so", root / "libs")
    report = root / "report.json"
    env = {**os.environ, "LD_LIBRARY_PATH": str(root / "libs"),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = subprocess.run([sys.executable, str(HERE / "tensorrt_api_check.py"), str(report)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"generation": generation, "libraries": libraries, "report": json.loads(report.read_text())}


def test_the_real_bindings_load_over_stand_in_libraries(bindings):
    generation, report = bindings["generation"], bindings["report"]
    assert report["version"].startswith(f"{generation}.")
    assert {f"libnvinfer.so.{generation}", f"libnvonnxparser.so.{generation}",
            f"libnvinfer_plugin.so.{generation}"} == set(bindings["libraries"])
    assert "createInferBuilder_INTERNAL" in bindings["libraries"][f"libnvinfer.so.{generation}"]
    assert "createNvOnnxParser_INTERNAL" in bindings["libraries"][f"libnvonnxparser.so.{generation}"]
    assert set(report["unchecked_annotations"]) <= KNOWN_UNCHECKED, report["unchecked_annotations"]


@pytest.mark.parametrize("scenario", PASSING)
def test_our_tensorrt_code_uses_only_what_the_bindings_have(bindings, scenario):
    outcome = bindings["report"][scenario]
    assert "ok" in outcome, f"{scenario} on TensorRT {bindings['report']['version']}:\n{outcome.get('traceback')}"
    if scenario.startswith("build"):
        flags = outcome["ok"]["flags"]
        expected = {"build-fp32": [], "build-fp16": ["BuilderFlag.FP16"]}.get(
            scenario, ["BuilderFlag.FP16", "BuilderFlag.INT8"])
        assert flags == (expected if bindings["generation"] == 10 else [])  # TensorRT 11: strongly typed, no flags


def test_the_return_values_we_branch_on_are_what_the_docstrings_promise(bindings):
    returns = bindings["report"]["returns"]
    expected = {"OnnxParser.parse_from_file": ["bool"], "IBuilderConfig.add_optimization_profile": ["int"],
                "IBuilderConfig.set_timing_cache": ["bool"], "Builder.build_serialized_network": ["IHostMemory"],
                "ITimingCache.serialize": ["IHostMemory"], "Runtime.deserialize_cuda_engine": ["ICudaEngine"],
                "IExecutionContext.set_input_shape": ["bool"], "IExecutionContext.set_tensor_address": ["bool"],
                "IExecutionContext.execute_async_v3": ["bool"], "IExecutionContext.get_tensor_shape": ["Dims"]}
    if bindings["generation"] == 10:
        expected["IBuilderConfig.set_calibration_profile"] = ["bool"]
    assert returns == expected


def test_the_tensorrt_10_branch_fails_on_the_tensorrt_11_bindings(bindings):
    report = bindings["report"]
    if bindings["generation"] == 10:
        assert "ok" in report["build-fp16-as-generation-10"]  # forcing 10 onto 10 changes nothing
        return
    for scenario in ("build-fp16-as-generation-10", "build-int8-as-generation-10"):
        outcome = report[scenario]
        assert outcome.get("error") == "AttributeError" and "FP16" in outcome["message"], outcome


# ---------------------------------------------------------------- ONNX Runtime GPU provider option names
ORT_GPU = ("onnxruntime-gpu", "1.31.1")
PROVIDER_LIBRARIES = {"TensorrtExecutionProvider": "onnxruntime/capi/libonnxruntime_providers_tensorrt.so",
                      "CUDAExecutionProvider": "onnxruntime/capi/libonnxruntime_providers_cuda.so"}


@pytest.fixture(scope="session")
def provider_libraries(wheel_cache):
    """{provider: its library's bytes} from the onnxruntime-gpu wheel (255 MB, downloaded once into the cache).

    The option names cannot be asked for without a GPU: each provider parses its options when its library loads,
    and that library links CUDA, cuDNN and TensorRT. What the wheel does show: each name it accepts is a string
    constant of its library, and unknown names are rejected ("Unknown provider option"), so a misspelt or removed
    option would fail the first session on a GPU; this finds it before."""
    with zipfile.ZipFile(wheel(wheel_cache, *ORT_GPU)) as archive:
        return {provider: archive.read(member) for provider, member in PROVIDER_LIBRARIES.items()}


def test_the_provider_options_we_pass_are_names_onnxruntime_gpu_knows(provider_libraries):
    import types

    from cirn.runtime.ort import ort_providers, ort_tensorrt_providers
    from cirn.runtime.tensorrt import profile_shapes
    ort = types.SimpleNamespace(__version__=ORT_GPU[1], get_available_providers=lambda: list(PROVIDER_LIBRARIES))
    provider_lists = [ort_providers(ort, "cuda")]
    provider_lists += [ort_tensorrt_providers(precision, profile_shapes(32, 64, dynamic=True), "/cache", generation)
                       for precision in ("fp32", "fp16", "int8") for generation in (10, 11)]
    used = {}
    for providers in provider_lists:
        for name, options in (p for p in providers if isinstance(p, tuple)):
            used.setdefault(name, set()).update(options)
    assert set(used) == set(PROVIDER_LIBRARIES) and "trt_int8_enable" in used["TensorrtExecutionProvider"]
    for provider, keys in used.items():
        library = provider_libraries[provider]
        assert b"Unknown provider option" in library  # unknown names are errors, not ignored
        unknown = sorted(k for k in keys if b"\0" + k.encode() + b"\0" not in library)
        assert not unknown, f"onnxruntime-gpu {ORT_GPU[1]}'s {provider} has no option {unknown}"


def test_the_tensorrt_generation_of_onnxruntime_gpus_provider_is_read_from_its_library(provider_libraries, tmp_path):
    import types

    from cirn.runtime.ort import provider_tensorrt_generation
    library = tmp_path / PROVIDER_LIBRARIES["TensorrtExecutionProvider"]
    library.parent.mkdir(parents=True)
    library.write_bytes(provider_libraries["TensorrtExecutionProvider"])
    ort = types.SimpleNamespace(__file__=str(tmp_path / "onnxruntime" / "__init__.py"))
    assert provider_tensorrt_generation(ort) == 10  # onnxruntime-gpu 1.31 links libnvinfer.so.10
