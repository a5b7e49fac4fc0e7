"""What run_latency.py and run_accuracy.py share: the variants, the model files they run, the machine, the tables.

A variant is one way to run the model: a cirn.runtime backend (torch, onnxruntime, tensorrt), a device and a
precision. Every variant gets a row; one that cannot run here (no GPU, no tensorrt, no provider, an export that
failed) gets its status and the reason instead of numbers, and the run goes on.

Run as a script, this module measures the latency of one variant in a fresh process: run_latency.py starts one per
variant, so each variant's memory is its own and a library that crashes ends only its row.
"""
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

MAX_ITERATIONS = 2000  # a timing loop stops here even before its minimum time (a ~1 ms model)


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: open_backend(file, backend, device, precision, compile=compile)."""
    name: str        # row key
    label: str       # human name of the backend
    backend: str     # open_backend's: torch | onnxruntime | tensorrt (on an .onnx: ONNX Runtime's TensorRT EP)
    device: str      # cpu | cuda
    precision: str   # fp32 | fp16 | int8
    fmt: str         # the file it runs: checkpoint | onnx | engine
    compile: bool = False


VARIANTS = (
    Variant("torch-eager", "PyTorch eager", "torch", "cpu", "fp32", "checkpoint"),
    Variant("torch-compile", "torch.compile", "torch", "cpu", "fp32", "checkpoint", compile=True),
    Variant("ort-cpu-fp32", "ONNX Runtime CPU", "onnxruntime", "cpu", "fp32", "onnx"),
    Variant("ort-cpu-int8", "ONNX Runtime CPU", "onnxruntime", "cpu", "int8", "onnx"),
    Variant("torch-eager-cuda", "PyTorch eager", "torch", "cuda", "fp32", "checkpoint"),
    Variant("torch-compile-cuda", "torch.compile", "torch", "cuda", "fp32", "checkpoint", compile=True),
    Variant("ort-cuda-fp32", "ONNX Runtime CUDA", "onnxruntime", "cuda", "fp32", "onnx"),
    Variant("ort-trt-fp16", "ONNX Runtime TensorRT EP", "tensorrt", "cuda", "fp16", "onnx"),
    Variant("trt-fp32", "TensorRT", "tensorrt", "cuda", "fp32", "engine"),
    Variant("trt-fp16", "TensorRT", "tensorrt", "cuda", "fp16", "engine"),
    Variant("trt-int8", "TensorRT", "tensorrt", "cuda", "int8", "engine"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
REFERENCE = "torch-eager"  # PyTorch FP32: what accuracy deltas are taken against


def log(message):
    print(message, file=sys.stderr, flush=True)


def add_output_args(parser):
    """The options every benchmark script shares: variants to leave out, where exports, runs and results go."""
    parser.add_argument("--skip", action="append", default=[], metavar="VARIANT",
                        help=f"leave a variant out (repeatable): {', '.join(VARIANT_NAMES)}")
    parser.add_argument("--export-dir", default=None, help="keep the exported models here (default: a "
                        "temporary folder)")
    parser.add_argument("--runs-dir", default="runs", help="where the default checkpoint is looked for")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")


def parse_size(height, width):
    """(H, W) from --height/--width: both or neither (None)."""
    if (height is None) != (width is None):
        sys.exit("give both --height and --width, or neither")
    return (int(height), int(width)) if height else None


def selected(skip):
    """The variants not named in --skip; unknown names are an error."""
    unknown = sorted(set(skip) - set(VARIANT_NAMES))
    if unknown:
        sys.exit(f"unknown variant(s) in --skip: {', '.join(unknown)}; expected some of {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANTS if v.name not in skip]


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


def why_unavailable(variant):
    """Why this machine cannot run `variant` (no GPU, library or provider), or None."""
    import torch
    if variant.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    if variant.fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a GPU machine)"
        provider = {"onnxruntime": "CUDAExecutionProvider" if variant.device == "cuda" else None,
                    "tensorrt": "TensorrtExecutionProvider"}[variant.backend]
        if provider and provider not in onnxruntime.get_available_providers():
            return (f"onnxruntime {onnxruntime.__version__} has no {provider} "
                    "(pip uninstall onnxruntime && pip install onnxruntime-gpu, with TensorRT for its EP)")
    if variant.fmt == "engine":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed (pip install 'cirn[gpu]' on a GPU machine)"
    return None


# ---------------------------------------------------------------- the model files
@dataclass
class Prepared:
    """The model file of every variant (or why it has none) and the model behind them."""
    source: str            # what --model resolved to
    checkpoint: Path       # the cirn checkpoint (None for an .onnx whose source checkpoint is gone)
    state: dict            # the checkpoint (config, model_meta), None without one
    size: tuple            # (H, W) the variants run at
    random_weights: bool   # a model built from a name: fine for speed, meaningless for accuracy
    files: dict            # variant name -> model file
    missing: dict          # variant name -> (status, reason)

    def target_root(self):
        """The checkpoint's target dataset root when it is set and on disk, else None."""
        root = ((self.state or {}).get("config", {}).get("data", {}).get("target_root")) or None
        return root if root and Path(root).is_dir() else None

    def gflops_per_frame(self):
        """Forward GFLOPs (2 x MAC of convolutions and matmuls) of one frame, from `summarize`; None if unknown."""
        if self.state is None:
            return None
        from cirn.train.models import summarize
        meta = self.state["model_meta"]
        height, width = self.size
        return summarize(meta["name"], meta["num_classes"], height, width, meta["num_attention"],
                         meta.get("width", 16))["gflops_fused"]


def resolve_model(spec, work_dir, runs_dir="runs"):
    """(checkpoint or None, .onnx or None, random_weights) of --model: a checkpoint, an exported .onnx, a model
    name (random weights, saved as a checkpoint in work_dir) or None (the newest best.pt under runs_dir, else
    `tiny`)."""
    from cirn.export import find_latest_checkpoint, read_metadata
    from cirn.common.errors import CirnError
    from cirn.train.models import MODEL_NAMES
    if spec is None:
        try:
            return find_latest_checkpoint(runs_dir), None, False
        except CirnError:
            spec = "tiny"
    if spec in MODEL_NAMES:
        return random_checkpoint(spec, work_dir), None, True
    path = Path(spec)
    if not path.is_file():
        raise CirnError(f"--model {spec}: no such file, and not a model name ({', '.join(MODEL_NAMES)})")
    if path.suffix == ".onnx":
        source = Path(read_metadata(path)["source_checkpoint"])
        return (source if source.is_file() else None), path, False
    return path, None, False


def random_checkpoint(name, work_dir):
    """A checkpoint of model `name` with random weights (seed 0), the toy preset's config otherwise."""
    import torch

    from cirn.train.config import load_config
    from cirn.train.engine import save_model
    from cirn.train.models import build_model
    cfg = load_config("toy", overrides=[f"model.name={name}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False)
    path = Path(work_dir) / f"{name}-random.pt"
    save_model(path, model, cfg)
    return path


def prepare(spec, work_dir, size=None, batch=1, variants=VARIANTS, calib=None, calib_images=8, runs_dir="runs"):
    """Resolve --model and make the files the variants run; returns a Prepared.

    A checkpoint (or a model name) is exported here with the export library's functions, not export_checkpoint:
    its parity check scores 20 target images in every precision before keeping anything, minutes for DeepLab at
    512x1024 and a likely INT8 failure for random weights. run_accuracy.py scores the exports instead.
    FP32 (dynamic batch when batch > 1) always; CPU INT8 for ort-cpu-int8; the FP16 and symmetric INT8 graphs and
    engines only where a TensorRT variant can run. An .onnx model runs with the variants cirn-export wrote beside
    it (model.int8.onnx, model.engine, ...); nothing is exported then.
    """
    from cirn.export.onnx_export import read_metadata
    from cirn.export.pipeline import ONNX_VARIANTS
    from cirn.export.tensorrt import ENGINE_NAMES
    work_dir = Path(work_dir)
    checkpoint, onnx_model, random_weights = resolve_model(spec, work_dir, runs_dir)
    state = None
    if checkpoint is not None:
        from cirn.train.engine import load_checkpoint
        state = load_checkpoint(checkpoint)
    if size is None:
        if onnx_model is not None:
            size = tuple(read_metadata(onnx_model)["input_size"])
        else:
            data = state["config"].get("data", {})
            width, height = data.get("target_size_wh", data.get("target_size", (256, 128)))  # older runs: target_size
            size = (int(height), int(width))
    source = f"{state['model_meta']['name']} (random weights)" if random_weights else str(onnx_model or checkpoint)
    prepared = Prepared(source, checkpoint, state, tuple(size), random_weights, {}, {})

    missing = {v.name: why_unavailable(v) for v in variants}
    runnable = [v for v in variants if missing[v.name] is None]
    if onnx_model is not None:
        folder = onnx_model.parent
        onnx_files = {key: folder / name for key, (_, name) in ONNX_VARIANTS.items() if (folder / name).is_file()}
        onnx_files["fp32"] = onnx_model
        engines = {p: folder / name for p, name in ENGINE_NAMES.items() if (folder / name).is_file()}
        errors = {}
        hint = f"beside {onnx_model} (export it with cirn-export --fp16 --int8 --format all)"
    else:
        onnx_files, engines, errors = export_variants(checkpoint, state, work_dir, prepared.size, batch, runnable,
                                                      calib, calib_images, prepared.target_root())
        hint = "(not exported)"
    generation = _tensorrt_generation()
    for v in variants:
        if missing[v.name]:
            prepared.missing[v.name] = ("unavailable", missing[v.name])
            continue
        if v.fmt == "checkpoint":
            if checkpoint is None:
                prepared.missing[v.name] = ("unavailable", f"{onnx_model}'s source checkpoint is not on disk")
            else:
                prepared.files[v.name] = checkpoint
            continue
        key = _file_key(v, generation)
        found = engines.get(v.precision) if v.fmt == "engine" else onnx_files.get(key)
        if found is not None:
            prepared.files[v.name] = Path(found)
        else:
            what = ENGINE_NAMES[v.precision] if v.fmt == "engine" else ONNX_VARIANTS[key][1]
            prepared.missing[v.name] = (("failed", f"{what}: {errors[key]}") if key in errors else
                                        ("unavailable", f"no {what} {hint}"))
    return prepared


def _tensorrt_generation():
    try:
        import tensorrt
    except ImportError:
        return 10  # as the runtime assumes for ONNX Runtime's TensorRT EP
    from cirn.export.tensorrt import trt_generation
    return trt_generation(tensorrt.__version__)


def _file_key(variant, generation):
    """The export a variant runs: an ONNX_VARIANTS key, or 'engine-{precision}'."""
    if variant.fmt == "engine":
        return f"engine-{variant.precision}"
    if variant.backend == "tensorrt":  # ONNX Runtime's TensorRT EP: the graphs of export.tensorrt.ort_tensorrt_onnx
        if variant.precision == "int8":
            return "int8-tensorrt"
        return variant.precision if generation >= 11 else "fp32"  # TensorRT 10: FP16 is a provider option
    return variant.precision


def export_variants(checkpoint, state, work_dir, size, batch, variants, calib, calib_images, target_root):
    """Export what `variants` need into work_dir: ({key: .onnx}, {precision: .engine}, {key: error})."""
    from cirn.export import DEFAULT_EXPORTER, DeployModel, convert_fp16, export_onnx, quantize_int8, write_metadata
    from cirn.export.frames import calibration_frames
    from cirn.export.pipeline import ONNX_VARIANTS, model_metadata
    from cirn.export.precision import quantization_metadata
    from cirn.train.engine import load_model
    height, width = size
    dynamic = batch > 1
    generation = _tensorrt_generation()
    engine_precisions = [v.precision for v in variants if v.fmt == "engine"]
    keys = {_file_key(v, generation) for v in variants if v.fmt == "onnx"}
    if engine_precisions:
        keys |= {"fp32", "fp16", "int8-tensorrt"} if generation >= 11 else {"fp32"}
    onnx_files, engines, errors = {}, {}, {}
    if not keys:
        return onnx_files, engines, errors
    keys.add("fp32")
    model, _ = load_model(checkpoint)
    deploy = DeployModel(model, "labels")

    def metadata(precision, quantization=None):
        return model_metadata(model, state, checkpoint, "labels", height, width, dynamic, "uint8", DEFAULT_EXPORTER,
                              precision, quantization)

    calib_arrays = []
    if {"int8", "int8-tensorrt"} & keys or "int8" in engine_precisions:
        if target_root is None and not calib:
            from cirn.train.toy import ensure_toy
            target_root = ensure_toy().cityscapes
        try:
            calib_arrays = [f.image for f in calibration_frames(calib, (width, height), calib_images, target_root)]
        except Exception as err:
            errors["int8"] = errors["int8-tensorrt"] = errors["engine-int8"] = f"calibration frames: {err}"
    for key in ["fp32", "fp16", "int8", "int8-tensorrt"]:
        if key not in keys or key in errors:
            continue
        path = Path(work_dir) / ONNX_VARIANTS[key][1]
        log(f"exporting {path.name} ({height}x{width}{', dynamic batch' if dynamic else ''})")
        try:
            if key == "fp32":
                export_onnx(deploy, path, height, width, dynamic=dynamic, exporter=DEFAULT_EXPORTER)
                write_metadata(path, metadata("fp32"))
            elif "fp32" not in onnx_files:
                raise RuntimeError("needs model.onnx, whose export failed")
            elif key == "fp16":
                convert_fp16(onnx_files["fp32"], path)
                write_metadata(path, metadata("fp16"))
            else:
                target = "tensorrt" if key == "int8-tensorrt" else "cpu"
                quantize_int8(onnx_files["fp32"], path, calib_arrays, "minmax", work_dir, target)
                write_metadata(path, metadata("int8", quantization_metadata(target, "minmax", len(calib_arrays))))
            onnx_files[key] = path
        except Exception as err:  # one failed export fails its rows, not the run
            errors[key] = f"{type(err).__name__}: {err}"
    for precision in engine_precisions:
        key = f"engine-{precision}"
        if key in errors:
            continue
        try:
            engines[precision] = make_engine(onnx_files, work_dir, precision, size, batch, dynamic, calib_arrays)
        except Exception as err:
            errors[key] = f"{type(err).__name__}: {err}"
    return onnx_files, engines, errors


def make_engine(onnx_files, work_dir, precision, size, batch, dynamic, calib_images):
    """A TensorRT engine of `precision` (and its metadata JSON) in work_dir, profile optimal at `batch`."""
    from cirn.export.onnx_export import read_metadata
    from cirn.export.tensorrt import (ENGINE_NAMES, TIMING_CACHE_NAME, build_engine, engine_onnx, profile_shapes,
                                      require_tensorrt, trt_generation, write_engine_metadata)
    trt = require_tensorrt()
    height, width = size
    profile = profile_shapes(height, width)
    if dynamic:
        profile = {"min": (1, 3, height, width), "opt": (batch, 3, height, width), "max": (batch, 3, height, width)}
    source = engine_onnx(precision, trt_generation(trt.__version__), onnx_files)
    engine = Path(work_dir) / ENGINE_NAMES[precision]
    info = build_engine(source, engine, precision, profile, calib_images, Path(work_dir) / TIMING_CACHE_NAME, log=log)
    write_engine_metadata(engine, read_metadata(source), info)
    return engine


@contextmanager
def work_dir(path=None):
    """`path` (created), or a temporary folder deleted afterwards."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="cirn-bench-") as tmp:
        yield Path(tmp)


def open_variant(variant, path, threads, batch=1):
    """The runtime backend of `variant` on `path`."""
    from cirn.runtime import open_backend
    precision = variant.precision if variant.precision in ("fp32", "fp16") else "auto"  # int8: the file decides
    return open_backend(path, backend=variant.backend, device=variant.device, precision=precision, threads=threads,
                        compile=variant.compile, max_batch=batch)


def status_row(variant, status, reason=None):
    """A row's identity and status; measurements are added to it."""
    return {"name": variant.name, "label": variant.label, "backend": variant.backend, "device": variant.device,
            "precision": variant.precision, "status": status, "reason": reason}


# ---------------------------------------------------------------- measuring: the GEMM peak, one variant
def peak_gemm_gflops(device, threads, size, runs):
    """Median GFLOP/s of an fp32 size x size matmul in PyTorch on `device` (CPU with `threads` threads): the
    machine's practical peak, measured in the same run as the model."""
    import torch
    if device == "cpu":
        torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        sync()  # CUDA kernels are asynchronous: wait before reading the clock
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / float(np.median(seconds)) / 1e9


def measure_latency(job):
    """Latency, throughput and memory of one variant in this process (fresh: run_latency starts it)."""
    import torch
    variant = Variant(**job["variant"])
    height, width = job["size"]
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
    latencies = []
    start = time.perf_counter()
    while len(latencies) < job["iterations"] or time.perf_counter() - start < job["seconds"]:
        t0 = time.perf_counter()
        backend(frames)  # host arrays in and out: a GPU variant's time includes its copies and synchronisation
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if len(latencies) >= MAX_ITERATIONS:
            break
    total_s = time.perf_counter() - start
    if gpu:
        memory_mb = max(_gpu_used() - gpu_used_before, torch.cuda.max_memory_allocated()) / 1e6
        memory_kind = "GPU memory delta"
    else:
        memory_mb = (_proc_status_bytes("VmHWM") - rss_before) / 1e6
        memory_kind = "peak RSS delta"
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "fps": batch * len(latencies) / total_s, "iterations": len(latencies), "memory_mb": memory_mb,
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


def measure_in_subprocess(variant, path, size, batch, threads, settings):
    """measure_latency of one variant in a fresh Python process; a failure or crash becomes the row's reason.

    settings: warmup (calls), iterations and seconds (the minimum timed), timeout (seconds for the whole process).
    """
    timeout = settings["timeout"]
    with tempfile.TemporaryDirectory(prefix="cirn-bench-row-") as tmp:
        result = Path(tmp) / "result.json"
        job = {"variant": asdict(variant), "file": str(path), "size": list(size), "batch": batch, "threads": threads,
               "warmup": settings["warmup"], "iterations": settings["iterations"], "seconds": settings["seconds"],
               "result": str(result)}
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
        row = {"status": "ok", "reason": None, **measure_latency(job)}
    except Exception as err:  # any library's error is the row's reason, not the end of the run
        row = {"status": "failed", "reason": f"{type(err).__name__}: {err}".strip()}
    Path(job["result"]).write_text(json.dumps(row))


# ---------------------------------------------------------------- tables and files
def _cell(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if spec else str(value)


def markdown_table(rows, columns):
    """rows as a markdown table; columns: [(header, key, format spec)]. Missing values print as '-'."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), spec) for _, key, spec in columns) + " |")
    return "\n".join(lines)


def short_reason(row, limit=90):
    """The row's reason cut to one short line, for tables."""
    reason = " ".join((row.get("reason") or "").split())
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def write_report(out, stem, report, table):
    """{stem}.json (the whole report), {stem}.csv (its rows), {stem}.md (the table) in `out`; returns their paths."""
    from cirn.common.files import json_ready
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(json_ready(report), indent=2) + "\n")
    rows = json_ready(report["rows"])
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(table + "\n")
    return paths


if __name__ == "__main__":
    _measure_main(sys.argv[1])


def run_script(main):
    """Run a benchmark script's main(): user errors as one line, Ctrl-C as exit code 130."""
    from cirn.common.errors import CirnError
    try:
        main()
    except CirnError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(130)
