"""Command-line entry points. Thin: parse, load config, call a library function, print errors on one line."""
import functools
import sys

import click

from cirn import __version__
from cirn.export.choices import DEFAULT_EXPORTER, DEFAULT_FLOORS, EXPORTERS, FORMATS, OUTPUTS
from cirn.runtime.backends import BACKENDS, DEVICES, PRECISIONS
from cirn.runtime.sources import BAD_FRAME_POLICIES
from cirn.train.config import CIR_METHODS, MODEL_NAMES, PROTOCOLS, SOURCES, TARGETS, TOY_LOOKS, preset_names


TRAINING_STACK = ("torch", "torchvision", "onnx", "onnxscript", "yaml", "matplotlib", "tensorboard")


def user_errors(fn):
    """Turn CirnError (a user mistake) into `error: message` and exit code 2, without a traceback; so too a
    command that needs the training stack on a deploy-only install (`pip install cirn[cpu]`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cirn.common.errors import CirnError
        try:
            return fn(*args, **kwargs)
        except CirnError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] not in TRAINING_STACK:
                raise
            click.echo(f"error: this needs the training stack ({err.name} is not installed): pip install "
                       "'cirn[train]'. A deploy-only install runs exported .onnx and .engine models with cirn-run",
                       err=True)
            sys.exit(2)
    return wrapper


# ---------------------------------------------------------------- cirn-data
@click.group(help="Datasets: generate the built-in toy domain pair.")
@click.version_option(__version__)
def data_main():
    pass


@data_main.command("toy", help="Render the procedural toy domain pair: a game-like source (GTA5 or SYNTHIA layout) "
                               "and a camera-like target (Cityscapes layout, train and val with labels).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: $CIRN_DATA/toy, i.e. ~/.cache/cirn/toy; toy-dusk for --look dusk].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["gta5", "synthia", "carla", "both"]), default="gta5",
              show_default=True, help="Layout of the source domain; carla: a folder source (images/, labels/) with "
                                      "CARLA >= 0.9.14 raw semantic labels, for --source folder --label-map carla.")
@click.option("--num-source", type=int, default=500, show_default=True)
@click.option("--num-train", type=int, default=500, show_default=True, help="Target train images.")
@click.option("--num-val", type=int, default=100, show_default=True, help="Target val images.")
@click.option("--workers", type=int, default=0, help="Processes [default: all cores].")
@click.option("--look", type=click.Choice(TOY_LOOKS), default="camera", show_default=True,
              help="Look of the target: camera, or dusk (the same scenes and labels painted by a camera at dusk; "
                   "train on it with data.toy_look=dusk).")
@user_errors
def data_toy(out, seed, fmt, num_source, num_train, num_val, workers, look):
    from cirn.train import toy
    out = out or toy.default_root(seed, look)
    summary = toy.generate(out, seed=seed, fmt=fmt, num_source=num_source, num_train=num_train,
                           num_val=num_val, workers=workers or None, look=look)
    click.echo(summary)


# ---------------------------------------------------------------- cirn-eval
@click.command(help="Score a folder of prediction PNGs against Cityscapes-layout labels with the official protocol.")
@click.option("--pred-dir", type=click.Path(), required=True,
              help="Prediction PNGs named like the images ({name}_leftImg8bit.png or {name}.png), any sub-folders.")
@click.option("--target-root", type=click.Path(), default=None,
              help="Cityscapes root (gtFine/...); default: the built-in toy target.")
@click.option("--split", default="val", show_default=True)
@click.option("--protocol", type=click.Choice([str(p) for p in PROTOCOLS]), default=str(PROTOCOLS[0]),
              show_default=True)
@click.option("--pred-format", type=click.Choice(["trainid", "labelid"]), default="trainid", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the scores here.")
@click.version_option(__version__)
@user_errors
def eval_main(pred_dir, target_root, split, protocol, pred_format, json_out):
    from cirn.train import evaluate
    result = evaluate.evaluate_folder(pred_dir, target_root=target_root, split=split, protocol=int(protocol),
                                      pred_format=pred_format)
    click.echo(evaluate.format_table(result))
    if json_out:
        evaluate.save_json(result, json_out)


# ---------------------------------------------------------------- cirn-train
@click.group(help="Train CIRN: baselines, the stages of the method, and model summaries.")
@click.version_option(__version__)
def train_main():
    pass


def run_options(fn):
    """The data and run options every training command shares; `key.sub=value` overrides come last."""
    options = [
        click.option("--source", type=click.Choice(SOURCES), default=None,
                     help="Labelled source domain [preset's, toy by default]."),
        click.option("--source-root", type=click.Path(), default=None,
                     help="Source dataset root (--source folder: a folder with images/ and labels/)."),
        click.option("--label-map", default=None,
                     help="What the source labels hold: cityscapes | trainids | gta5 | synthia | carla | "
                          "carla-legacy | palette, or a YAML file (which may define its own classes) [the source's "
                          "own format]."),
        click.option("--target", type=click.Choice(TARGETS), default=None,
                     help="Target domain [preset's, toy by default]: folder = every image under --target-root, "
                          "video = a video file or a folder of videos (data.frame_stride)."),
        click.option("--target-root", type=click.Path(), default=None,
                     help="Cityscapes root, folder of images, video file or folder of videos."),
        click.option("--target-val", type=click.Path(), default=None,
                     help="A few labelled target frames (images/ + labels/, or a Cityscapes root) to score the rows "
                          "and pick checkpoints; without it no target label is read."),
        click.option("--pretrained", default=None,
                     help="Backbone init: 'imagenet' or a weights file (torchvision, DeepLab init, or a cirn "
                          "checkpoint: its backbone)."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder [default: runs/COMMAND]."),
        click.option("--preset", default="toy", show_default=True, help=" | ".join(preset_names()) + "."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML file applied after the preset."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.argument("overrides", nargs=-1),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve_run(command, preset, config_file, overrides, out, resume, **data):
    """(config, run folder) of a training command: config.resolve_run with the command's data options (and
    --pretrained) as explicit updates; the run folder defaults to runs/COMMAND."""
    from pathlib import Path

    from cirn.train import config, distributed
    distributed.init()  # under torchrun: join the process group (gloo on CPU, NCCL on GPUs)
    run_dir = Path(out or Path("runs") / command)
    model_keys = {"pretrained"}
    updates = {"data": {k: v for k, v in data.items() if k not in model_keys},
               "model": {k: v for k, v in data.items() if k in model_keys}}
    return config.resolve_run(run_dir, preset, config_file, overrides, updates, resume=resume), run_dir


def _main_process():
    """False in the torchrun processes other than 0, which train but print nothing."""
    from cirn.train import distributed
    return distributed.is_main()


def print_summary(summary):
    if not _main_process():
        return
    if summary["best_miou"] is None:
        click.echo(f"no target labels: best.pt is iteration {summary['best_iteration']}, picked by "
                   f"{summary['select']} -> {summary['run_dir']}/best.pt")
        return
    click.echo(f"best target mIoU {summary['best_miou']:.2f} at iteration {summary['best_iteration']} "
               f"-> {summary['run_dir']}/best.pt")


@train_main.command("source-only", help="Supervised on the source (the SO baseline); with --intermediate, on the "
                                        "intermediate domain (the CIR row).")
@click.option("--intermediate", type=click.Path(file_okay=False), default=None,
              help="Intermediate domain (stage 1 output, source layout).")
@run_options
@user_errors
def train_source_only(intermediate, preset, config_file, overrides, out, resume, quiet, **data):
    from cirn.train import supervised
    cfg, run_dir = resolve_run("source-only" if not intermediate else "cir", preset, config_file, overrides, out,
                               resume, intermediate_root=intermediate, **data)
    print_summary(supervised.run(cfg, run_dir, domain="source", resume=resume, quiet=quiet))


@train_main.command("oracle", help="Supervised on target labels (toy only): the upper bound.")
@run_options
@user_errors
def train_oracle(preset, config_file, overrides, out, resume, quiet, **data):
    from cirn.train import supervised
    cfg, run_dir = resolve_run("oracle", preset, config_file, overrides, out, resume, **data)
    print_summary(supervised.run(cfg, run_dir, domain="target", resume=resume, quiet=quiet))


@train_main.command("stage2", help="Adaptive segmentation (C + ACM, weighted adversarial loss, weight discrepancy) "
                                   "from the intermediate domain, or from the source when none is given.")
@click.option("--intermediate", type=click.Path(file_okay=False), default=None,
              help="Intermediate domain (stage 1 output, source layout); default: the source itself (ASS only).")
@run_options
@user_errors
def train_stage2(intermediate, preset, config_file, overrides, out, resume, quiet, **data):
    from cirn.train import stage2
    cfg, run_dir = resolve_run("stage2", preset, config_file, overrides, out, resume,
                               intermediate_root=intermediate, **data)
    print_summary(stage2.run(cfg, run_dir, resume=resume, quiet=quiet))


@train_main.command("stage3", help="Self-training: class-balanced pseudo labels of the target train split from a "
                                   "stage-2 model, then fine-tuning on them (stage3.rounds rounds).")
@click.option("--model", "init", type=click.Path(dir_okay=False), required=True,
              help="Stage-2 checkpoint to start from (its best.pt).")
@click.option("--intermediate", type=click.Path(file_okay=False), default=None,
              help="Intermediate domain trained alongside the pseudo labels (stage3.source_weight) [default: the "
                   "source].")
@run_options
@user_errors
def train_stage3(init, intermediate, preset, config_file, overrides, out, resume, quiet, **data):
    from cirn.train import stage3
    cfg, run_dir = resolve_run("stage3", preset, config_file, overrides, out, resume, intermediate_root=intermediate,
                               **data)
    result = stage3.run(cfg, run_dir, init=init, resume=resume, quiet=quiet)
    if _main_process() and result["best_miou"] is None:
        click.echo(f"no target labels: {len(result['rounds'])} round(s) -> {result['best']}")
    elif _main_process():
        click.echo(f"best target mIoU {result['best_miou']:.2f} after {len(result['rounds'])} round(s) -> "
                   f"{result['best']}")


@train_main.command("all-stages", help="The whole method: source-only, stage 1, CIR, ASS, CIR+ASS, ASS+ST, CIR+ASS+ST; "
                                        "ends with the paper's Table 4 (ablation.json, a bar chart, example grids). "
                                        "Without ImageNet weights (model.pretrained='', the toy) a pretrain step on "
                                        "the source comes first, and SO, CIR, ASS and CIR+ASS start from its "
                                        "backbone. Re-running skips finished stages.")
@run_options
@user_errors
def train_all_stages(preset, config_file, overrides, out, resume, quiet, **data):
    from cirn.train import pipeline
    cfg, run_dir = resolve_run("all-stages", preset, config_file, overrides, out, resume, **data)
    pipeline.run(cfg, run_dir, quiet=quiet)


@train_main.command("describe", help="Parameter counts and forward GFLOPs of a model.")
@click.option("--model", "name", default="deeplabv2-r101", show_default=True,
              type=click.Choice(MODEL_NAMES))
@click.option("--num-classes", type=int, default=19, show_default=True)
@click.option("--num-attention", "-K", type=int, default=2, show_default=True)
@click.option("--height", type=int, default=512, show_default=True)
@click.option("--width", type=int, default=1024, show_default=True)
@user_errors
def train_describe(name, num_classes, num_attention, height, width):
    from cirn.train.models import describe
    click.echo(describe(name, num_classes=num_classes, height=height, width=width, num_attention=num_attention))


@train_main.command("stage1", help="Build the intermediate domain: train a CycleGAN with the semantic-consistency "
                                   "loss of a frozen source-only model and translate the source (--cir cyclegan), "
                                   "or translate with FDA, no training (--cir fda).")
@click.option("--cir", type=click.Choice(CIR_METHODS), default=None,
              help="How to build the intermediate domain [the preset's stage1.cir: fda in toy, cyclegan in the "
                   "paper presets].")
@click.option("--beta", type=float, default=None, help="FDA low-frequency band, fraction of min(h, w) [0.01].")
@click.option("--seg-model", type=click.Path(dir_okay=False), default=None,
              help="Source-only segmentation checkpoint (best.pt of `cirn-train source-only`): the frozen f_S.")
@click.option("--intermediate-out", type=click.Path(file_okay=False), default=None,
              help="Where the intermediate domain goes [default: OUT/intermediate].")
@run_options
@user_errors
def train_stage1(cir, beta, seg_model, intermediate_out, preset, config_file, overrides, out, resume, quiet, **data):
    from pathlib import Path

    from cirn.train import stage1
    from cirn.train.config import merge
    cfg, run_dir = resolve_run("stage1", preset, config_file, overrides, out, resume, **data)
    flags = {"cir": cir, "beta": beta, "seg_checkpoint": str(Path(seg_model).resolve()) if seg_model else None}
    cfg = merge(cfg, {"stage1": {k: v for k, v in flags.items() if v is not None}})
    result = stage1.run(cfg, run_dir, resume=resume, quiet=quiet, intermediate_out=intermediate_out)
    if not _main_process():
        return
    if result["training"] is not None:
        click.echo(f"stage 1 ({result['method']}): {result['training']['iterations']} iterations -> "
                   f"{result['run_dir']}/checkpoints/last.pt")
    click.echo(f"intermediate domain ({result['method']}, {result['count']} images) -> {result['intermediate']}")
    click.echo(f"next: cirn-train stage2 --intermediate {result['intermediate']}")


# ---------------------------------------------------------------- cirn-export
@click.command(help="Export a trained model for deployment: one graph from RGB frames to a label map (normalisation, "
                    "C + ACM, upsampling and argmax inside), as ONNX (FP32, optional FP16 and INT8) and/or TensorRT "
                    "engines. Every variant is checked against PyTorch on target images; below its parity floor the "
                    "export fails and writes nothing. CHECKPOINT defaults to the newest best.pt under ./runs.")
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: export/ beside the checkpoint].")
@click.option("--fp16", is_flag=True, help="Also export FP16 (ONNX with half weights and activations).")
@click.option("--int8", is_flag=True, help="Also export INT8 (static Q/DQ, per-channel, calibrated on target images).")
@click.option("--calib", type=click.Path(file_okay=False), default=None,
              help="INT8 calibration images: a Cityscapes root (train split) or an image folder "
                   "[default: the target train split].")
@click.option("--calib-images", type=int, default=32, show_default=True, help="INT8 calibration images to use.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch, height and width (else fixed 1 x 3 x H x W).")
@click.option("--height", type=int, default=None, help="Input height [default: the run's data.target_size_wh].")
@click.option("--width", type=int, default=None, help="Input width [default: the run's data.target_size_wh].")
@click.option("--output", type=click.Choice(OUTPUTS), default=OUTPUTS[0], show_default=True,
              help="labels: uint8 (B, H, W) trainIds; probs: softmax (B, C, H, W); logits: (B, C, H, W).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="tensorrt needs the tensorrt package and a CUDA GPU.")
@click.option("--exporter", type=click.Choice(EXPORTERS), default=DEFAULT_EXPORTER, show_default=True,
              help="torch.onnx exporter: dynamo (opset 18) or the legacy TorchScript one (opset 17).")
@click.option("--input-dtype", type=click.Choice(["uint8", "float32"]), default="uint8", show_default=True,
              help="Type of the graph's frames input (values 0-255 either way).")
@click.option("--parity-root", type=click.Path(file_okay=False), default=None,
              help="Cityscapes root whose val split checks parity [default: the run's target root, else the toy].")
@click.option("--parity-images", type=int, default=20, show_default=True, help="Images in the parity check.")
@click.option("--parity-floor-fp16", type=float, default=DEFAULT_FLOORS["fp16"], show_default=True,
              help=f"Minimum % of FP16 labels equal to PyTorch FP32's (FP32 must reach {DEFAULT_FLOORS['fp32']:g}).")
@click.option("--parity-floor-int8", type=float, default=DEFAULT_FLOORS["int8"], show_default=True,
              help="Minimum % of INT8 labels equal to PyTorch FP32's.")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim or onnxsim when installed.")
@click.option("--max-batch", type=int, default=4, show_default=True,
              help="Largest batch of a dynamic TensorRT optimisation profile.")
@click.option("--quiet", is_flag=True, help="Print only the written files and errors.")
@click.version_option(__version__)
@user_errors
def export_main(checkpoint, out, fp16, int8, calib, calib_images, dynamic, height, width, output, fmt, exporter,
                input_dtype, parity_root, parity_images, parity_floor_fp16, parity_floor_int8, simplify, max_batch,
                quiet):
    from cirn.export import export_checkpoint
    result = export_checkpoint(
        checkpoint, out, height=height, width=width, output=output, dynamic=dynamic, fp16=fp16, int8=int8,
        fmt=fmt, exporter=exporter, input_dtype=input_dtype, simplify=simplify, parity_root=parity_root,
        parity_images=parity_images, calib=calib, calib_images=calib_images,
        floors={"fp16": parity_floor_fp16, "int8": parity_floor_int8}, max_batch=max_batch,
        log=None if quiet else (lambda message: click.echo(message, err=True)))
    for path in result["files"]:
        click.echo(path)


# ---------------------------------------------------------------- cirn-data toy-video
@data_main.command("toy-video", help="Render a toy dashcam clip: the camera drives down one street of the toy target "
                                     "domain (its camera or dusk look, constant lighting, per-frame noise). The "
                                     "ground truth of every frame goes beside it in the Cityscapes layout (OUT "
                                     "without .mp4 = the root for cirn-eval --target-root).")
@click.option("--out", type=click.Path(dir_okay=False), default="clip.mp4", show_default=True)
@click.option("--frames", type=int, default=120, show_default=True)
@click.option("--fps", type=float, default=15.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", default="256x128", show_default=True, help="WIDTHxHEIGHT (even numbers).")
@click.option("--speed", type=float, default=6.0, show_default=True, help="Metres per second.")
@click.option("--look", type=click.Choice(TOY_LOOKS), default="camera", show_default=True,
              help="Look of the target (the same street and ground truth in either).")
@user_errors
def data_toy_video(out, frames, fps, seed, size, speed, look):
    from cirn.common.sizes import parse_size_wh
    from cirn.train import toy
    width, height = parse_size_wh(size, "--size")
    result = toy.render_video(out, frames=frames, fps=fps, seed=seed, size_wh=(width, height), speed=speed,
                              look=look)
    click.echo(f"{result['frames']} frames ({width}x{height}, {result['fps']:g} fps, {result['metres']:.0f} m) -> "
               f"{result['video']}\nground truth: {result['root']}/gtFine/val (score with cirn-eval --target-root "
               f"{result['root']} --pred-dir LABELS)")


# ---------------------------------------------------------------- cirn-run
@click.command(help="Segment a dashcam video (or an image, a folder of images, a camera index) with a trained model: "
                    "an overlay MP4, per-frame label PNGs, an NPZ and a JSON summary with FPS per stage. Decoding, "
                    "inference and encoding run in parallel. Without --model: the newest model.onnx under ./runs, "
                    "else the newest best.pt. Several sources (videos, folders) go to --out-dir, and can be split over "
                    "processes or GPUs with --shard I/N or torchrun.")
@click.argument("sources", nargs=-1, required=True)
@click.option("--model", type=click.Path(dir_okay=False), default=None,
              help="A .pt checkpoint, an exported .onnx, or a TensorRT .engine.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Overlay video (.mp4) [default for a video or camera: SOURCE-NAME_seg.mp4 here].")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="[default: from the model's suffix]. tensorrt with an .onnx: ONNX Runtime's TensorRT provider.")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="[default: cuda when usable].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="torch autocast (auto: fp16 on CUDA, fp32 on CPU) or the TensorRT provider's kernels (auto: the "
                   "graph's; int8 runs model.int8.tensorrt.onnx).")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Frames per inference call (a static export runs them one by one; batches help GPUs most).")
@click.option("--stride", type=int, default=1, show_default=True, help="Process every Nth frame.")
@click.option("--imgsz", default=None, help="WIDTHxHEIGHT the frames are resized to (dynamic models only) "
                                            "[default: the model's].")
@click.option("--labels-dir", type=click.Path(file_okay=False), default=None,
              help="Per-frame trainId PNGs, named like Cityscapes frames (for cirn-eval --pred-dir).")
@click.option("--npz", type=click.Path(dir_okay=False), default=None, help="All label maps in one .npz.")
@click.option("--summary", type=click.Path(dir_okay=False), default=None,
              help="JSON summary [default: beside --out, same name, .json].")
@click.option("--side-by-side", is_flag=True, help="The input frame left of the overlay.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--threads", type=int, default=None,
              help="CPU inference threads [default: ONNX Runtime all cores, PyTorch all but one].")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (torch backend).")
@click.option("--cuda-graph", is_flag=True, help="Replay TensorRT engines through CUDA graphs.")
@click.option("--benchmark", is_flag=True, help="First time the backend alone on the same frames: the summary's "
                                                "benchmark.ratio = end-to-end FPS / pure-inference FPS.")
@click.option("--bad-frames", type=click.Choice(BAD_FRAME_POLICIES), default=BAD_FRAME_POLICIES[0], show_default=True,
              help="An undecodable frame or image: stop there keeping what came before, skip it (counted in the "
                   "summary), or fail writing nothing.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Outputs of several sources: NAME_seg.mp4/.json per video, labels/NAME/ per folder.")
@click.option("--shard", default=None, help="I/N: process only this shard of the sources (videos round-robin, "
                                            "folders image by image) [default under torchrun: RANK/WORLD_SIZE].")
@click.option("--labels", is_flag=True, help="With --out-dir: also the videos' per-frame PNGs in OUT/labels.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary lines.")
@click.version_option(__version__)
@user_errors
def run_main(sources, model, out, backend, device, precision, batch, stride, imgsz, labels_dir, npz, summary,
             side_by_side, alpha, threads, compile_, cuda_graph, benchmark, bad_frames, out_dir, shard, labels, quiet):
    from cirn.runtime import Interrupted
    from cirn.runtime.shard import parse_shard, pin_gpu
    pin_gpu()
    shard = parse_shard(shard)
    opts = {"backend": backend, "device": device, "precision": precision, "threads": threads, "compile_": compile_,
            "cuda_graph": cuda_graph, "batch": batch, "stride": stride, "imgsz": imgsz, "alpha": alpha,
            "side_by_side": side_by_side, "benchmark": benchmark, "bad_frames": bad_frames, "quiet": quiet}
    try:
        if len(sources) > 1 or out_dir or shard[1] > 1:
            given = [flag for flag, value in (("--out", out), ("--labels-dir", labels_dir), ("--npz", npz),
                                              ("--summary", summary)) if value]
            if given:
                raise click.UsageError(f"{', '.join(given)} name the outputs of one source; with several sources or "
                                       "--shard, use --out-dir (and --labels)")
            _run_many(sources, model, out_dir, shard, labels, opts)
        else:
            _run_command(sources[0], model, out, labels_dir, npz, summary, opts)
    except Interrupted as stop:
        video, saved = stop.summary["outputs"].get("video"), stop.summary.get("summary")
        click.echo(f"interrupted: stopped after {stop.summary['frames']['processed']} frames"
                   f"{f'; the partial video is {video}' if video else ''}"
                   f"{f' (summary: {saved})' if saved else ''}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted outside the video pipeline (while loading, or after the outputs were complete)",
                   err=True)
        sys.exit(130)


def _open_model(model, opts):
    from pathlib import Path

    from cirn.runtime import find_default_model, open_backend
    from cirn.runtime.shard import threads_per_process
    model = Path(model) if model else find_default_model()
    loaded = open_backend(model, opts["backend"], opts["device"], precision=opts["precision"],
                          threads=opts["threads"] or threads_per_process(), compile=opts["compile_"],
                          cuda_graph=opts["cuda_graph"], max_batch=max(opts["batch"], 1))
    if not opts["quiet"]:
        click.echo(f"cirn-run: {model} with {loaded.describe()}", err=True)
    return loaded


def _run_options(opts):
    """The keyword arguments of runtime.run among the CLI options."""
    keys = ("batch", "stride", "imgsz", "alpha", "side_by_side", "benchmark", "bad_frames", "quiet")
    return {key: opts[key] for key in keys}


def _run_command(source, model, out, labels_dir, npz, summary, opts):
    from pathlib import Path

    from cirn.runtime import format_summary, open_source, run
    probe = open_source(source, bad_frames=opts["bad_frames"])  # a bad source fails before the model loads
    kind, name = probe.kind, getattr(probe, "city", None)
    probe.close()
    if out is None and kind in ("video", "camera"):
        out = f"{name}_seg.mp4"
    if summary is None and out is not None:
        summary = str(Path(out).with_suffix(".json"))
    loaded = _open_model(model, opts)
    info = run(int(source) if kind == "camera" else source, loaded, out=out, labels_dir=labels_dir, npz=npz,
               summary=summary, **_run_options(opts))
    if not opts["quiet"]:
        click.echo(format_summary(info))


def _run_many(sources, model, out_dir, shard, labels, opts):
    """This shard's part of `sources`, one after the other, into out_dir."""
    from cirn.runtime import format_summary, run
    from cirn.runtime.shard import outputs, plan
    if not out_dir:
        raise click.UsageError("several sources, or --shard, need --out-dir")
    jobs = plan(sources, shard, opts["stride"])
    tag = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    if not jobs:
        click.echo(f"{tag}no work: fewer sources than shards", err=True)
        return
    loaded = _open_model(model, opts)
    for job in jobs:
        source = int(job.source) if job.kind == "camera" else job.source
        info = run(source, loaded, files=job.files, **outputs(job, out_dir, shard, labels), **_run_options(opts))
        if not opts["quiet"]:
            click.echo(f"{tag}{job.name}: " + format_summary(info))
