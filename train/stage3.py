"""Stage 3, self-training: class-balanced pseudo labels for the target train split, then fine-tuning on them.

Thresholds come from per-class histograms of the prediction confidence over the whole split (1,000 bins), so the
memory stays flat on the full Cityscapes train set: one pass collects the histograms, a second writes the labels.
With stage3.easy_split < 1 a first pass ranks the images by the mean entropy of their prediction (IntraDA) and only
the easiest share is pseudo-labelled and trained on (listed in images.txt). stage3.min_confidence > 0 also drops
every pixel whose probability for its label is under that floor, whatever its class's threshold.
Pseudo labels are written as trainId PNGs, {out}/labels/NAME.png (255 = ignored), NAME the target image's name
(datasets.PseudoLabelDataset pairs them with the images again, whatever the target's layout).
"""
import dataclasses
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import labels as L
from . import distributed, supervised
from .datasets import PSEUDO_LABELS, build_target_dataset
from .checkpoint import has_checkpoint, load_model
from .engine import resolve_device, write_summary
from cirn.common.errors import CirnError
from .io import atomic_write_text, write_png
from .labelmaps import class_set
from .models import upsample

BINS = 1000
IMAGE_LIST = "images.txt"  # in the pseudo-label folder when only the easy split is labelled


def class_thresholds(histograms, policy, portion=0.2, percentile=66.0, max_threshold=0.9):
    """Per-class confidence thresholds from (C, BINS) histograms of max-probabilities of pixels predicted c.

    cbst: the confidence above which the top `portion` of class c's pixels lie. fda: min(max_threshold,
    `percentile`-th percentile). A class never predicted gets threshold 1 (cbst) / max_threshold (fda).
    """
    assert histograms.ndim == 2 and histograms.shape[1] == BINS
    quantile = 1 - portion if policy == "cbst" else percentile / 100
    cumulative = np.cumsum(histograms, axis=1)  # (C, BINS)
    totals = cumulative[:, -1]
    thresholds = np.ones(len(histograms)) if policy == "cbst" else np.full(len(histograms), max_threshold)
    for c in np.flatnonzero(totals):
        bin_index = int(np.searchsorted(cumulative[c], quantile * totals[c], side="right"))
        thresholds[c] = min(bin_index, BINS - 1) / BINS  # lower edge of the bin holding the quantile
    if policy == "fda":
        thresholds = np.minimum(thresholds, max_threshold)
    return thresholds


def pseudo_labels(probs, thresholds, policy, min_confidence=0.0):
    """(C, H, W) probabilities -> (H, W) uint8 trainIds with 255 where the prediction is not confident enough: under
    its class's threshold, or its probability under `min_confidence`."""
    assert probs.ndim == 3 and probs.shape[0] == len(thresholds)
    thr = torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device).clamp_min(1e-6)[:, None, None]
    if policy == "cbst":
        scores, labels = (probs / thr).max(dim=0)  # (H, W): label = argmax(prob / threshold)
        keep = scores >= 1
    else:
        conf, labels = probs.max(dim=0)
        keep = conf >= thr[labels, 0, 0]
    if min_confidence > 0:
        keep &= probs.gather(0, labels[None])[0] >= min_confidence
    labels = labels.to(torch.uint8)
    labels[~keep] = L.IGNORE_INDEX
    return labels.cpu().numpy()


@torch.no_grad()
def _predict(model, dataset, device, names=None):
    """Yield (name, (C, H, W) probabilities at the image's original size) over the dataset (only `names` if given)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False)
    for batch in loader:
        if names is not None and batch["name"][0] not in names:
            continue
        logits = model.fused(batch["image"].to(device))  # (1, C, h, w)
        height, width = (int(v) for v in batch["size_hw"][0])
        yield batch["name"][0], F.softmax(upsample(logits.float(), (height, width)), dim=1)[0]


def easiest_images(mean_entropies, share):
    """{name: mean prediction entropy} -> the set of the ceil(share * N) names of lowest entropy (IntraDA's easy
    split); ties keep the order of the names."""
    ranked = sorted(mean_entropies, key=lambda name: (mean_entropies[name], name))
    return set(ranked[:max(1, int(np.ceil(share * len(ranked))))])


def mean_entropy(probs):
    """(C, H, W) probabilities -> the mean over pixels of -sum_c p log p."""
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=0).mean())


def image_entropies(model, dataset, device):
    """{name: mean entropy of the model's prediction} over the dataset: what easy_split ranks by."""
    return {name: mean_entropy(probs) for name, probs in _predict(model, dataset, device)}


def read_json(path):
    return json.loads(Path(path).read_text())


def generate(model_path, cfg, out_dir, portion, device=None, quiet=False):
    """Write pseudo labels of the target train split to `out_dir` (Cityscapes layout); returns the summary dict.

    Resumable: a finished folder (summary.json present) is returned as is.
    """
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    device = device or resolve_device(cfg.run.device)
    model, _ = load_model(model_path, device)
    dataset = build_target_dataset(cfg.data, model.normalization, with_labels=False, flip=False, quiet=True)
    s3 = cfg.stage3
    num_classes = cfg.model.num_classes

    kept_names, entropies = None, {}
    if s3.easy_split < 1:
        entropies = image_entropies(model, dataset, device)
        kept_names = easiest_images(entropies, s3.easy_split)
    histograms = np.zeros((num_classes, BINS), dtype=np.int64)
    for _, probs in _predict(model, dataset, device, kept_names):
        conf, pred = probs.max(dim=0)
        bins = (conf * BINS).long().clamp_(max=BINS - 1)
        histograms += torch.bincount(pred.flatten() * BINS + bins.flatten(),
                                     minlength=num_classes * BINS).view(num_classes, BINS).cpu().numpy()
    thresholds = class_thresholds(histograms, s3.policy, portion, s3.percentile, s3.max_threshold)

    kept = np.zeros(num_classes, dtype=np.int64)
    total = 0
    for name, probs in _predict(model, dataset, device, kept_names):
        trainids = pseudo_labels(probs, thresholds, s3.policy, s3.min_confidence)
        kept += np.bincount(trainids[trainids != L.IGNORE_INDEX], minlength=num_classes)[:num_classes]
        total += trainids.size
        write_png(out_dir / PSEUDO_LABELS / f"{name}.png", trainids)
    if kept_names is not None:  # the fine-tune's list of images (Cityscapes names, as a target_list)
        atomic_write_text(out_dir / IMAGE_LIST, "".join(f"{name}\n" for name in sorted(kept_names)))
    names = class_set(cfg.model)[0]
    summary = {
        "model": str(model_path), "policy": s3.policy, "portion": portion, "min_confidence": s3.min_confidence,
        "images": len(dataset), "easy_split": s3.easy_split,
        "images_labelled": len(kept_names) if kept_names is not None else len(dataset),
        "max_mean_entropy": max(entropies[n] for n in kept_names) if kept_names is not None else None,
        "labelled_share": float(kept.sum() / max(total, 1)),
        "classes": {n: {"threshold": round(float(t), 4), "predicted_pixels": int(h.sum()), "kept_pixels": int(k),
                        "coverage": float(k / max(total, 1))}
                    for n, t, h, k in zip(names, thresholds, histograms, kept)},
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))  # written last: marks the folder complete
    if not quiet:
        print(format_summary(summary))
    return summary


def format_summary(summary):
    floor = summary["min_confidence"]
    lines = [f"pseudo labels ({summary['policy']}, portion {summary['portion']:.2f}"
             + (f", probability >= {floor:.2f}" if floor else "") + "): "
             f"{summary['images_labelled']} of {summary['images']} images (the easiest {summary['easy_split']:.2f}), "
             f"{100 * summary['labelled_share']:.1f}% of their pixels labelled",
             f"{'class':<14}{'threshold':>10}{'coverage %':>12}"]
    for name, c in summary["classes"].items():
        lines.append(f"{name:<14}{c['threshold']:>10.3f}{100 * c['coverage']:>12.2f}")
    return "\n".join(lines)


def run(cfg, run_dir, init, resume=False, quiet=False):
    """Self-training rounds from the stage-2 checkpoint `init`; each round pseudo-labels, then fine-tunes.

    Rounds already finished are skipped (say so); an interrupted round continues with --resume.
    """
    if not init or not Path(init).is_file():
        raise CirnError(f"stage 3 starts from a stage-2 checkpoint: --model {init} does not exist "
                        "(train one with `cirn-train stage2`, then pass its best.pt)")
    run_dir = Path(run_dir)
    s3 = cfg.stage3
    model_path, summaries = Path(init), []
    for r in range(s3.rounds):
        round_dir = run_dir / f"round{r + 1}"
        portion = min(s3.portion + r * s3.portion_step, s3.portion_max)
        pseudo = distributed.on_main(partial(generate, model_path, cfg, round_dir / "pseudo", portion, quiet=quiet),
                                     partial(read_json, round_dir / "pseudo" / "summary.json"))
        done = round_dir / "summary.json"
        if distributed.main_decides(done.exists()):
            print(f"stage 3 round {r + 1}: already finished, skipping ({done})")
            summary = json.loads(done.read_text())
        else:
            image_list = round_dir / "pseudo" / IMAGE_LIST
            round_cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, pseudo_root=str(round_dir / "pseudo"),
                                              target_list=str(image_list) if image_list.exists() else
                                              cfg.data.target_list),
                run=dataclasses.replace(cfg.run, iterations=s3.iterations or cfg.run.iterations),
                # CBST's per-class thresholds already balance the pseudo labels' classes: plain CE on them. The
                # source beside them keeps the class balance the earlier stages trained with (optim.class_balance).
                optim=dataclasses.replace(cfg.optim, lr=s3.lr or cfg.optim.lr, class_balance=0.0))
            in_progress = distributed.main_decides(has_checkpoint(round_dir))
            summary = supervised.run(round_cfg, round_dir, domain="pseudo", resume=resume and in_progress,
                                     quiet=quiet, init=model_path, source_weight=s3.source_weight,
                                     source_class_balance=cfg.optim.class_balance,
                                     kld_weight=s3.kld_weight)
        summaries.append({"round": r + 1, "pseudo_labelled_share": pseudo["labelled_share"], **summary})
        model_path = round_dir / "best.pt"
    result = {"run_dir": str(run_dir), "rounds": summaries, "best_miou": summaries[-1]["best_miou"],
              "best_iteration": summaries[-1]["best_iteration"], "best": str(model_path)}
    return write_summary(run_dir / "summary.json", result)
