"""Which backends and precisions the benchmarks run, and the model files they run.

A variant is one way to run the model: a cirn.runtime backend (torch, onnxruntime, tensorrt), a device and a
precision. Every variant gets a row; one that cannot run here (no GPU, no tensorrt, no provider, an export that
failed) gets its status and the reason instead of numbers, and the run goes on.
"""
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from report import log


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


def add_output_args(parser):
    """The options every benchmark script shares: variants to leave out, where exports, runs and results go."""
    parser.add_argument("--skip", action="append", default=[], metavar="VARIANT",
                        help=f"leave a variant out (repeatable): {', '.join(VARIANT_NAMES)}")
    parser.add_argument("--export-dir", default=None, help="keep the exported models here (default: a "
                        "temporary folder)")
    parser.add_argument("--runs-dir", default="runs", help="where the default checkpoint is looked for")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")


def size_hw_of(height, width):
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
        from cirn.common.errors import CirnError
        from cirn.runtime.tensorrt import require_tensorrt
        try:
            require_tensorrt("run the ONNX variants instead")
        except CirnError as err:
            return str(err)
    return None


# ---------------------------------------------------------------- the model files
@dataclass
class Prepared:
    """The model file of every variant (or why it has none) and the model behind them."""
    source: str            # what --model resolved to
    checkpoint: Path       # the cirn checkpoint (None for an .onnx whose source checkpoint is gone)
    state: dict            # the checkpoint (config, model_meta), None without one
    size_hw: tuple         # (H, W) the variants run at
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
        height, width = self.size_hw
        return summarize(meta["name"], meta["num_classes"], height, width, meta["num_attention"],
                         meta.get("width", 16))["gflops_fused"]


def resolve_model(spec, work_dir, runs_dir="runs"):
    """(checkpoint or None, .onnx or None, random_weights) of --model: a checkpoint, an exported .onnx, a model
    name (random weights, saved as a checkpoint in work_dir) or None (the newest best.pt under runs_dir, else
    `tiny`)."""
    from cirn.common.errors import CirnError
    from cirn.export import find_latest_checkpoint, read_metadata
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
    from cirn.train.checkpoint import save_model
    from cirn.train.models import build_model
    cfg = load_config("toy", overrides=[f"model.name={name}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False)
    path = Path(work_dir) / f"{name}-random.pt"
    save_model(path, model, cfg)
    return path


def prepare(spec, work_dir, size_hw=None, batch=1, variants=VARIANTS, calib=None, calib_images=8, runs_dir="runs"):
    """Resolve --model and make the files the variants run; returns a Prepared.

    A checkpoint (or a model name) is exported here by cirn-export's own export_checkpoint with its parity check
    off: the check scores 20 target images in every precision before keeping anything, minutes for DeepLab at
    512x1024 and a likely INT8 failure for random weights; run_accuracy.py scores the exports instead. FP32
    (dynamic when batch > 1, its engines' profile then cirn-export's: optimal at batch 1, up to `batch`) always;
    CPU INT8 for ort-cpu-int8; FP16, TensorRT's INT8 graph and the engines only where a TensorRT variant can run.
    An .onnx model runs with the variants cirn-export wrote beside it (model.int8.onnx, model.engine, ...); nothing
    is exported then.
    """
    from cirn.export.onnx_export import read_metadata
    from cirn.export.pipeline import ONNX_VARIANTS
    from cirn.export.tensorrt import ENGINE_NAMES
    work_dir = Path(work_dir)
    checkpoint, onnx_model, random_weights = resolve_model(spec, work_dir, runs_dir)
    state = None
    if checkpoint is not None:
        from cirn.train.checkpoint import load_checkpoint
        state = load_checkpoint(checkpoint)
    if size_hw is None:
        if onnx_model is not None:
            meta = read_metadata(onnx_model)
            size_hw = tuple(meta.get("input_size_hw", meta.get("input_size")))
        else:
            data = state["config"].get("data", {})
            width, height = data.get("target_size_wh", data.get("target_size", (256, 128)))
            size_hw = (int(height), int(width))
    source = f"{state['model_meta']['name']} (random weights)" if random_weights else str(onnx_model or checkpoint)
    prepared = Prepared(source, checkpoint, state, tuple(size_hw), random_weights, {}, {})

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
        onnx_files, engines, errors = export_variants(checkpoint, work_dir, prepared.size_hw, batch, runnable,
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
    """The TensorRT generation ONNX Runtime's TensorRT EP loads (the graphs its variants run depend on it); 10 when
    it cannot be read, as the runtime assumes."""
    try:
        import onnxruntime
    except ImportError:
        return 10
    from cirn.runtime.ort import provider_tensorrt_generation
    return provider_tensorrt_generation(onnxruntime) or 10


def _file_key(variant, generation):
    """The export a variant runs: an ONNX_VARIANTS key, or 'engine-{precision}'."""
    if variant.fmt == "engine":
        return f"engine-{variant.precision}"
    if variant.backend == "tensorrt":  # ONNX Runtime's TensorRT EP: the graphs of export.tensorrt.ort_tensorrt_onnx
        if variant.precision == "int8":
            return "int8-tensorrt"
        return variant.precision if generation >= 11 else "fp32"  # TensorRT 10: FP16 is a provider option
    return variant.precision


def export_variants(checkpoint, work_dir, size_hw, batch, variants, calib, calib_images, target_root):
    """Export what `variants` need into work_dir: ({key: .onnx}, {precision: .engine}, {key: error}).

    export_checkpoint (parity off) is all or nothing, and one failed export should fail its rows only: when the
    full export fails it is retried without the engines, then FP32 ONNX alone; each file it could not make gets
    the error of the smallest export that tried it.
    """
    from cirn.export import export_checkpoint
    from cirn.export.pipeline import ONNX_VARIANTS
    from cirn.export.tensorrt import ENGINE_NAMES
    generation = _tensorrt_generation()
    keys = {_file_key(v, generation) for v in variants if v.fmt == "onnx"}
    engine_precisions = {v.precision for v in variants if v.fmt == "engine"}
    if not keys and not engine_precisions:
        return {}, {}, {}
    fp16 = "fp16" in keys or "fp16" in engine_precisions
    int8 = bool({"int8", "int8-tensorrt"} & keys) or "int8" in engine_precisions
    if int8 and target_root is None and not calib:
        from cirn.train.toy import ensure_toy
        target_root = ensure_toy().cityscapes  # calibration images for a checkpoint whose dataset is not here
    height, width = size_hw
    options = {"height": height, "width": width, "dynamic": batch > 1, "max_batch": batch, "calib_images": calib_images,
               "parity_root": target_root, "parity": False, "log": log}

    def made(fp16, int8, fmt):
        onnx = {"fp32"} | ({"fp16"} if fp16 else set()) | ({"int8", "int8-tensorrt"} if int8 else set())
        engines = {f"engine-{p}" for p in engine_precisions} if fmt == "all" else set()
        return onnx | engines

    attempts = [(fp16, int8, "all" if engine_precisions else "onnx"), (fp16, int8, "onnx"), (False, False, "onnx")]
    attempts = list(dict.fromkeys(attempts))
    files, failures = [], []
    for fp16, int8, fmt in attempts:
        try:
            files = export_checkpoint(checkpoint, work_dir, fp16=fp16, int8=int8, fmt=fmt,
                                      calib=calib if int8 else None, **options)["files"]
            break
        except Exception as err:  # one failed export fails its rows, not the run
            failures.append((made(fp16, int8, fmt), f"{type(err).__name__}: {err}"))
            log(f"export failed: {failures[-1][1]}")
    names = {Path(f).name: Path(f) for f in files}
    onnx_files = {key: names[name] for key, (_, name) in ONNX_VARIANTS.items() if name in names}
    engines = {p: names[name] for p, name in ENGINE_NAMES.items() if name in names}
    have = set(onnx_files) | {f"engine-{p}" for p in engines}
    errors = {}
    for keys_tried, error in failures:  # later attempts are smaller: their errors are the more specific
        errors.update((key, error) for key in keys_tried - have)
    return onnx_files, engines, errors


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
