"""Measuring: the machine, its compute peak (the fastest fp32 GEMM measured, the FMA units' theoretical rate) and
the latency, throughput and memory of one variant in a process of its own.

Run as a script, this module measures one variant: run_latency.py starts one process per variant, so each
variant's memory is its own and a library that crashes ends only its row.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from report import log
from variants import Variant, open_variant

MAX_ITERATIONS = 2000  # a timing loop stops here even before its minimum time (a ~1 ms model)
FMA_UNITS = 2  # fp32 FMA pipes per core assumed by the theoretical peak (most server cores since Haswell/Zen 2)


# ---------------------------------------------------------------- the machine
def environment(threads):
    """Versions, CPU, GPU, threads and the load average before the run (a shared CPU makes numbers low and noisy)."""
    import torch

    from cirn.runtime.backends import available_cores
    versions = {}
    for name in ("onnxruntime", "tensorrt"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or None)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": cpu, "cores": available_cores(), "threads": threads,
            "load_average_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "torch": torch.__version__, **versions,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _read_lines(path):
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def shared_cpu_warning(env):
    """A line when other processes were busy on the CPU before the run, else None."""
    load, cores = env["load_average_1min"], env["cores"]
    if load < 0.5 * cores:
        return None
    note = (f"note: load average {load:.1f} on {cores} cores before the run: other processes share the CPU, so CPU "
            "numbers are low and noisy")
    if env["threads"] > 1:
        note += ("; PyTorch's OpenMP threads slow down by up to an order of magnitude on shared cores "
                 "(runtime/README.md): compare with --threads 1")
    return note


# ---------------------------------------------------------------- the theoretical peak
def vector_floats(flags):
    """fp32 lanes of the widest vector FMA (or multiply-add) unit the CPU's flags name; None when unknown."""
    flags = set(flags)
    if "avx512f" in flags:
        return 16
    if flags & {"avx2", "fma", "avx"}:
        return 8
    if flags & {"sse", "sse2", "asimd", "neon"}:  # 128-bit SSE (x86) and NEON/ASIMD (ARM)
        return 4
    return None


def fma_peak_gflops(cores, mhz, floats, fma_units=FMA_UNITS):
    """cores x clock x FMA units x fp32 lanes x 2 (an FMA is a multiply and an add), in GFLOP/s."""
    return cores * mhz / 1000.0 * fma_units * floats * 2


def cpu_fp32_peak(threads):
    """The CPU's theoretical fp32 peak with `threads` threads, an estimate: {'gflops' (None when unknown), 'cores',
    'mhz', 'floats', 'fma_units', 'how'}. Cores: the threads, at most one per physical core (SMT siblings share the
    FMA units). The clock is the maximum cpufreq reports, else /proc/cpuinfo's (often the base clock: turbo runs
    higher); FMA_UNITS per core is assumed (Zen 4 runs AVX-512 on two 256-bit units, some Xeons have one: half)."""
    lines = _read_lines("/proc/cpuinfo")
    flags = next((line.split(":", 1)[1].split() for line in lines
                  if line.split(":", 1)[0].strip() in ("flags", "Features")), [])
    mhz, clock_from = _max_mhz(lines)
    cores = min(threads, _physical_cores())
    floats = vector_floats(flags)
    gflops = fma_peak_gflops(cores, mhz, floats) if floats and mhz else None
    how = (f"{cores} cores x {mhz / 1000:.2f} GHz ({clock_from}) x {FMA_UNITS} FMA units x {floats} fp32 lanes x 2; "
           f"an estimate: {FMA_UNITS} FMA units per core assumed" if gflops else
           "unknown: no clock or vector flags in /proc/cpuinfo")
    return {"gflops": gflops, "cores": cores, "mhz": mhz, "floats": floats, "fma_units": FMA_UNITS, "how": how}


def _max_mhz(cpuinfo_lines):
    khz = [int(line) for line in _read_lines("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
           if line.strip().isdigit()]
    if khz:
        return khz[0] / 1000.0, "cpufreq maximum"
    mhz = [float(line.split(":", 1)[1]) for line in cpuinfo_lines if line.startswith("cpu MHz")]
    return (max(mhz), "/proc/cpuinfo cpu MHz") if mhz else (None, None)


def _physical_cores():
    """Physical cores among the CPUs this process may run on (SMT siblings count once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        ids = [_read_lines(topology / name) for name in ("physical_package_id", "core_id")]
        cores.add(tuple(i[0] for i in ids) if all(ids) else cpu)
    return max(1, len(cores))


# ---------------------------------------------------------------- the measured peak: fp32 GEMMs
def gemm_gflops(device, threads, size, runs):
    """{library: GFLOP/s} of a size x size fp32 matmul on `device` (the CPU with `threads` threads), the median of
    `runs` calls each: PyTorch's, and on the CPU ONNX Runtime's MatMul (often the faster: its MLAS kernels)."""
    rates = {"torch": _torch_gemm(device, threads, size, runs)}
    if device == "cpu":
        try:
            rates["onnxruntime"] = _onnxruntime_gemm(threads, size, runs)
        except Exception as err:  # no onnxruntime (its variants do not run either), or it failed: the reference is
            log(f"no ONNX Runtime GEMM: {type(err).__name__}: {err}")  # then the others
    return rates


def _gflops(size, timing):
    return 2 * size ** 3 / (timing["latency_ms"]["p50"] / 1000.0) / 1e9


def _torch_gemm(device, threads, size, runs):
    import torch

    from cirn.runtime.latency import measure_latency
    if device == "cpu":
        torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def matmul():
        a @ b
        sync()  # CUDA kernels are asynchronous: wait before reading the clock

    return _gflops(size, measure_latency(matmul, warmup=2, iterations=runs))


def _onnxruntime_gemm(threads, size, runs):
    """ONNX Runtime's MatMul, built in memory, in a session set up as the runtime sets up the variants' ones."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cirn.runtime.latency import measure_latency
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in ("a", "b")]
    output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((size, size), dtype=np.float32) for name in ("a", "b")}
    return _gflops(size, measure_latency(lambda: session.run(None, feed), warmup=2, iterations=runs))


def reference_peak(gemms, rows, device):
    """(GFLOP/s, where from) of the fastest fp32 rate measured on `device` in this run: any library's GEMM in any
    of `gemms` ({device: {library: GFLOP/s}} each) or any FP32 row's achieved rate, so no FP32 share exceeds 100%.
    FP16 and INT8 rows are not candidates: their arithmetic is not fp32, and their shares of it may exceed 100%."""
    candidates = [(rate, f"{library} fp32 GEMM") for gemm in gemms for library, rate in gemm.get(device, {}).items()]
    candidates += [(row["gflops_per_s"], f"variant {row['name']}") for row in rows
                   if row["device"] == device and row["precision"] == "fp32" and row.get("gflops_per_s") is not None]
    return max(candidates, key=lambda c: c[0]) if candidates else (None, None)


# ---------------------------------------------------------------- one variant
def measure_variant(job):
    """Latency, throughput and memory of one variant in this process (fresh: run_latency starts it)."""
    import torch

    from cirn.runtime.latency import measure_latency
    variant = Variant(**job["variant"])
    height, width = job["size_hw"]
    batch = job["batch"]
    gpu = variant.device == "cuda"
    if gpu:
        torch.cuda.init()
        gpu_used_before = _gpu_used()  # after the CUDA context: the context is not the variant's memory
    # Libraries load before the baseline: their code is not the variant's memory.
    import cirn.export.pipeline  # noqa: F401
    import cirn.runtime  # noqa: F401
    import cirn.train.engine  # noqa: F401
    __import__({"checkpoint": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}[variant.fmt])
    rss_before = _reset_peak_rss()
    start = time.perf_counter()
    backend = open_variant(variant, job["file"], job["threads"], batch)
    load_s = time.perf_counter() - start
    warmup_s = backend.warmup((height, width), batch, runs=job["warmup"])
    if not gpu:
        _reset_peak_rss()  # the peak of the timed calls, not of torch.compile's compiler during warm-up
    frames = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    # Host arrays in and out: a GPU variant's time includes its copies and synchronisation.
    timing = measure_latency(lambda: backend(frames), iterations=job["iterations"], seconds=job["seconds"],
                             max_iterations=max(MAX_ITERATIONS, job["iterations"]))
    if gpu:
        memory_mb = max(_gpu_used() - gpu_used_before, torch.cuda.max_memory_allocated()) / 1e6
        memory_kind = "GPU memory delta"
    else:
        memory_mb = (_proc_status_bytes("VmHWM") - rss_before) / 1e6
        memory_kind = "peak RSS delta"
    latency = timing["latency_ms"]
    return {"p50_ms": latency["p50"], "p90_ms": latency["p90"], "p99_ms": latency["p99"],
            "fps": batch * timing["calls_per_s"], "iterations": timing["calls"], "memory_mb": memory_mb,
            "memory_kind": memory_kind, "load_s": load_s, "warmup_s": warmup_s, "details": backend.describe()}


def _proc_status_bytes(key):
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in bytes (Linux)."""
    line = next(line for line in _read_lines("/proc/self/status") if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024  # kB


def _reset_peak_rss():
    """Reset VmHWM to the current RSS and return it. Not ru_maxrss: Linux carries that over fork and exec, so a
    child would report its parent's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_bytes("VmRSS")


def _gpu_used():
    """Bytes in use on the GPU (cudaMemGetInfo): what torch, ONNX Runtime and TensorRT allocate alike."""
    import torch
    free, total = torch.cuda.mem_get_info()
    return total - free


def measure_in_subprocess(variant, path, size_hw, batch, threads, settings):
    """measure_variant of one variant in a fresh Python process; a failure or crash becomes the row's reason.

    settings: warmup (calls), iterations and seconds (the minimum timed), timeout (seconds for the whole process).
    """
    timeout = settings["timeout"]
    with tempfile.TemporaryDirectory(prefix="cirn-bench-row-") as tmp:
        result = Path(tmp) / "result.json"
        job = {"variant": asdict(variant), "file": str(path), "size_hw": list(size_hw), "batch": batch,
               "threads": threads, "warmup": settings["warmup"], "iterations": settings["iterations"],
               "seconds": settings["seconds"], "result": str(result)}
        try:
            proc = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {timeout} s"}
        if result.is_file():
            return json.loads(result.read_text())
        lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        return {"status": "failed", "reason": f"the measuring process exited with code {proc.returncode}"
                                              f"{': ' + lines[-1].strip() if lines else ''}"}


def _measure_main(job_json):
    """Entry of the measuring process: run the job, write {'status', ...} to job['result']."""
    job = json.loads(job_json)
    try:
        row = {"status": "ok", "reason": None, **measure_variant(job)}
    except Exception as err:  # any library's error is the row's reason, not the end of the run
        row = {"status": "failed", "reason": f"{type(err).__name__}: {err}".strip()}
    Path(job["result"]).write_text(json.dumps(row))


if __name__ == "__main__":
    _measure_main(sys.argv[1])
