"""Quality of a stage-3 round's pseudo labels, scored against the labels the target train split itself carries
(the toy's; Cityscapes ships gtFine/train too). A diagnostic: stage 3 never reads these labels.

    python benchmarks/pseudo_labels.py runs/all-stages/cir-ass-st/round1/pseudo
    python benchmarks/pseudo_labels.py runs/all-stages/cir-ass-st/round1/pseudo --model runs/all-stages/cir-ass/best.pt

Prints the precision of the labelled pixels, overall and per class, with the true classes of each class's wrong
pixels. With --model (the checkpoint that made them) it also ranks every train image by the mean entropy of that
model's prediction, as stage3.easy_split does, and says how the wrong pixels split between the easiest share of the
images and the rest.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from cirn.train import labels as L
from cirn.train.config import from_dict, load_config, merge
from cirn.train.datasets import PSEUDO_LABELS, _target_root, build_target_dataset, cityscapes_label_files
from cirn.train.io import read_label
from cirn.train.checkpoint import load_model
from cirn.train.evaluate import ConfusionMatrix
from cirn.train.stage3 import easiest_images, image_entropies


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pseudo", help="a pseudo-label folder written by cirn-train stage3 (ROUND/pseudo)")
    parser.add_argument("--target-root", default=None, help="Cityscapes-layout root holding gtFine/train "
                        "(default: --model's target root, else the built-in toy)")
    parser.add_argument("--model", default=None, help="checkpoint whose prediction entropy ranks the images")
    parser.add_argument("--easy-split", type=float, default=0.67, help="share of the images called easy")
    parser.add_argument("--json", default=None, help="write the figures here")
    return parser.parse_args(argv)


def trainids(path):
    return L.LABELID_TO_TRAINID[read_label(path)]


def image_confusions(pseudo_dir, target_root):
    """{name: (19, 19) confusion [true, pseudo] over the labelled pixels whose true class is not ignored}."""
    truth = dict(cityscapes_label_files(target_root, "train"))
    result = {}
    folder = Path(pseudo_dir) / PSEUDO_LABELS  # trainId PNGs, NAME.png
    for path in sorted(folder.rglob("*.png")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name not in truth:
            raise SystemExit(f"{path}: no label for {name} under {target_root}/gtFine/train")
        pseudo, true = read_label(path), trainids(truth[name])
        if pseudo.shape != true.shape:
            raise SystemExit(f"{path}: {pseudo.shape} pseudo label against a {true.shape} label")
        confusion = ConfusionMatrix(L.NUM_CLASSES)
        confusion.update(pseudo, true)
        result[name] = confusion.matrix[:L.NUM_CLASSES, :L.NUM_CLASSES]  # unlabelled pixels and ignored truth left out
    return result


def main(argv=None):
    args = parse_args(argv)
    pseudo = Path(args.pseudo)
    model, cfg = None, load_config("toy")
    if args.model:
        model, state = load_model(args.model)
        cfg = from_dict(state["config"])
    if args.target_root:
        cfg = merge(cfg, {"data": {"target_root": args.target_root}})
    target_root = _target_root(cfg.data)
    per_image = image_confusions(pseudo, target_root)
    total = sum(per_image.values())
    kept = total.sum(axis=0)
    figures = {"images": len(per_image), "precision": float(np.trace(total) / max(total.sum(), 1)), "classes": {}}
    print(f"{pseudo}: {len(per_image)} images, precision {100 * figures['precision']:.1f}% of the labelled pixels")
    print(f"{'class':<14}{'share %':>9}{'precision %':>13}  wrong pixels are truly")
    for c in np.flatnonzero(kept):
        wrong = sorted(((total[t, c], L.CLASS_NAMES[t]) for t in range(L.NUM_CLASSES) if t != c and total[t, c]),
                       reverse=True)[:3]
        figures["classes"][L.CLASS_NAMES[c]] = {"share": float(kept[c] / kept.sum()),
                                                "precision": float(total[c, c] / kept[c])}
        print(f"{L.CLASS_NAMES[c]:<14}{100 * kept[c] / kept.sum():>9.2f}{100 * total[c, c] / kept[c]:>13.1f}  "
              + ", ".join(f"{n} {100 * v / kept[c]:.0f}%" for v, n in wrong))
    if args.model:
        dataset = build_target_dataset(cfg.data, model.normalization, with_labels=False, flip=False)
        entropies = image_entropies(model, dataset, "cpu")
        easy = easiest_images(entropies, args.easy_split) & set(per_image)
        hard = set(per_image) - easy

        def error_rate(names):
            matrix = sum((per_image[n] for n in names), np.zeros((L.NUM_CLASSES, L.NUM_CLASSES), np.int64))
            return float(1 - np.trace(matrix) / max(matrix.sum(), 1)), int(matrix.sum() - np.trace(matrix))

        (easy_rate, easy_wrong), (hard_rate, hard_wrong) = error_rate(easy), error_rate(hard)
        figures.update(easy_images=len(easy), hard_images=len(hard), easy_error=easy_rate, hard_error=hard_rate,
                       wrong_in_hard=hard_wrong / max(easy_wrong + hard_wrong, 1))
        print(f"ranked by {args.model}'s mean prediction entropy: wrong pixels are {100 * easy_rate:.1f}% of the "
              f"labelled pixels in the easiest {len(easy)} images, {100 * hard_rate:.1f}% in the other {len(hard)}, "
              f"which hold {100 * figures['wrong_in_hard']:.1f}% of all wrong pixels")
        hard_total = sum((per_image[n] for n in hard), np.zeros_like(total))
        errors = total - np.diag(np.diag(total))
        figures["top_errors"] = []
        for flat in np.argsort(errors, axis=None)[::-1][:3]:
            true, label = divmod(int(flat), L.NUM_CLASSES)
            if errors[true, label] == 0:
                break
            share = hard_total[true, label] / errors[true, label]
            figures["top_errors"].append({"true": L.CLASS_NAMES[true], "pseudo": L.CLASS_NAMES[label],
                                          "pixels": int(errors[true, label]), "in_hard": float(share)})
            print(f"  {L.CLASS_NAMES[true]} labelled {L.CLASS_NAMES[label]}: {errors[true, label]} pixels, "
                  f"{100 * share:.1f}% of them in the hard images")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
