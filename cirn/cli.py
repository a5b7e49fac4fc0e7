"""Command-line entry points. Thin: parse, load config, call a library function, print errors on one line."""
import functools
import sys

import click

from cirn import __version__


def user_errors(fn):
    """Turn CirnError (a user mistake) into `error: message` and exit code 2, without a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cirn.train.errors import CirnError
        try:
            return fn(*args, **kwargs)
        except CirnError as err:
            click.echo(f"error: {err}", err=True)
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
              help="Output folder [default: $CIRN_DATA/toy, i.e. ~/.cache/cirn/toy].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["gta5", "synthia", "both"]), default="gta5", show_default=True,
              help="Layout of the source domain.")
@click.option("--num-source", type=int, default=500, show_default=True)
@click.option("--num-train", type=int, default=500, show_default=True, help="Target train images.")
@click.option("--num-val", type=int, default=100, show_default=True, help="Target val images.")
@click.option("--workers", type=int, default=0, help="Processes [default: all cores].")
@user_errors
def data_toy(out, seed, fmt, num_source, num_train, num_val, workers):
    from cirn.train import toy
    out = out or toy.default_root(seed)
    summary = toy.generate(out, seed=seed, fmt=fmt, num_source=num_source, num_train=num_train,
                           num_val=num_val, workers=workers or None)
    click.echo(summary)


# ---------------------------------------------------------------- cirn-eval
@click.command(help="Score a folder of prediction PNGs against Cityscapes-layout labels with the official protocol.")
@click.option("--pred-dir", type=click.Path(), required=True,
              help="Prediction PNGs named like the images ({name}_leftImg8bit.png or {name}.png), any sub-folders.")
@click.option("--target-root", type=click.Path(), default=None,
              help="Cityscapes root (gtFine/...); default: the built-in toy target.")
@click.option("--split", default="val", show_default=True)
@click.option("--protocol", type=click.Choice(["19", "16", "13"]), default="19", show_default=True)
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
        click.option("--source", type=click.Choice(["toy", "gta5", "synthia"]), default=None,
                     help="Labelled source domain [preset's, toy by default]."),
        click.option("--source-root", type=click.Path(), default=None, help="Source dataset root."),
        click.option("--target", type=click.Choice(["toy", "cityscapes"]), default=None,
                     help="Target domain [preset's, toy by default]."),
        click.option("--target-root", type=click.Path(), default=None, help="Cityscapes root."),
        click.option("--pretrained", default=None, help="Backbone init: a weights file or 'imagenet'."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder [default: runs/COMMAND]."),
        click.option("--preset", default="toy", show_default=True, help="toy | smoke | paper | paper-synthia."),
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
    """Config for a training command: preset <- file <- CLI data options <- overrides; a resumed run keeps its
    saved config, with only the explicit overrides applied on top."""
    from pathlib import Path

    from cirn.train.config import load_config, merge, read_yaml
    run_dir = Path(out or Path("runs") / command)
    extra = {k: v for k, v in data.items() if v is not None}
    model_keys = {"pretrained"}
    updates = {"data": {k: v for k, v in extra.items() if k not in model_keys},
               "model": {k: v for k, v in extra.items() if k in model_keys}}
    if resume and (run_dir / "config.yaml").exists():
        base = merge(load_config(None), read_yaml(run_dir / "config.yaml"))
        cfg = load_config(None, config_file, overrides, base=merge(base, updates))
    else:
        cfg = load_config(preset, config_file, base=None)
        cfg = load_config(None, None, overrides, base=merge(cfg, updates))
    return cfg, run_dir


def print_summary(summary):
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


@train_main.command("describe", help="Parameter counts and forward GFLOPs of a model.")
@click.option("--model", "name", default="deeplabv2-r101", show_default=True,
              type=click.Choice(["deeplabv2-r101", "deeplabv2-r50", "mobilenetv3", "tiny"]))
@click.option("--num-classes", type=int, default=19, show_default=True)
@click.option("--num-attention", "-K", type=int, default=2, show_default=True)
@click.option("--height", type=int, default=512, show_default=True)
@click.option("--width", type=int, default=1024, show_default=True)
@user_errors
def train_describe(name, num_classes, num_attention, height, width):
    from cirn.train.models import describe
    click.echo(describe(name, num_classes=num_classes, height=height, width=width, num_attention=num_attention))
