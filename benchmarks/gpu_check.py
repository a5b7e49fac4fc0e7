"""The first thing to run on a machine with one NVIDIA GPU: every CUDA and TensorRT path of cirn, in one command.

    pip uninstall -y onnxruntime && pip install -e ".[gpu,train]"    # the gpu extra (and torch, for training)
    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check] [--budget 540]

Steps, each a subprocess with its own time limit (a failed or timed-out step is reported and the next one runs):
  environment   GPU, driver, torch CUDA, ONNX Runtime providers, TensorRT and cuda-python versions
  toy-train     a toy model trained on the GPU (small toy set, source-only, bf16)
  toy-export    its FP32/FP16/INT8 ONNX and TensorRT engines (dynamic), parity against PyTorch at the export floors
  r101-export   DeepLab-v2 R101 + ACM (K=2, random weights) at 512x1024, the same, 4 parity images
  toy-latency   run_latency.py on the toy model: every CUDA and TensorRT row
  r101-latency  run_latency.py on R101 at 512x1024
  video         a 1024x512 toy clip through cirn-run with the fastest engine: end-to-end vs pure-inference FPS
                (the runtime's goal: >= 90%)
  stage2-step   one paper-resolution stage-2 iteration (1280x720 + 1024x512), bf16 autocast: time and peak memory
  stage1-step   one stage-1 iteration (CycleGAN + the R101 of L_sem) at the paper preset's crop, bf16
Everything lands in --out: each step's log, gpu_check.json (every figure) and gpu_check.md (one table). Without a
GPU it says so and exits 2 before doing anything.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


@dataclass
class Step:
    name: str
    what: str
    command: list
    timeout_s: int
    result: dict = field(default_factory=dict)


def cli(name, *args):
    """A cirn command through this interpreter (the console scripts may belong to another environment)."""
    main = {"cirn-data": "data_main", "cirn-train": "train_main", "cirn-export": "export_main",
            "cirn-run": "run_main"}[name]
    return [PYTHON, "-c", f"from cirn.cli import {main}; {main}()", *map(str, args)]


def gpu_present():
    """(True, description) when torch sees a CUDA GPU, else (False, why not)."""
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed (pip install -e '.[gpu,train]')"
    if not torch.cuda.is_available():
        return False, "no GPU: torch.cuda.is_available() is False (no NVIDIA GPU, driver or CUDA build of PyTorch)"
    return True, torch.cuda.get_device_name(0)


def plan(out):
    """The steps, in order, writing under `out`."""
    data, toy_run = out / "toy-data", out / "toy-run"
    toy_ckpt, r101_ckpt = toy_run / "best.pt", out / "deeplabv2-r101-random.pt"
    toy_export, r101_export = out / "toy-export", out / "r101-export"
    clip = out / "clip1024.mp4"
    data_args = ["--source-root", data / "gta5", "--target-root", data / "cityscapes"]
    latency = [PYTHON, HERE / "run_latency.py", "--skip", "torch-eager", "--skip", "torch-compile",
               "--skip", "ort-cpu-fp32", "--skip", "ort-cpu-int8"]
    return [
        Step("environment", "GPU, driver and libraries", [PYTHON, HERE / "gpu_check.py", "--environment"], 60),
        Step("toy-data", "a small toy set", cli("cirn-data", "toy", "--out", data, "--num-source", 200,
                                                 "--num-train", 100, "--num-val", 50), 120),
        Step("toy-train", "toy source-only on the GPU, bf16",
             cli("cirn-train", "source-only", *data_args, "--out", toy_run, "--quiet", "run.device=cuda",
                 "run.amp=bf16", "run.iterations=300", "run.eval_every=300", "run.checkpoint_every=300"), 180),
        Step("toy-export", "toy FP32/FP16/INT8 ONNX + TensorRT engines, parity",
             cli("cirn-export", toy_ckpt, "--out", toy_export, "--fp16", "--int8", "--dynamic", "--format", "all",
                 "--parity-root", data / "cityscapes", "--calib-images", 8), 300),
        Step("r101-weights", "DeepLab-v2 R101 + ACM with random weights",
             [PYTHON, HERE / "gpu_check.py", "--random-checkpoint", r101_ckpt], 60),
        Step("r101-export", "R101 512x1024 FP32/FP16/INT8 ONNX + TensorRT engines, parity",
             cli("cirn-export", r101_ckpt, "--out", r101_export, "--fp16", "--int8", "--format", "all",
                 "--height", 512, "--width", 1024, "--parity-root", data / "cityscapes", "--parity-images", 4,
                 "--calib-images", 8), 420),
        Step("toy-latency", "run_latency.py, toy model, CUDA and TensorRT rows",
             [*latency, "--model", toy_export / "model.onnx", "--quick", "--out", out / "latency-toy"], 300),
        Step("r101-latency", "run_latency.py, R101 512x1024, CUDA and TensorRT rows",
             [*latency, "--model", r101_export / "model.onnx", "--quick", "--skip", "torch-compile-cuda",
              "--out", out / "latency-r101"], 420),
        Step("video-clip", "a 1024x512 toy clip", cli("cirn-data", "toy-video", "--out", clip, "--size", "1024x512",
                                                      "--frames", 120), 120),
        Step("video", "cirn-run with the fastest toy engine on the 1024x512 clip",
             [PYTHON, HERE / "gpu_check.py", "--video", clip, "--engines", toy_export, "--out", out], 240),
        Step("stage2-step", "one paper-resolution stage-2 iteration, bf16",
             [PYTHON, HERE / "train_step.py", "--stage", "2", "--device", "cuda", "--amp", "bf16",
              "--json", out / "stage2-step.json"], 240),
        Step("stage1-step", "one paper-preset stage-1 iteration, bf16",
             [PYTHON, HERE / "train_step.py", "--stage", "1", "--device", "cuda", "--amp", "bf16",
              "--json", out / "stage1-step.json"], 240),
    ]


def run_step(step, out, deadline):
    """Run one step with its limit (never past the overall deadline); its output goes to out/NAME.log."""
    limit = min(step.timeout_s, int(deadline - time.monotonic()))
    if limit < 5:
        step.result = {"status": "not run (the budget is spent)", "seconds": 0}
        print(f"{step.name:<14} {step.result['status']}", flush=True)
        return step.result
    log = out / f"{step.name}.log"
    start = time.monotonic()
    try:
        with open(log, "w") as f:
            done = subprocess.run([str(c) for c in step.command], stdout=f, stderr=subprocess.STDOUT, timeout=limit)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit} s"
    step.result = {"status": status, "seconds": round(time.monotonic() - start, 1), "log": log.name,
                   "tail": log.read_text(errors="replace").strip().splitlines()[-3:]}
    print(f"{step.name:<14} {status:<24} {step.result['seconds']:>7.1f} s  {step.what}", flush=True)
    return step.result


def collect(out):
    """The figures the steps left behind: parity tables, latency rows, the video ratio, the training steps."""
    figures = {}
    for name in ("toy-export", "r101-export"):
        parity = out / name / "parity.json"
        if parity.is_file():
            rows = json.loads(parity.read_text())["rows"]
            figures[name] = [{k: r.get(k) for k in ("name", "size", "label_agreement", "floor", "passed",
                                                     "latency_ms")} for r in rows]
    for name in ("latency-toy", "latency-r101"):
        report = out / name / "latency.json"
        if report.is_file():
            rows = json.loads(report.read_text()).get("rows", [])
            figures[name] = [{k: r.get(k) for k in ("name", "status", "p50_ms", "fps", "memory_mb", "note")}
                             for r in rows]
    for name in ("video", "stage2-step", "stage1-step", "environment"):
        path = out / f"{name}.json"
        if path.is_file():
            figures[name] = json.loads(path.read_text())
    return figures


def markdown(steps, figures):
    """One table of the steps, then each step's figures."""
    lines = ["| step | status | seconds | what |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.result.get('status', 'not run')} | {s.result.get('seconds', '')} | {s.what} |"
              for s in steps]
    for name, value in figures.items():
        lines += ["", f"### {name}", "", "```json", json.dumps(value, indent=1), "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- helpers the steps call
def environment(out):
    import torch
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)}
    try:
        import onnxruntime
        info["onnxruntime"] = {"version": onnxruntime.__version__,
                               "providers": onnxruntime.get_available_providers()}
        from cirn.runtime.ort import provider_tensorrt_generation
        info["onnxruntime"]["tensorrt_provider_links_libnvinfer"] = provider_tensorrt_generation(onnxruntime)
    except ImportError as err:
        info["onnxruntime"] = f"missing: {err}"
    try:
        import tensorrt
        info["tensorrt"] = tensorrt.__version__
    except ImportError as err:
        info["tensorrt"] = f"missing: {err}"
    from cirn.runtime.tensorrt import cuda_device_count, import_cudart
    info["cuda_python"] = bool(import_cudart()) and f"{cuda_device_count()} device(s)"
    smi = shutil.which("nvidia-smi")
    if smi:
        info["nvidia_smi"] = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    (out / "environment.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def video(clip, engines, out):
    """cirn-run on the clip with each engine, fastest pure-inference FPS kept: the end-to-end / pure ratio."""
    results = {}
    for engine in sorted(Path(engines).glob("model*.engine")):
        summary = out / f"video-{engine.stem}.json"
        subprocess.run(cli("cirn-run", clip, "--model", engine, "--benchmark", "--batch", 4, "--summary", summary,
                           "--out", out / f"video-{engine.stem}.mp4", "--quiet"), check=True)
        info = json.loads(summary.read_text())
        bench = info["benchmark"]
        results[engine.name] = {"end_to_end_fps": bench["end_to_end_fps"],
                                "pure_inference_fps": bench["pure_inference_fps"], "ratio": bench["ratio"]}
    if not results:
        raise SystemExit(f"no engines in {engines}")
    fastest = max(results, key=lambda name: results[name]["pure_inference_fps"])
    report = {"engines": results, "fastest": fastest, "ratio": results[fastest]["ratio"], "goal": 0.9,
              "met": results[fastest]["ratio"] >= 0.9}
    (out / "video.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def random_checkpoint(path):
    sys.path.insert(0, str(HERE))
    import variants
    made = variants.random_checkpoint("deeplabv2-r101", Path(path).parent)
    Path(made).replace(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_check"))
    parser.add_argument("--budget", type=int, default=540, help="seconds for all the steps together")
    parser.add_argument("--environment", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--random-checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--video", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engines", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    present, detail = gpu_present()
    if not present:
        print(f"error: {detail}; gpu_check runs on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    if args.environment:
        return environment(out)
    if args.random_checkpoint:
        return random_checkpoint(args.random_checkpoint)
    if args.video:
        return video(args.video, args.engines, out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {detail}: {args.budget} s for everything -> {out}", flush=True)
    deadline = time.monotonic() + args.budget
    steps = plan(out)
    for step in steps:
        run_step(step, out, deadline)
    figures = collect(out)
    report = {"gpu": detail, "steps": {s.name: {**s.result, "what": s.what} for s in steps}, "figures": figures}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(steps, figures))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0 if all(s.result.get("status") == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
