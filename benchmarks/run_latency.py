"""Latency, throughput, memory and compute efficiency of one model in every backend and precision.

    python benchmarks/run_latency.py --quick          # the newest runs/**/best.pt, else a random-weight `tiny`
    python benchmarks/run_latency.py --model deeplabv2-r101 --height 512 --width 1024
    python benchmarks/run_latency.py --model runs/oracle/export/model.onnx --batch 4

Variants: PyTorch eager and torch.compile (CPU; CUDA), ONNX Runtime CPU FP32 and INT8, ONNX Runtime CUDA and its
TensorRT EP (FP16), native TensorRT FP32/FP16/INT8. Each runs in its own process: after warm-up, calls of --batch
frames until both --iterations calls and --seconds have passed. Per variant:
- latency of one call p50/p90/p99 and frames per second (a GPU variant's calls include the host copies);
- memory: CPU, peak RSS during the timed calls minus RSS before loading the model; GPU, device memory in use after
  them minus before loading (all allocators), at least torch's max allocated;
- the model file's size;
- achieved GFLOP/s (the fused network's forward GFLOPs from `summarize`, 2 x MAC, times FPS) as a percentage of the
  device's measured peak: the fastest fp32 rate of this run, of PyTorch's and ONNX Runtime's fp32 GEMMs (median of
  their runs, before and after the variants) and of the FP32 variants themselves, so an FP32 share is at most 100%
  (FP16 and INT8 rows may pass it: their arithmetic is not fp32). Beside it, the CPU's theoretical fp32 FMA peak
  (cores x clock x FMA units x lanes x 2, an estimate from /proc/cpuinfo). Every CPU variant and the CPU GEMMs use
  the same thread count (--threads).
A variant that cannot run here still gets a row with the reason.

--model: a checkpoint, an exported .onnx (the variants cirn-export wrote beside it), or a model name
(deeplabv2-r101, deeplabv2-r50, mobilenetv3, tiny): random weights, fine for speed. Checkpoints and names are
exported here by cirn-export's export_checkpoint with its parity check off (variants.prepare). Writes latency.md,
.csv, .json and .png to --out and prints the goal ratios.
"""
import argparse
from pathlib import Path

import measure
import variants
from report import log, markdown_table, run_script, short_reason, status_row, write_report

QUICK = {"warmup": 1, "iterations": 5, "seconds": 0.5, "gemm_size": 1024, "gemm_runs": 5, "calib_images": 2,
         "timeout": 600}
FULL = {"warmup": 3, "iterations": 30, "seconds": 5.0, "gemm_size": 2048, "gemm_runs": 10, "calib_images": 8,
        "timeout": 3600}
CUDA_GEMM = {"size": 8192, "runs": 20}

# (key, what, goal, unit, numerator row, denominator row; None: the numerator's percentage of the GEMM peak)
GOALS = (
    ("ort_fp32_over_torch_eager", "ONNX Runtime FP32 / PyTorch eager speed-up (CPU)", 1.5, "x", "ort-cpu-fp32",
     "torch-eager"),
    ("int8_over_fp32", "ONNX Runtime INT8 / FP32 speed-up (CPU)", 1.8, "x", "ort-cpu-int8", "ort-cpu-fp32"),
    ("onnx_fp32_over_gemm", "ONNX Runtime FP32 GFLOP/s / the measured fp32 peak (CPU)", 80.0, "%", "ort-cpu-fp32",
     None),
)
PEAK_GOAL = GOALS[2][2]

COLUMNS = [("variant", "name", ""), ("backend", "label", ""), ("device", "device", ""),
           ("precision", "precision", ""), ("status", "status", ""), ("p50 ms", "p50_ms", ".2f"),
           ("p90 ms", "p90_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"), ("FPS", "fps", ".1f"),
           ("memory MB", "memory_mb", ".0f"), ("size MB", "size_mb", ".2f"), ("GFLOP/s", "gflops_per_s", ".1f"),
           ("% of peak", "percent_of_peak", ".1f"), ("% of FMA est.", "percent_of_fma_peak", ".1f"),
           ("note", "note", "")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint, .onnx or model name (default: newest "
                        "runs/**/best.pt, else tiny)")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="frames per call")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of every CPU variant and the GEMMs "
                        "(default: the cores available)")
    parser.add_argument("--quick", action="store_true", help="few iterations, small GEMM, 2 calibration images")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per variant")
    parser.add_argument("--iterations", type=int, default=None, help="minimum timed calls per variant")
    parser.add_argument("--seconds", type=float, default=None, help="minimum timed seconds per variant")
    parser.add_argument("--calib", default=None, help="INT8 calibration images: a Cityscapes root or an image "
                        "folder (default: the run's target train split, else the toy target)")
    parser.add_argument("--calib-images", type=int, default=None, help="INT8 calibration images")
    parser.add_argument("--timeout", type=int, default=None, help="seconds one variant may take")
    variants.add_output_args(parser)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("warmup", "iterations", "seconds", "calib_images", "timeout"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    return args, settings


def main(argv=None):
    """Run the benchmark; returns the report (also written to --out)."""
    import torch

    from cirn.runtime.backends import available_cores
    args, settings = parse_args(argv)
    size_hw = variants.size_hw_of(args.height, args.width)
    chosen = variants.selected(args.skip)
    threads = args.threads or available_cores()
    env = measure.environment(threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    with variants.work_dir(args.export_dir) as work:
        prepared = variants.prepare(args.model, work, size_hw, args.batch, chosen, args.calib,
                                    settings["calib_images"], args.runs_dir)
        gflops = prepared.gflops_per_frame()
        height, width = prepared.size_hw
        log(f"benchmarking {prepared.source} at {height}x{width}, batch {args.batch}, {threads} CPU threads")
        gemm = {"before": _gemm(devices, threads, settings)}
        rows = []
        for variant in variants.VARIANTS:
            row = status_row(variant, "skipped", "--skip")
            if variant in chosen and variant.name in prepared.missing:
                row = status_row(variant, *prepared.missing[variant.name])
            elif variant in chosen:
                path = prepared.files[variant.name]
                log(f"  {variant.name}: {path.name}")
                row = status_row(variant, "ok")
                row.update(size_mb=path.stat().st_size / 1e6,
                           **measure.measure_in_subprocess(variant, path, prepared.size_hw, args.batch, threads,
                                                           settings))
            rows.append(row)
        gemm["after"] = _gemm(devices, threads, settings)

    for row in rows:
        row["note"] = _note(row)
        if row["status"] == "ok" and gflops is not None:
            row["gflops_per_s"] = gflops * row["fps"]
    peaks = {device: measure.reference_peak(gemm.values(), rows, device) for device in devices}
    fma_peak = measure.cpu_fp32_peak(threads)
    for row in rows:
        if row.get("gflops_per_s") is not None:
            row["percent_of_peak"] = 100.0 * row["gflops_per_s"] / peaks[row["device"]][0]
            if row["device"] == "cpu" and fma_peak["gflops"]:
                row["percent_of_fma_peak"] = 100.0 * row["gflops_per_s"] / fma_peak["gflops"]
    goals = goal_ratios(rows)
    meta = (prepared.state or {}).get("model_meta", {})
    report = {"model": {"source": prepared.source, "name": meta.get("name"), "num_classes": meta.get("num_classes"),
                        "random_weights": prepared.random_weights, "gflops_per_frame": gflops},
              "input": {"height": height, "width": width, "batch": args.batch},
              "settings": {**settings, "quick": args.quick}, "environment": env,
              "gemm_gflops_per_s": {"before": gemm["before"], "after": gemm["after"],
                                    "peak": {device: rate for device, (rate, _) in peaks.items()},
                                    "peak_from": {device: source for device, (_, source) in peaks.items()}},
              "cpu_fp32_fma_peak_estimate": fma_peak, "goals": goals, "rows": rows}
    table = markdown_table(rows, COLUMNS)
    paths = write_report(args.out, "latency", report, table)
    paths["png"] = Path(args.out) / "latency.png"
    plot(rows, paths["png"], title(report))
    print(summary(report, table))
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return report


def _gemm(devices, threads, settings):
    sizes = {"cpu": (settings["gemm_size"], settings["gemm_runs"]), "cuda": (CUDA_GEMM["size"], CUDA_GEMM["runs"])}
    return {device: measure.gemm_gflops(device, threads, *sizes[device]) for device in devices}


def _note(row):
    if row["status"] != "ok":
        return short_reason(row)
    return f"{row['iterations']} calls; load {row['load_s']:.1f} s, warm-up {row['warmup_s']:.1f} s"


def goal_ratios(rows):
    """Each goal's measured value (None when a row it needs did not run) and whether it is met."""
    ok = {r["name"]: r for r in rows if r["status"] == "ok"}
    goals = {}
    for key, what, goal, unit, numerator, denominator in GOALS:
        value = None
        if denominator is None:
            value = ok.get(numerator, {}).get("percent_of_peak")
        elif numerator in ok and denominator in ok:
            value = ok[numerator]["fps"] / ok[denominator]["fps"]
        goals[key] = {"what": what, "value": value, "goal": goal, "unit": unit,
                      "met": None if value is None else value >= goal,
                      "rows": [n for n in (numerator, denominator) if n]}
    return goals


def _goal_line(goal):
    unit = goal["unit"]
    value = (f"not measured ({' or '.join(goal['rows'])} did not run)" if goal["value"] is None else
             f"{goal['value']:.2f}{unit}")
    verdict = "" if goal["met"] is None else ("  met" if goal["met"] else "  NOT met")
    return f"  {goal['what']}: {value} (goal >= {goal['goal']:g}{unit}){verdict}"


def title(report):
    env, model, size = report["environment"], report["model"], report["input"]
    name = (model["name"] or Path(model["source"]).name) + (" (random weights)" if model["random_weights"] else "")
    device = f", {env['gpu']}" if env["gpu"] else ""
    threads = env["threads"]
    return (f"{name} at {size['height']}x{size['width']}, batch {size['batch']}; {env['cpu']}, "
            f"{threads} thread{'s' if threads > 1 else ''}{device}")


def summary(report, table):
    """The printed result: what was measured, the table, the measured and theoretical peaks and the goals."""
    gemm = report["gemm_gflops_per_s"]
    lines = [title(report), "", table, ""]
    for device in gemm["peak"]:
        before, after = gemm["before"][device], gemm["after"][device]
        rates = ", ".join(f"{library} {_rate(before.get(library))} / {_rate(after.get(library))}"
                          for library in dict.fromkeys([*before, *after]))
        lines.append(f"fp32 GEMM ({device}), before / after the variants: {rates} GFLOP/s")
        lines.append(f"measured fp32 peak ({device}): {gemm['peak'][device]:.1f} GFLOP/s, the fastest of this run "
                     f"({gemm['peak_from'][device]}): the 100% of '% of peak'")
    fma = report["cpu_fp32_fma_peak_estimate"]
    lines.append(f"theoretical fp32 FMA peak (cpu): {fma['gflops']:.1f} GFLOP/s = {fma['how']}" if fma["gflops"]
                 else f"theoretical fp32 FMA peak (cpu): {fma['how']}")
    gflops = report["model"]["gflops_per_frame"]
    lines.append(f"model forward: {gflops:.3f} GFLOP per frame" if gflops is not None else
                 "model forward GFLOPs unknown (no checkpoint): GFLOP/s not computed")
    lines += ["goals, measured in this run:"] + [_goal_line(g) for g in report["goals"].values()]
    warning = measure.shared_cpu_warning(report["environment"])
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def _rate(gflops):
    return "-" if gflops is None else f"{gflops:.1f}"


def plot(rows, path, title_text):
    """FPS and percentage of the GEMM peak per variant, as horizontal bars; variants that did not run are named."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    y = range(len(rows))
    colours = ["tab:blue" if r["device"] == "cpu" else "tab:green" for r in rows]
    fig, (ax_fps, ax_peak) = plt.subplots(1, 2, figsize=(13, 1.5 + 0.4 * len(rows)), sharey=True)
    fps = [r.get("fps") or 0 for r in rows]
    ax_fps.barh(y, fps, color=colours)
    measured = [f for f in fps if f > 0]
    if measured and max(measured) / min(measured) > 50:
        ax_fps.set_xscale("log")  # CPU and GPU rows differ by orders of magnitude
    ax_peak.barh(y, [r.get("percent_of_peak") or 0 for r in rows], color=colours)
    ax_peak.axvline(PEAK_GOAL, color="grey", linestyle="--", linewidth=1, label=f"goal {PEAK_GOAL:g}% (ONNX FP32)")
    ax_peak.legend(loc="lower right", fontsize=8)
    for i, row in enumerate(rows):
        if row["status"] == "ok":
            ax_fps.text(row["fps"], i, f" {row['fps']:.1f}", va="center", fontsize=8)
            if row.get("percent_of_peak") is not None:
                ax_peak.text(row["percent_of_peak"], i, f" {row['percent_of_peak']:.1f}%", va="center", fontsize=8)
        else:
            for ax in (ax_fps, ax_peak):
                ax.text(0.01, i, row["status"], transform=ax.get_yaxis_transform(), va="center", color="grey")
    for ax in (ax_fps, ax_peak):
        ax.margins(x=0.12)  # room for the value labels
    ax_fps.set_yticks(list(y), [r["name"] for r in rows])
    ax_fps.invert_yaxis()
    ax_fps.set_xlabel("frames per second (blue: CPU, green: GPU)")
    ax_peak.set_xlabel("achieved GFLOP/s, % of the measured fp32 peak on the same device")
    fig.suptitle(title_text, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_script(main)
