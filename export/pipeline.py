"""cirn-export as a library: a checkpoint -> ONNX (FP32, FP16, INT8) and TensorRT engines, each checked against
PyTorch before anything is kept.

Everything is written to a temporary folder inside `out` and moved into place only once every variant has passed
its parity floor; a failure (parity, a missing library, Ctrl-C) leaves `out` as it was.
"""
import os
import shutil
import tempfile
from pathlib import Path

from cirn import __version__
from cirn.common.errors import CirnError
from cirn.common.metadata import INPUT_NAME, METADATA_VERSION

from .choices import DEFAULT_EXPORTER, FORMATS, OUTPUTS
from .frames import calibration_frames, cityscapes_frames, run_frames
from .graph import DeployModel
from .onnx_export import (OPSETS, check_onnx, export_onnx, read_metadata,
                          simplify_onnx, write_metadata)
from .parity import EngineParityRunner, OnnxRunner, check_parity, format_parity, require_parity, save_report
from .precision import convert_fp16, quantization_metadata, quantize_int8

# variant -> (precision, file). Two INT8 graphs: ONNX Runtime's CPU kernels want uint8 activations, TensorRT's
# explicit quantisation symmetric int8 ones (precision.quantize_int8); the second is made only for TensorRT.
ONNX_VARIANTS = {"fp32": ("fp32", "model.onnx"), "fp16": ("fp16", "model.fp16.onnx"),
                 "int8": ("int8", "model.int8.onnx"), "int8-tensorrt": ("int8", "model.int8.tensorrt.onnx")}
REPORT_NAME = "parity.json"


def find_latest_checkpoint(runs_dir="runs"):
    """The newest best.pt (by modification time) anywhere under runs_dir: the latest run's best model."""
    runs_dir = Path(runs_dir)
    found = sorted(runs_dir.rglob("best.pt"), key=lambda p: p.stat().st_mtime) if runs_dir.is_dir() else []
    if not found:
        raise CirnError(f"no checkpoint given and no best.pt under {runs_dir}/: train a model first "
                        "(cirn-train stage2), or pass the checkpoint to export")
    return found[-1]


def model_metadata(model, state, checkpoint, output, height, width, dynamic, input_dtype, exporter, precision,
                   quantization=None):
    """What a runtime needs to use an exported model without the checkpoint (stored in the ONNX and engine JSON)."""
    from cirn.train.checkpoint import config_digest, config_of_checkpoint
    from cirn.train.labelmaps import checkpoint_class_set
    num_classes = model.num_classes
    names, palette = checkpoint_class_set(state)  # the run's own class set, or Cityscapes' (made-up colours past 19)
    return {
        "format_version": METADATA_VERSION,
        "cirn_version": __version__,
        "model": state["model_meta"]["name"],
        "num_classes": num_classes,
        "class_names": list(names),
        "palette": palette.tolist(),  # RGB per class
        "normalization": model.normalization,
        "input": {"name": INPUT_NAME, "dtype": input_dtype, "layout": "NCHW", "channels": "RGB",
                  "range": [0, 255]},
        "input_size_hw": [height, width],
        "output_stride": model.output_stride,
        "dynamic": dynamic,
        "output": output,
        "output_name": output,
        "output_dtype": "uint8" if output == "labels" else "float32",
        "precision": precision,
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "config_digest": state.get("config_digest") or config_digest(config_of_checkpoint(state)),
        "exporter": exporter,
        "opset": OPSETS[exporter],
        "quantization": quantization,  # how an INT8 graph was quantised (precision.quantization_metadata)
    }


def second_size(height, width, multiple=8):
    """Another input size (3/4 of each side, rounded to the output stride) to prove a dynamic graph at."""
    def scaled(n):
        return max(2 * multiple, round(n * 0.75 / multiple) * multiple)
    size = (scaled(height), scaled(width))
    return size if size != (height, width) else (height + 2 * multiple, width + 2 * multiple)


def export_checkpoint(checkpoint=None, out=None, *, height=None, width=None, output="labels", dynamic=False,
                      fp16=False, int8=False, fmt="onnx", exporter=DEFAULT_EXPORTER, input_dtype="uint8",
                      simplify=False, parity_root=None, parity_images=20, calib=None, calib_images=32,
                      calibrate_method="minmax", floors=None, max_batch=4, runs_dir="runs", parity=True, log=None):
    """Export a checkpoint and check every variant against PyTorch; returns {'out', 'files', 'parity'}.

    checkpoint: a cirn checkpoint (best.pt); None = the newest best.pt under runs_dir.
    out: output folder; None = `export/` beside the checkpoint.
    height, width: the graph's input size; None = the run's data.target_size_wh. dynamic: symbolic batch/height/width
        (parity then also runs at a second size, batch 2).
    output: 'labels' (uint8 map), 'probs' or 'logits'. fmt: 'onnx', 'tensorrt' (engines only) or 'all'.
    fp16, int8: also export these precisions (ONNX, and engines with TensorRT). INT8 calibrates on `calib_images`
        frames from `calib` (a Cityscapes root or an image folder; None = the target train split).
    parity_root: Cityscapes root whose val split scores parity (None = the run's target root, else the toy
        target); parity_images: how many images. floors: {'fp32'|'fp16'|'int8': minimum label agreement %}.
    max_batch: largest batch of a dynamic TensorRT profile. log: a callable for progress lines (None = silent).
    parity: False skips the check (and parity.json, 'parity' is None): for the benchmarks, which time every
        variant and score them on their own; a stale parity.json in `out` is removed with the files it described.
    """
    log = log or (lambda message: None)
    if fmt not in FORMATS:
        raise CirnError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if output not in OUTPUTS:
        raise CirnError(f"unknown output {output!r}: expected one of {', '.join(OUTPUTS)}")
    if calib and not int8:
        raise CirnError("--calib chooses INT8 calibration images: it needs --int8")
    for option, value, low in (("--height", height, 8), ("--width", width, 8), ("--parity-images", parity_images, 1),
                               ("--calib-images", calib_images, 1), ("--max-batch", max_batch, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise CirnError(f"{option} must be an integer >= {low}, got {value!r}")
    trt = None
    if fmt in ("tensorrt", "all"):
        from .tensorrt import require_tensorrt_for_export
        trt = require_tensorrt_for_export()  # before any work: a missing library or GPU writes nothing

    from cirn.train.checkpoint import load_model
    checkpoint = Path(checkpoint) if checkpoint else find_latest_checkpoint(runs_dir)
    model, state = load_model(checkpoint)
    data_cfg = state["config"].get("data", {})
    # target_size: the key of runs before it was named target_size_wh
    default_width, default_height = data_cfg.get("target_size_wh", data_cfg.get("target_size", (256, 128)))
    height, width = int(default_height if height is None else height), int(default_width if width is None else width)
    if min(height, width) < 8:
        raise CirnError(f"the input size must be at least 8x8 pixels, got {height}x{width}")
    out = Path(out) if out else checkpoint.parent / "export"
    precisions = ["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else [])
    keys = precisions + (["int8-tensorrt"] if int8 and trt is not None else [])

    split = data_cfg.get("val_split", "val")
    own_classes = bool(state["config"].get("model", {}).get("class_names"))
    if parity_root is None and (data_cfg.get("target") in ("folder", "video") or data_cfg.get("target_val")
                                or own_classes):
        # Your own footage or classes: its --target-val frames when the run had them, else its unlabelled images
        # (agreement with PyTorch needs no labels); INT8 calibrates on its images too.
        from cirn.train.config import from_dict
        run_cfg = from_dict(state["config"])
        run_data = run_cfg.data
        parity_root = run_data.target_val or run_data.target_root
        frames = run_frames(run_data, (width, height), parity_images, class_names=run_cfg.model.class_names) \
            if parity else []
        calib_frames = ((calibration_frames(calib, (width, height), calib_images) if calib else
                         run_frames(run_data, (width, height), calib_images, with_labels=False)) if int8 else [])
    else:
        if parity_root is None and (parity or int8):  # the parity images, and INT8's default calibration images
            parity_root = data_cfg.get("target_root") or None
            if parity_root is None:
                from cirn.train.toy import ensure_toy
                parity_root = ensure_toy(look=data_cfg.get("toy_look", "camera")).cityscapes  # the look it trained on
        frames = cityscapes_frames(parity_root, split, (width, height), parity_images) if parity else []
        calib_frames = calibration_frames(calib, (width, height), calib_images, parity_root) if int8 else []
    deploy = DeployModel(model, output)
    sizes = [(height, width)] + ([second_size(height, width, model.output_stride)] if dynamic else [])
    batch = 2 if dynamic else 1
    protocol = data_cfg.get("protocol", 19)

    created_out = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    except OSError as err:
        raise CirnError(f"cannot write to the export folder {out}: {err.strerror}") from None
    try:
        onnx_files = {}
        for key in keys:
            precision, name = ONNX_VARIANTS[key]
            path, quantization = tmp / name, None
            if key == "fp32":
                log(f"exporting {checkpoint} to ONNX ({exporter} exporter, opset {OPSETS[exporter]}, "
                    f"{height}x{width}{', dynamic batch/height/width' if dynamic else ''}, {output} output)")
                export_onnx(deploy, path, height, width, dynamic=dynamic, exporter=exporter,
                            input_dtype=input_dtype)
                if simplify:
                    simplify_onnx(path, log)
            elif key == "fp16":
                log("converting to FP16")
                convert_fp16(onnx_files["fp32"], path)
            else:
                target = "tensorrt" if key == "int8-tensorrt" else "cpu"
                log(f"quantising to INT8 for {'TensorRT' if target == 'tensorrt' else 'CPUs'} (Q/DQ, per-channel, "
                    f"{calibrate_method} calibration on {len(calib_frames)} target images)")
                quantize_int8(onnx_files["fp32"], path, [f.image for f in calib_frames], calibrate_method,
                              work_dir=tmp, target=target)
                quantization = quantization_metadata(target, calibrate_method, len(calib_frames))
            check_onnx(path)
            write_metadata(path, model_metadata(model, state, checkpoint, output, height, width, dynamic,
                                                input_dtype, exporter, precision, quantization))
            onnx_files[key] = path

        report = None
        if parity:
            log(f"checking parity on {len(frames)} images of {parity_root} ({split})")
            variants = [{"name": f"onnx-{key}", "precision": ONNX_VARIANTS[key][0], "file": path.name,
                         "runner": OnnxRunner(path)} for key, path in onnx_files.items()]
            report = check_parity(deploy, variants, frames, sizes, protocol, floors, batch)
        keep = [path.name for path in onnx_files.values()] if fmt in ("onnx", "all") else []
        if trt is not None and (report is None or report["passed"]):
            engine_report, engine_files = _export_engines(trt, deploy, onnx_files, precisions, tmp, out, frames,
                                                          calib_frames, sizes, protocol, floors, batch, dynamic,
                                                          max_batch, height, width, log, parity)
            if report is not None:
                report["rows"] += engine_report["rows"]
                report["passed"] = report["passed"] and engine_report["passed"]
            keep += engine_files
        if report is not None:
            report.update(checkpoint=str(checkpoint), root=str(parity_root), split=split,
                          int8_vs_fp32=_int8_summary(report, sizes[0]))
            log(format_parity(report))
            summary = report["int8_vs_fp32"]
            if summary and summary["speedup"]:
                log(f"INT8 vs FP32 in ONNX Runtime on this CPU: {summary['int8_ms']:.2f} vs "
                    f"{summary['fp32_ms']:.2f} ms/frame ({summary['speedup']:.2f}x), mIoU {summary['miou_int8']:.2f} "
                    f"vs {summary['miou_fp32']:.2f}")
            require_parity(report)
            save_report(report, tmp / REPORT_NAME)
            keep.append(REPORT_NAME)
        else:
            (out / REPORT_NAME).unlink(missing_ok=True)  # it described the files replaced now
        for name in keep:
            os.replace(tmp / name, out / name)
        log(f"wrote {', '.join(keep)} to {out}")
        return {"out": str(out), "files": [str(out / name) for name in keep], "parity": report}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_engines(trt, deploy, onnx_files, precisions, tmp, out, frames, calib_frames, sizes, protocol, floors,
                    batch, dynamic, max_batch, height, width, log, parity=True):
    """Build one engine per precision into tmp, check them like the ONNX files (unless `parity` is False: the
    report is then None); returns (report, file names)."""
    from .tensorrt import (ENGINE_NAMES, TIMING_CACHE_NAME, build_engine, engine_onnx, profile_shapes,
                           trt_generation, write_engine_metadata)
    generation = trt_generation(trt.__version__)
    profile = profile_shapes(height, width, dynamic, max_batch=max_batch, multiple=deploy.segnet.output_stride)
    timing_cache = tmp / TIMING_CACHE_NAME
    if (out / TIMING_CACHE_NAME).is_file():
        shutil.copyfile(out / TIMING_CACHE_NAME, timing_cache)  # earlier builds' tactic timings
    files, variants = [TIMING_CACHE_NAME], []
    for precision in precisions:
        source = engine_onnx(precision, generation, onnx_files)
        engine = tmp / ENGINE_NAMES[precision]
        info = build_engine(source, engine, precision, profile, [f.image for f in calib_frames], timing_cache,
                            log=log)
        metadata = read_metadata(source)
        sidecar = write_engine_metadata(engine, metadata, info)
        files += [engine.name, sidecar.name] + ([info["calibration_cache"]] if info["calibration_cache"] else [])
        if parity:
            variants.append({"name": f"trt-{precision}", "precision": precision, "file": engine.name,
                             "runner": EngineParityRunner(engine, deploy.output)})
    return (check_parity(deploy, variants, frames, sizes, protocol, floors, batch) if parity else None), files


def _int8_summary(report, size):
    """INT8 vs FP32 ONNX at the export size: speed-up on this CPU and the mIoU change; None without INT8."""
    rows = {r["name"]: r for r in report["rows"] if tuple(r["size"]) == tuple(size)}
    fp32, int8 = rows.get("onnx-fp32"), rows.get("onnx-int8")
    if not fp32 or not int8:
        return None
    return {"fp32_ms": fp32.get("latency_ms"), "int8_ms": int8.get("latency_ms"),
            "speedup": fp32["latency_ms"] / int8["latency_ms"] if int8.get("latency_ms") else None,
            "miou_fp32": fp32["miou_export"], "miou_int8": int8["miou_export"],
            "miou_change": int8["miou_export"] - fp32["miou_export"]}
