"""`cirn-train all-stages`: the whole method end to end, and the paper's Table 4 for the data it ran on.

[pretrain, without ImageNet weights] -> source-only (SO, also the frozen f_S of stage 1) -> stage 1 (intermediate
domain) -> CIR (SO on the intermediate domain) -> ASS (stage 2 from the source) -> CIR+ASS (stage 2 from the
intermediate domain) -> ASS+ST (stage 3 on the ASS model, from the source) -> CIR+ASS+ST (stage 3 on the CIR+ASS
model): the six rows of the paper's Table 4.
Each step runs in its own folder under the output and is skipped when already finished, so re-running resumes by
stage; an interrupted step continues from its last checkpoint.

Every step of the paper starts from ImageNet features (model.pretrained). Without pretrained weights (the toy:
model.pretrained='') a pretrain step first trains on the labelled source from random weights, and SO, CIR, ASS and
CIR+ASS all start from its backbone, with new classifiers: the stand-in for ImageNet features. Every row then trains
as long from the same start, so the table compares the methods, not their lengths. (From random weights, stage 2's
adversarial and discrepancy terms compete with a network that has yet to learn features.)
"""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from . import distributed, stage1, stage2, stage3, supervised
from .checkpoint import has_checkpoint
from .io import atomic_write_text

# The paper's Table 4, six rows per task (REFERENCE.md), for the table and the chart.
PAPER_TABLE4 = {
    "gta5": {"SO": 36.6, "CIR": 42.7, "ASS": 43.6, "CIR+ASS": 46.1, "ASS+ST": 44.2, "CIR+ASS+ST": 49.1},
    "synthia": {"SO": 33.5, "CIR": 39.7, "ASS": 39.5, "CIR+ASS": 41.5, "ASS+ST": 40.8, "CIR+ASS+ST": 43.9},
}
ROWS = tuple(PAPER_TABLE4["gta5"])
ST_ROWS = {"ASS+ST": "ASS", "CIR+ASS+ST": "CIR+ASS"}  # stage 3 row -> the stage-2 row it starts from


def paper_task(source):
    """The paper's task a run compares with: SYNTHIA -> Cityscapes for a SYNTHIA source, else GTA5 -> Cityscapes."""
    return "synthia" if source == "synthia" else "gta5"


def _with(cfg, **sections):
    """A copy of cfg with fields of its sections replaced: _with(cfg, data={"intermediate_root": p})."""
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


def _say(text):
    if distributed.is_main():
        print(text, flush=True)


def _finished(run_dir):
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _step(name, run_dir, fn):
    """Run one step unless its folder says it finished; an interrupted step resumes from its checkpoint."""
    done = distributed.main_decides(_finished(run_dir))
    if done is not None:
        _say(f"[all-stages] {name}: already finished, skipping ({run_dir})")
        return done
    _say(f"[all-stages] {name} -> {run_dir}")
    # A step with a checkpoint continues from it; one without starts (again) from scratch.
    return fn(resume=distributed.main_decides(has_checkpoint(run_dir)))


def run(cfg, out, quiet=False):
    """Run every stage into `out`, skipping finished steps and continuing interrupted ones from their checkpoints;
    returns the ablation dict (also written to out/ablation.json)."""
    out = Path(out)  # created by the first step, once its data is open: a failing start leaves nothing behind
    runs = {"pretrain": out / "pretrain", "SO": out / "source-only", "stage1": out / "stage1", "CIR": out / "cir",
            "ASS": out / "ass", "CIR+ASS": out / "cir-ass", "ASS+ST": out / "ass-st", "CIR+ASS+ST": out / "cir-ass-st"}

    if not cfg.model.pretrained:
        _step("pretrain (source only, from random weights: the stand-in for ImageNet features)", runs["pretrain"],
              lambda resume: supervised.run(cfg, runs["pretrain"], domain="source", resume=resume, quiet=quiet))
        _say("[all-stages] no pretrained weights (model.pretrained=''): SO, CIR, ASS and CIR+ASS start from the "
             "backbone of the pretrain step")
        cfg = _with(cfg, model={"pretrained": str(runs["pretrain"] / "best.pt")})
    _step("SO (source only)", runs["SO"],
          lambda resume: supervised.run(cfg, runs["SO"], domain="source", resume=resume, quiet=quiet))
    intermediate = runs["stage1"] / "intermediate"
    if distributed.main_decides((intermediate / "intermediate.json").exists()):
        _say(f"[all-stages] stage 1: already finished, skipping ({intermediate})")
    else:
        _say(f"[all-stages] stage 1 ({cfg.stage1.cir}) -> {runs['stage1']}")
        cfg_s1 = _with(cfg, stage1={"seg_checkpoint": str(runs["SO"] / "best.pt")})
        stage1.run(cfg_s1, runs["stage1"], resume=distributed.main_decides(has_checkpoint(runs["stage1"])),
                   quiet=quiet)
    cfg_int = _with(cfg, data={"intermediate_root": str(intermediate)})
    _step("CIR (source only on the intermediate domain)", runs["CIR"],
          lambda resume: supervised.run(cfg_int, runs["CIR"], domain="source", resume=resume, quiet=quiet))
    _step("ASS (stage 2 from the source)", runs["ASS"],
          lambda resume: stage2.run(cfg, runs["ASS"], resume=resume, quiet=quiet))
    _step("CIR+ASS (stage 2 from the intermediate domain)", runs["CIR+ASS"],
          lambda resume: stage2.run(cfg_int, runs["CIR+ASS"], resume=resume, quiet=quiet))
    st = {}
    for row, start in ST_ROWS.items():  # ASS+ST self-trains with the source, CIR+ASS+ST with the intermediate domain
        row_cfg = cfg if row == "ASS+ST" else cfg_int
        st[row] = _step(f"{row} (stage 3 self-training on the {start} model)", runs[row],
                        lambda resume, row=row, row_cfg=row_cfg, start=start: stage3.run(
                            row_cfg, runs[row], init=runs[start] / "best.pt", resume=resume, quiet=quiet))

    if not distributed.is_main():
        return None  # process 0 writes the table and the figures
    best = {row: Path(st[row]["best"]) if row in st else runs[row] / "best.pt" for row in ROWS}
    ablation = build_ablation(best, cfg)
    atomic_write_text(out / "ablation.json", json.dumps(ablation, indent=2))
    _say(format_ablation(ablation))
    written = [out / "ablation.json"]
    if ablation["labelled"]:
        plot_ablation(ablation, out / "ablation.png")
        written.append(out / "ablation.png")
    else:
        (out / "ablation.png").unlink(missing_ok=True)  # an earlier labelled run's chart no longer holds
    plot_examples(best, cfg, intermediate, out / "examples.png")
    _say(f"[all-stages] wrote {', '.join(map(str, written + [out / 'examples.png']))}")
    return ablation


def build_ablation(best_paths, cfg):
    """Rows of Table 4 from each step's best checkpoint: mIoU and per-class IoU (None without target labels), the
    label-free diagnostics, how the checkpoint was picked and the iteration it came from."""
    from .checkpoint import load_checkpoint
    from .datasets import has_target_labels
    rows = {}
    for row, path in best_paths.items():
        state = load_checkpoint(path)
        rows[row] = {"miou": state["miou"], "iteration": state["iteration"], "per_class": state["per_class"],
                     "select": state.get("select", "miou"), "label_free": state.get("label_free"),
                     "checkpoint": str(path)}
    return {"protocol": cfg.data.protocol, "source": cfg.data.source, "target": cfg.data.target,
            "labelled": has_target_labels(cfg.data), "model": cfg.model.name,
            "num_attention": cfg.model.num_attention, "seed": cfg.run.seed, "cir": cfg.stage1.cir, "rows": rows}


def format_ablation(ablation):
    rows = ablation["rows"]
    title = (f"Table 4 ({ablation['source']} -> {ablation['target']}, {ablation['protocol']} classes, "
             f"{ablation['model']}, K={ablation['num_attention']}, seed {ablation['seed']})")
    if not ablation.get("labelled", True):
        lines = [title, "no target labels (give a few labelled frames with --target-val to score the rows): "
                        "label-free diagnostics of each row's checkpoint, picked by "
                        f"{next(iter(rows.values()))['select']}",
                 f"{'row':<11}{'iteration':>10}{'entropy':>9}{'C/ACM disagreement':>20}{'flip agreement':>16}"]
        for row, r in rows.items():
            d = r["label_free"] or {}
            lines.append(f"{row:<11}{r['iteration']:>10}{d.get('entropy', math.nan):>9.4f}"
                         f"{d.get('disagreement', math.nan):>20.5f}{d.get('flip', math.nan):>16.4f}")
        return "\n".join(lines)
    classes = list(next(iter(rows.values()))["per_class"])
    short = [c[:5] for c in classes]
    lines = [title, f"{'row':<11}{'mIoU':>6} " + " ".join(f"{s:>5}" for s in short)]
    for row, r in rows.items():
        ious = " ".join(f"{v:5.1f}" if v is not None else "    -" for v in r["per_class"].values())
        lines.append(f"{row:<11}{r['miou']:6.1f} {ious}")
    return "\n".join(lines)


def plot_ablation(ablation, path):
    """Bar chart of the rows' mIoU, beside the paper's Table 4 figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(ablation["rows"])
    ours = [ablation["rows"][r]["miou"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.bar(x - 0.2, ours, 0.4, label=f"this run ({ablation['source']} -> {ablation['target']})")
    task = paper_task(ablation["source"])
    ax.bar(x + 0.2, [PAPER_TABLE4[task][r] for r in rows], 0.4, alpha=0.6,
           label=f"paper ({'SYNTHIA' if task == 'synthia' else 'GTA5'} -> Cityscapes)")
    for xi, v in zip(x, ours):
        ax.text(xi - 0.2, v + 0.5, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(x, rows)
    ax.set_ylabel("target mIoU (%)")
    ax.set_title("CIRN ablation (Table 4)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_examples(best_paths, cfg, intermediate, path, count=3):
    """Grid: source, translated source, target image, the prediction of each row, ground truth (where the target
    has labels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .checkpoint import load_model
    from .datasets import build_source_dataset, build_target_dataset, build_val_dataset, denormalize
    from .labelmaps import class_set
    from .models import upsample

    source = build_source_dataset(cfg.data, "imagenet", intermediate=False, flip=False)
    translated = build_source_dataset(dataclasses.replace(cfg.data, intermediate_root=str(intermediate)), "imagenet",
                                      flip=False)
    models = {row: load_model(p)[0] for row, p in best_paths.items()}
    labelled = build_val_dataset(cfg.data, "imagenet", class_names=cfg.model.class_names) is not None

    def target_set(normalization):
        if labelled:
            return build_val_dataset(cfg.data, normalization, class_names=cfg.model.class_names)
        return build_target_dataset(cfg.data, normalization, flip=False, quiet=True)

    target = {n: target_set(n) for n in {m.normalization for m in models.values()} | {"imagenet"}}
    _, palette = class_set(cfg.model)
    colours = np.zeros((256, 3), np.uint8)
    colours[:len(palette)] = palette
    columns = ["source", "translated", "target", *best_paths] + (["ground truth"] if labelled else [])
    fig, axes = plt.subplots(count, len(columns), figsize=(1.9 * len(columns), 1.2 * count + 0.4), dpi=110,
                             squeeze=False)
    for i in range(count):
        s, t = i % len(source), (i * 7) % len(target["imagenet"])
        item = target["imagenet"][t]
        panels = [denormalize(source[s]["image"], "imagenet"), denormalize(translated[s]["image"], "imagenet"),
                  denormalize(item["image"], "imagenet")]
        size = item["label"].shape if labelled else item["image"].shape[-2:]
        for model in models.values():
            with torch.no_grad():
                logits = upsample(model.fused(target[model.normalization][t]["image"][None]), size)
            panels.append(colours[logits.argmax(1)[0].numpy().astype(np.uint8)])
        if labelled:
            panels.append(colours[item["label"].numpy().astype(np.uint8)])
        for ax, panel, title in zip(axes[i], panels, columns):
            ax.imshow(panel)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path):
    from .io import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
