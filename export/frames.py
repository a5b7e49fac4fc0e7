"""Target images as the deployed graph sees them: (3, H, W) uint8 RGB frames, with labels for the parity check.

Images are resized as the training and evaluation datasets resize them (PIL bicubic to (W, H)); labels stay at
their stored resolution, as the official protocol scores them.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cirn.common.errors import CirnError
from cirn.common.files import IMAGE_SUFFIXES, read_image
from cirn.train.datasets import CityscapesDataset, build_target_dataset, build_val_dataset


@dataclass
class Frame:
    """One target image in the graph's input format, with its label when scoring."""
    name: str
    image: np.ndarray         # (3, H, W) uint8 RGB at the graph's input size
    label: np.ndarray = None  # (h, w) uint8 trainIds at the label's own size (255 ignore), or None


def to_frame(image, size_wh):
    """(H0, W0, 3) uint8 RGB -> (3, H, W) uint8 at size_wh=(W, H), bicubic as the datasets resize (PIL's order)."""
    if (image.shape[1], image.shape[0]) != tuple(size_wh):
        image = np.asarray(Image.fromarray(image).resize(tuple(size_wh), Image.BICUBIC))
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def _spread(items, limit):
    """At most `limit` items spread evenly over the list (a sample of the whole split, not its first city)."""
    if limit <= 0 or len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def cityscapes_frames(root, split, size_wh, limit, with_labels=True):
    """Up to `limit` frames of a Cityscapes-layout split at size_wh=(W, H), labels when with_labels."""
    dataset = CityscapesDataset(root, split=split, with_labels=with_labels, label_size="original")
    frames = []
    for name, image_path, label_path in _spread(dataset.samples, limit):
        label = dataset.read_trainids(label_path) if with_labels else None
        frames.append(Frame(name, to_frame(read_image(image_path), size_wh), label))
    return frames


def run_frames(data_cfg, size_wh, limit, with_labels=True, class_names=()):
    """Up to `limit` frames of a run's own target (a DataConfig) at size_wh=(W, H): its labelled images where it
    has any (--target-val, the toy's or Cityscapes' val split), else its unlabelled train images (a folder, a video's
    decoded frames), without labels. class_names: the model's own class set (empty: Cityscapes'), whose labels only
    --target-val can hold (a toy or Cityscapes val split holds Cityscapes' classes)."""
    labelled = with_labels and (data_cfg.target_val or not class_names)
    dataset = build_val_dataset(data_cfg, class_names=class_names) if labelled else None
    dataset = dataset or build_target_dataset(data_cfg, flip=False, quiet=True)
    frames = []
    for name, image_path, label_path in _spread(dataset.samples, limit):
        label = dataset.read_trainids(label_path) if label_path is not None and dataset.with_labels else None
        frames.append(Frame(name, to_frame(read_image(image_path), size_wh), label))
    return frames


def calibration_frames(source, size_wh, limit, default_root=None):
    """Unlabelled frames for INT8 calibration at size_wh=(W, H).

    source: a Cityscapes root (its train split, else val), or any folder of images (searched recursively);
    None: the train split of `default_root` (the target root).
    """
    root = Path(source).expanduser() if source else Path(default_root)
    if not root.is_dir():
        raise CirnError(f"calibration folder {root} does not exist")
    if (root / "leftImg8bit").is_dir():
        split = "train" if (root / "leftImg8bit" / "train").is_dir() else "val"
        return cityscapes_frames(root, split, size_wh, limit, with_labels=False)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CirnError(f"no images (png, jpg) under {root} to calibrate INT8 on")
    return [Frame(p.stem, to_frame(read_image(p), size_wh)) for p in _spread(paths, limit)]
