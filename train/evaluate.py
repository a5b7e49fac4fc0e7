"""The official Cityscapes metric (cityscapesScripts' evalPixelLevelSemanticLabeling), in trainId space.

One confusion matrix over the whole split; IoU_c = TP / (TP + FP + FN) where, exactly as the official script:
- ground-truth pixels of ignored labels (trainId 255) count nowhere in the IoUs;
- a "void" prediction (trainId 255, or a non-evaluated labelId such as 0 'unlabeled') on a valid pixel is a false
  negative of the true class and a false positive of no class;
- an unknown id (a trainId outside 0..C-1 and 255, a labelId outside 0..33) is an error.
Protocols 16 and 13 (SYNTHIA) follow the DA literature (AdaptSegNet, CLAN): the 19-class confusion matrix is
accumulated as usual and the mIoU averages the IoUs of the protocol's classes only. Each class IoU is therefore the
official 19-class IoU; predictions of the dropped classes stay legal and count as false positives of nothing
(but as false negatives of the true class), and GT pixels of dropped classes are not ignored.
Labels are always read at full resolution; predictions are upsampled to them, never labels downsampled.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import labels
from .datasets import CITYSCAPES_IMAGE_SUFFIX, CITYSCAPES_LABEL_SUFFIX, cityscapes_label_files
from cirn.common.errors import CirnError
from .io import atomic_write_text, json_ready, read_label
from .labelmaps import default_class_names
from .models import upsample

IGNORE = labels.IGNORE_INDEX
CITYSCAPES_MAX_LABEL_ID = 33  # labelIds 0..33 exist (license plate, -1, cannot be stored in a PNG)
# Prediction file names accepted for the label {name}_gtFine_labelIds.png (the official script matches {name}*.png).
PREDICTION_SUFFIXES = (CITYSCAPES_IMAGE_SUFFIX, CITYSCAPES_LABEL_SUFFIX, "_gtFine_labelTrainIds.png", ".png")


class ConfusionMatrix:
    """Exact pixel counts of (ground truth, prediction) over a whole split, as int64.

    matrix[i, j] for i, j in 0..C-1 counts pixels of true class i predicted j. The extra index C collects what the
    IoUs leave aside: row C = ground-truth pixels marked ignore (255), column C = void predictions (255).
    IoUs are fractions (0-1); the result dicts of evaluate_folder/evaluate_model are in percent.
    """

    def __init__(self, num_classes=labels.NUM_CLASSES):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(self, pred, label):
        """Add one image or batch: `pred` and `label` are same-shape integer arrays (numpy or torch, any device)."""
        pred, label = torch.as_tensor(pred), torch.as_tensor(label)
        if pred.shape != label.shape:
            raise CirnError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
        n = self.num_classes
        pred = _to_index(pred.long(), n, "prediction")
        label = _to_index(label.long().to(pred.device), n, "label")
        counts = torch.bincount((label * (n + 1) + pred).flatten(), minlength=(n + 1) ** 2)
        self.matrix += counts.cpu().numpy().reshape(n + 1, n + 1)

    def iou(self):
        """(C,) float64 IoU per class; NaN where the class is neither in the ground truth nor predicted."""
        n = self.num_classes
        tp = np.diag(self.matrix)[:n]
        gt = self.matrix[:n, :].sum(axis=1)  # every valid pixel of the class, void predictions included (FN)
        predicted = self.matrix[:n, :n].sum(axis=0)  # predictions on valid pixels only (ignored GT is no FP)
        denom = gt + predicted - tp
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self, protocol=None):
        """Mean IoU (fraction) over the protocol's classes (19, 16, 13; None = all), NaN classes left out."""
        ious = self.iou()[protocol_classes(protocol, self.num_classes)]
        return float(np.nanmean(ious)) if not np.isnan(ious).all() else math.nan


def protocol_classes(protocol, num_classes=labels.NUM_CLASSES):
    """trainIds averaged by `protocol` (19, 16, 13; None = all), limited to a smaller model's classes; 19 is every
    class of the model, whatever their number (an own class set of more than 19 is scored whole)."""
    if protocol is not None and protocol not in labels.PROTOCOLS:
        raise CirnError(f"unknown protocol {protocol!r}: expected one of {', '.join(map(str, labels.PROTOCOLS))}")
    if protocol is None or protocol == labels.NUM_CLASSES:
        return list(range(num_classes))
    return [c for c in labels.PROTOCOLS[protocol] if c < num_classes]


def _to_index(ids, num_classes, what):
    """ids 0..C-1 stay, 255 -> C (ignore / void); anything else is an error listing the offending ids."""
    bad = ((ids < 0) | (ids >= num_classes)) & (ids != IGNORE)
    if bad.any():
        found = torch.unique(ids[bad])[:8].tolist()
        raise CirnError(f"{what} holds unknown ids {found}: expected trainIds 0..{num_classes - 1} or 255 (ignore)")
    return torch.where(ids == IGNORE, num_classes, ids)


def make_result(confusion, protocol, num_images, class_names=None):
    """Scores in percent: mIoU over the protocol, per-class IoU of the protocol's classes (NaN where absent);
    class_names default: Cityscapes' 19, or 'class i'."""
    names = class_names or default_class_names(confusion.num_classes)
    classes = protocol_classes(protocol, confusion.num_classes)
    ious = confusion.iou()
    return {"protocol": protocol, "miou": 100.0 * confusion.miou(protocol),
            "per_class": {names[c]: 100.0 * float(ious[c]) for c in classes},
            "num_images": num_images, "confusion_matrix": confusion.matrix.tolist()}


# ---------------------------------------------------------------- a folder of prediction PNGs
def _prediction_key(filename):
    suffix = next(s for s in PREDICTION_SUFFIXES if filename.endswith(s))
    return filename[:-len(suffix)]


def _index_predictions(pred_dir):
    """{basename without suffix: [paths]} of every PNG under pred_dir (city sub-folders optional)."""
    pred_dir = Path(pred_dir).expanduser()
    if not pred_dir.is_dir():
        raise CirnError(f"prediction folder {pred_dir} does not exist")
    found = {}
    for path in sorted(pred_dir.rglob("*.png")):
        found.setdefault(_prediction_key(path.name), []).append(path)
    if not found:
        raise CirnError(f"no prediction PNGs under {pred_dir}: expected one {{name}}.png or {{name}}_leftImg8bit.png "
                        "per label, e.g. frankfurt_000000_000294.png")
    return found


def _read_prediction(path):
    """(H, W) integer ids of a single-channel prediction PNG (L, P = palette indices, or 16-bit)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            ids = np.asarray(img) if mode in ("L", "P", "I", "I;16") else None
    except Exception as err:
        raise CirnError(f"cannot read prediction {path}: {err}") from None
    if ids is None:
        raise CirnError(f"prediction {path} is a {mode} image: expected a single-channel PNG of ids, not colours")
    return ids


def _labelids_to_trainids(ids, path):
    bad = (ids < 0) | (ids > CITYSCAPES_MAX_LABEL_ID)
    if bad.any():
        raise CirnError(f"prediction {path} holds unknown labelIds {np.unique(ids[bad])[:8].tolist()}: "
                        f"Cityscapes labelIds are 0..{CITYSCAPES_MAX_LABEL_ID}")
    return labels.LABELID_TO_TRAINID[ids]  # non-evaluated labelIds -> 255 = void prediction, as the official


def evaluate_folder(pred_dir, target_root=None, split="val", protocol=19, pred_format="trainid"):
    """Score prediction PNGs against gtFine/{split} labelIds at full resolution; returns the result dict.

    pred_format: 'trainid' (0..18, 255 = void) or 'labelid' (Cityscapes labelIds, as the official server wants).
    target_root None = the built-in toy target.
    """
    if pred_format not in ("trainid", "labelid"):
        raise CirnError(f"unknown prediction format {pred_format!r}: expected trainid or labelid")
    protocol_classes(protocol)  # validates
    if target_root is None:
        from .toy import ensure_toy
        target_root = ensure_toy().cityscapes
    gt_files = cityscapes_label_files(target_root, split)
    predictions = _index_predictions(pred_dir)
    missing = [name for name, _ in gt_files if Path(name).name not in predictions]
    if missing:
        raise CirnError(f"no prediction for {missing[0]} ({len(missing)} of {len(gt_files)} labels have none): "
                        f"expected {Path(pred_dir) / Path(missing[0]).name}.png or "
                        f"{Path(missing[0]).name}{CITYSCAPES_IMAGE_SUFFIX} under {pred_dir}")
    confusion = ConfusionMatrix(labels.NUM_CLASSES)
    for name, gt_path in gt_files:
        candidates = predictions[Path(name).name]
        if len(candidates) > 1:
            raise CirnError(f"several predictions for {gt_path.name}: {', '.join(map(str, candidates))}; keep one")
        pred_path = candidates[0]
        label_ids = read_label(gt_path)  # (H, W) Cityscapes labelIds at full resolution
        if label_ids.max() > CITYSCAPES_MAX_LABEL_ID:
            raise CirnError(f"label {gt_path} holds id {label_ids.max()}: not a Cityscapes *_labelIds.png file")
        label = labels.LABELID_TO_TRAINID[label_ids]  # (H, W) uint8 trainIds
        pred = _read_prediction(pred_path)
        if pred.shape != label.shape:
            raise CirnError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its label {gt_path} is "
                            f"{label.shape[1]}x{label.shape[0]}: predictions must be at the label's full resolution")
        if pred_format == "labelid":
            pred = _labelids_to_trainids(pred, pred_path)
        try:
            confusion.update(pred.astype(np.int64), label)
        except CirnError as err:
            raise CirnError(f"prediction {pred_path}: {err}") from None
    return make_result(confusion, protocol, len(gt_files))


# ---------------------------------------------------------------- a model on a dataset
@torch.inference_mode()
def evaluate_model(model_fn, dataset, num_classes=labels.NUM_CLASSES, protocol=19, device="cpu", num_workers=0,
                   class_names=None):
    """Score `model_fn(images (B, 3, h, w)) -> logits (B, C, h', w')` on a labelled dataset; returns the result dict.

    Logits are upsampled bilinearly to each label's size before the argmax: build the dataset with
    label_size='original' (build_val_dataset does) so the comparison happens at full label resolution.
    """
    if not getattr(dataset, "with_labels", True):
        raise CirnError("evaluate_model needs a labelled dataset (with_labels=True)")
    confusion = ConfusionMatrix(num_classes)
    # An own generator keeps DataLoader from drawing on the global RNG, so evaluating never shifts training.
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers,
                                         generator=torch.Generator())
    for batch in loader:
        images = batch["image"].to(device)  # (1, 3, h, w)
        label = batch["label"].to(device)  # (1, H, W) at the label's own resolution
        logits = model_fn(images).float()  # (1, C, h', w')
        if logits.shape[1] != num_classes:
            raise CirnError(f"the model outputs {logits.shape[1]} classes but num_classes is {num_classes}")
        logits = upsample(logits, label.shape[-2:])
        confusion.update(logits.argmax(dim=1), label)
    return make_result(confusion, protocol, len(dataset), class_names)


# ---------------------------------------------------------------- reporting
def format_table(result):
    """Per-class IoU table and the mIoU line, in percent."""
    lines = [f"{'class':<16}{'IoU':>7}", "-" * 23]
    for name, iou in result["per_class"].items():
        lines.append(f"{name:<16}{'n/a' if _is_nan(iou) else f'{iou:.2f}':>7}")
    lines.append("-" * 23)
    miou = "n/a" if _is_nan(result["miou"]) else f"{result['miou']:.2f}"
    lines.append(f"mIoU ({result['protocol']} classes, {result['num_images']} images): {miou}")
    return "\n".join(lines)


def _is_nan(value):
    return value is None or (isinstance(value, float) and math.isnan(value))



def save_json(result, path):
    """Write the result atomically; NaN IoUs become null."""
    atomic_write_text(path, json.dumps(json_ready(result), indent=2) + "\n")
