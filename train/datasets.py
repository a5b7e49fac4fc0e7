"""Dataset loaders in the on-disk layouts of ../shared/REFERENCE.md, normalisation, and the resumable batch stream.

- CityscapesDataset: leftImg8bit/{split}/{city}/{name}_leftImg8bit.png, gtFine/{split}/{city}/{name}_gtFine_labelIds.png
- GTA5Dataset: images/NNNNN.png, labels/NNNNN.png (palette PNG of Cityscapes labelIds)
- SynthiaDataset: RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png (16-bit, class id in the R channel)
The intermediate domain (translated source images) uses the source class with `label_root` = the source root.
Every item is a dict: image (3, H, W) float, label (H, W) long trainIds with 255 ignore (unless with_labels=False),
name (relative, for prediction files) and size_hw (original (H, W)). Models never read configs: the `build_*`
functions translate a DataConfig into these constructors.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .augment import color_jitter
from .labelmaps import BUILTIN as LABEL_MAPS, UncoveredTally, source_label_map, trainid_map
from cirn.common.errors import CirnError
from cirn.common.files import CITYSCAPES_IMAGE_SUFFIX, IMAGE_SUFFIXES
from cirn.common.normalization import affine, check as check_normalization

from .io import read_image

# ---------------------------------------------------------------- normalisation
def _affine_tensors(mode, like):
    """common.normalization.affine(mode) as (bgr, scale, shift) with (3, 1, 1) tensors of `like`'s dtype/device."""
    bgr, scale, shift = affine(mode)
    return bgr, like.new_tensor(scale).view(3, 1, 1), like.new_tensor(shift).view(3, 1, 1)


def normalize_tensor(x, mode):
    """(..., 3, H, W) float RGB 0-255 tensor -> the same shape in `mode`'s convention; differentiable, the tensor
    form of common.normalization.normalize_array."""
    bgr, scale, shift = _affine_tensors(mode, x)  # (3, 1, 1) each: a wrong channel count fails to broadcast
    return (x.flip(-3) if bgr else x) * scale + shift


def normalize(image, mode="imagenet"):
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 tensor in the convention of the backbone's weights."""
    image = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W) RGB 0-255
    return normalize_tensor(image, mode)


def unnormalize_tensor(x, mode):
    """Inverse of normalize_tensor: (..., 3, H, W) in `mode`'s convention -> float RGB 0-255, not rounded."""
    bgr, scale, shift = _affine_tensors(mode, x)
    x = (x - shift) / scale
    return x.flip(-3) if bgr else x  # BGR -> RGB


def denormalize(tensor, mode="imagenet"):
    """Inverse of normalize: (3, H, W) or (B, 3, H, W) tensor -> (H, W, 3) or (B, H, W, 3) uint8 RGB numpy."""
    x = unnormalize_tensor(tensor.detach().float().cpu(), mode)
    x = x.clamp(0, 255).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


# ---------------------------------------------------------------- shared dataset machinery
def _resize(array, size_wh, resample):
    """Resize an (H, W[, 3]) uint8 array to size_wh=(width, height) with PIL (bicubic images, nearest labels)."""
    if (array.shape[1], array.shape[0]) == tuple(size_wh):
        return array
    return np.asarray(Image.fromarray(array).resize(tuple(size_wh), resample))


def _read_list(list_file):
    """Non-empty, non-comment lines of a split list."""
    path = Path(list_file)
    if not path.is_file():
        raise CirnError(f"list file {path} does not exist")
    lines = [line.strip() for line in path.read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise CirnError(f"list file {path} names no images")
    return entries


def _check_root(root, layout):
    if not str(root):
        raise CirnError(f"no dataset root given: expected a folder with {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CirnError(f"dataset root {root} does not exist: expected a folder with {layout}")
    return root


UNCOVERED_KEY = "uncovered_labels"  # an item's key for a worker's uncovered label values (popped by InfiniteLoader)


class SegmentationDataset(Dataset):
    """Loading, resizing, flipping and normalisation shared by the layouts; subclasses find samples and say what
    their label files hold (`label_map`, labelmaps.py).

    `samples`: list of (name, image_path, label_path or None). `size_wh`: (width, height) output size or None.
    `label_size`: 'image' resizes labels (nearest) to the output image size (training); 'original' keeps them as
    stored, so evaluation compares at full resolution. Indexing with an (index, seed) pair, as infinite_loader
    does, draws the random flip from `seed` instead of torch's global RNG (exact resume, any number of workers).
    `bad_images`: 'fail' (an unreadable image or label is an error naming it) or 'skip' (warn once, name it in
    `skipped` and use the next sample instead; data.bad_images for the training sets).
    `cache`: keep each sample's decoded, resized image and label in memory after its first read (data.cache_images;
    every DataLoader worker holds its own copy). `uncovered`: the label values the label map does not cover, met so
    far (each reported once, then ignored).
    """

    bad_images = "fail"
    cache = False
    label_map = None

    def __init__(self, samples, size_wh=None, flip=False, normalization="imagenet", label_size="image",
                 with_labels=True, max_images=0):
        check_normalization(normalization)
        if label_size not in ("image", "original"):
            raise CirnError(f"label_size must be 'image' or 'original', got {label_size!r}")
        if size_wh is not None and (len(size_wh) != 2 or min(size_wh) < 1):
            raise CirnError(f"size_wh must be (width, height), got {size_wh!r}")
        self.samples = samples[:max_images] if max_images else samples
        self.size_wh = tuple(size_wh) if size_wh is not None else None
        self.flip = flip
        self.normalization = normalization
        self.label_size = label_size
        self.with_labels = with_labels
        self.skipped = set()  # names of unreadable samples left out (this process's; workers keep their own)
        self._cached = {}  # index -> (image, label or None, (height, width)) when self.cache
        self.uncovered = UncoveredTally(self.label_map.name if self.label_map else "")

    def __len__(self):
        return len(self.samples)

    def read_trainids(self, path):
        """(H, W) uint8 trainIds (255 ignore) of one label file, through the dataset's label map."""
        return self.label_map.read_trainids(path, self.uncovered)

    def _flip_now(self, seed):
        if not self.flip:
            return False
        if seed is None:
            return bool(torch.rand(()) < 0.5)
        return bool(np.random.default_rng(seed).random() < 0.5)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        for _ in range(len(self)):
            name = self.samples[index][0]
            if name not in self.skipped:
                try:
                    return self._load(index, seed)
                except CirnError as err:
                    if self.bad_images != "skip":
                        raise
                    self.skipped.add(name)
                    print(f"warning: skipped sample {name}: {err} (data.bad_images=skip)", file=sys.stderr,
                          flush=True)
            index = (index + 1) % len(self)  # the next sample stands in for an unreadable one
        raise CirnError(f"none of the {len(self)} samples can be read (data.bad_images=skip)")

    def _read(self, index):
        """(image (H, W, 3) uint8 resized, label (H, W) uint8 trainIds or None, original (height, width))."""
        if index in self._cached:
            return self._cached[index]
        name, image_path, label_path = self.samples[index]
        image = read_image(image_path)  # (H, W, 3) uint8 RGB
        size_hw = image.shape[:2]
        if self.size_wh is not None:
            image = _resize(image, self.size_wh, Image.BICUBIC)
        label = None
        if self.with_labels:
            label = self.read_trainids(label_path)  # (h, w) uint8; GTA5 labels may differ in size from the image
            if self.label_size == "image":
                label = _resize(label, (image.shape[1], image.shape[0]), Image.NEAREST)
        if self.cache:
            self._cached[index] = (image, label, size_hw)
        return image, label, size_hw

    def _load(self, index, seed):
        worker = torch.utils.data.get_worker_info() is not None
        self.uncovered.report = not worker  # a worker's uncovered label values go to the main process with the item
        image, label, (height, width) = self._read(index)
        flip = self._flip_now(seed)
        if flip:
            image = image[:, ::-1]
        item = {"image": normalize(image, self.normalization), "name": self.samples[index][0],
                "size_hw": torch.tensor([height, width])}
        if worker:
            item[UNCOVERED_KEY] = json.dumps(self.uncovered.take())
        if label is not None:
            if flip:
                label = label[:, ::-1]
            item["label"] = torch.from_numpy(label.astype(np.int64))  # (H, W)
        return item


# ---------------------------------------------------------------- Cityscapes (target)
CITYSCAPES_SPLITS = ("train", "val", "test")
CITYSCAPES_LAYOUT = ("the Cityscapes layout leftImg8bit/{split}/{city}/{name}_leftImg8bit.png and "
                     "gtFine/{split}/{city}/{name}_gtFine_labelIds.png")
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"


def cityscapes_split_dir(root, kind, split):
    """root/{kind}/{split} (kind: leftImg8bit or gtFine), checked, with the valid and present splits on error."""
    root = _check_root(root, CITYSCAPES_LAYOUT)
    if split not in CITYSCAPES_SPLITS:
        raise CirnError(f"unknown Cityscapes split {split!r} for {root / kind}: valid splits are "
                        f"{', '.join(CITYSCAPES_SPLITS)}")
    folder = root / kind / split
    if not folder.is_dir():
        present = [s for s in CITYSCAPES_SPLITS if (root / kind / s).is_dir()]
        raise CirnError(f"{folder} does not exist (splits present: {', '.join(present) or 'none'}): expected "
                        f"{CITYSCAPES_LAYOUT}")
    return folder


def cityscapes_label_files(root, split):
    """Sorted [(name, label path)] of gtFine/{split}; name is 'city/city_000000_000019'."""
    folder = cityscapes_split_dir(root, "gtFine", split)
    files = sorted(folder.rglob("*" + CITYSCAPES_LABEL_SUFFIX))
    if not files:
        raise CirnError(f"no *{CITYSCAPES_LABEL_SUFFIX} files under {folder}: expected {CITYSCAPES_LAYOUT}")
    return [(p.relative_to(folder).as_posix()[:-len(CITYSCAPES_LABEL_SUFFIX)], p) for p in files]


class CityscapesDataset(SegmentationDataset):
    """Cityscapes-layout images with labelIds mapped to trainIds; with_labels=False for the unlabelled train split."""
    label_map = LABEL_MAPS["cityscapes"]

    def __init__(self, root, split="train", size_wh=None, list_file=None, with_labels=True, flip=False,
                 normalization="imagenet", label_size="image", max_images=0):
        image_dir = cityscapes_split_dir(root, "leftImg8bit", split)
        label_dir = Path(root).expanduser() / "gtFine" / split
        if list_file:
            names = []
            for entry in _read_list(list_file):
                name = entry[:-len(CITYSCAPES_IMAGE_SUFFIX)] if entry.endswith(CITYSCAPES_IMAGE_SUFFIX) else entry
                name = name[:-4] if name.endswith(".png") else name
                if not (image_dir / (name + CITYSCAPES_IMAGE_SUFFIX)).is_file():
                    raise CirnError(f"list file {list_file} names {entry!r} but "
                                    f"{image_dir / (name + CITYSCAPES_IMAGE_SUFFIX)} does not exist")
                names.append(name)
        else:
            files = sorted(image_dir.rglob("*" + CITYSCAPES_IMAGE_SUFFIX))
            if not files:
                raise CirnError(f"no *{CITYSCAPES_IMAGE_SUFFIX} images under {image_dir}: expected {CITYSCAPES_LAYOUT}")
            names = [p.relative_to(image_dir).as_posix()[:-len(CITYSCAPES_IMAGE_SUFFIX)] for p in files]
        samples = []
        for name in names:
            image_path = image_dir / (name + CITYSCAPES_IMAGE_SUFFIX)
            label_path = label_dir / (name + CITYSCAPES_LABEL_SUFFIX)
            if with_labels and not label_path.is_file():
                raise CirnError(f"image {image_path} has no label: expected {label_path} "
                                "(use with_labels=False for an unlabelled split)")
            samples.append((name, image_path, label_path if with_labels else None))
        super().__init__(samples, size_wh=size_wh, flip=flip, normalization=normalization, label_size=label_size,
                         with_labels=with_labels, max_images=max_images)


# ---------------------------------------------------------------- GTA5 and SYNTHIA (source, intermediate)


class _FlatSourceDataset(SegmentationDataset):
    """Source layouts: {image_dir}/{name}.png beside {label_dir}/{name}.png.

    `label_root`: take labels from this root instead of `root`; an intermediate domain (translated source images)
    holds only the image folder and borrows the source labels.
    """
    image_dir = ""
    label_dir = ""
    layout = ""

    def __init__(self, root, size_wh=None, list_file=None, with_labels=True, flip=False, normalization="imagenet",
                 label_root=None, label_size="image", max_images=0, label_map=None):
        self.label_map = label_map or self.label_map
        root = _check_root(root, self.layout)
        image_dir = root / self.image_dir
        if not image_dir.is_dir():
            raise CirnError(f"{image_dir} does not exist: expected {self.layout}")
        label_dir = (Path(label_root).expanduser() if label_root else root) / self.label_dir
        if with_labels and not label_dir.is_dir():
            if label_root:
                raise CirnError(f"label folder {label_dir} does not exist: label_root must be a source root with "
                                f"{self.layout}")
            raise CirnError(f"{root} has {self.image_dir}/ but no {self.label_dir}/: expected {self.layout}; for an "
                            "intermediate-domain folder (translated images only) pass label_root = the source root")
        if list_file:
            image_paths = [self._listed_image(image_dir, entry, list_file) for entry in _read_list(list_file)]
        else:
            image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not image_paths:
                raise CirnError(f"no images in {image_dir}: expected {self.layout}")
        samples = []
        for image_path in image_paths:
            label_path = label_dir / (image_path.stem + ".png")
            if with_labels and not label_path.is_file():
                raise CirnError(f"image {image_path} has no label: expected {label_path}")
            samples.append((image_path.stem, image_path, label_path if with_labels else None))
        super().__init__(samples, size_wh=size_wh, flip=flip, normalization=normalization, label_size=label_size,
                         with_labels=with_labels, max_images=max_images)

    @staticmethod
    def _listed_image(image_dir, entry, list_file):
        stem = Path(entry).stem if Path(entry).suffix.lower() in IMAGE_SUFFIXES else entry
        for suffix in IMAGE_SUFFIXES:
            if (image_dir / (stem + suffix)).is_file():
                return image_dir / (stem + suffix)
        raise CirnError(f"list file {list_file} names {entry!r} but {image_dir / (stem + '.png')} does not exist")


class GTA5Dataset(_FlatSourceDataset):
    """GTA5: images/NNNNN.png with labels/NNNNN.png holding Cityscapes labelIds (palette PNG)."""
    image_dir = "images"
    label_dir = "labels"
    layout = "the GTA5 layout images/NNNNN.png and labels/NNNNN.png"
    label_map = LABEL_MAPS["gta5"]  # palette PNGs whose indices are the labelIds


class SynthiaDataset(_FlatSourceDataset):
    """SYNTHIA-RAND-CITYSCAPES: RGB/NNNNNNN.png with GT/LABELS/NNNNNNN.png (16-bit, class id in R, instance in G)."""
    image_dir = "RGB"
    label_dir = "GT/LABELS"
    layout = "the SYNTHIA layout RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png"
    label_map = LABEL_MAPS["synthia"]  # 16-bit, class id in the red channel


def _relative_names(folder, suffixes, skip_dirs=()):
    """{name: path} of the files under `folder` (recursive) with one of `suffixes`; name = the relative path
    without its suffix. Hidden files (an interrupted write's temporaries) and sub-folders named in `skip_dirs` are
    left out; two files of one name (a.jpg beside a.png) are an error naming both."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.suffix.lower() not in suffixes or path.name.startswith(".") or not path.is_file() \
                or any(part in skip_dirs for part in relative.parts[:-1]):
            continue
        name = relative.with_suffix("").as_posix()
        if name in found:
            raise CirnError(f"{found[name]} and {path} share the name {name!r}: keep one (files pair up, and outputs "
                            "are named, by relative path and stem)")
        found[name] = path
    return found


class FolderDataset(SegmentationDataset):
    """Your own labelled source: {root}/{image_dir}/**/NAME.{png,jpg} beside {root}/{label_dir}/**/NAME.png, paired
    by relative path and stem; `label_map` (labelmaps.py) says what the label files hold. An image without a label,
    or a label without an image, is an error naming it. `label_root`: labels from this root (an intermediate
    domain's translated images with the source's labels)."""

    def __init__(self, root, label_map, image_dir="images", label_dir="labels", size_wh=None, list_file=None,
                 with_labels=True, flip=False, normalization="imagenet", label_root=None, label_size="image",
                 max_images=0, what="source"):
        self.label_map, self.image_dir, self.label_dir = label_map, image_dir, label_dir
        self.layout = f"a folder with {image_dir}/ (images) and {label_dir}/ (label PNGs of the same names)"
        root = _check_root(root, self.layout)
        images_root = root / image_dir
        labels_root = (Path(label_root).expanduser() if label_root else root) / label_dir
        names = " (other names: data.source_images, data.source_labels)" if what == "source" else ""
        for folder in [images_root] + ([labels_root] if with_labels else []):
            if not folder.is_dir():
                raise CirnError(f"{folder} does not exist: {root} needs {self.layout}{names}")
        images = _relative_names(images_root, IMAGE_SUFFIXES)
        if list_file:
            listed = [str(Path(e).with_suffix("")) if Path(e).suffix.lower() in IMAGE_SUFFIXES else e
                      for e in _read_list(list_file)]
            absent = [name for name in listed if name not in images]
            if absent:
                raise CirnError(f"list file {list_file} names {absent[0]!r} but {images_root} has no such image")
            images = {name: images[name] for name in listed}
        label_files = _relative_names(labels_root, (".png",)) if with_labels else {}
        samples = [(name, path, label_files.get(name, labels_root / f"{name}.png") if with_labels else None)
                   for name, path in images.items()]
        if with_labels:
            lone_images = [name for name in images if name not in label_files]
            if lone_images:
                raise CirnError(f"image {images[lone_images[0]]} has no label: expected "
                                f"{labels_root / lone_images[0]}.png ({len(lone_images)} of {len(images)} images have "
                                "none)")
            lone_labels = [path for name, path in label_files.items() if name not in images]
            if lone_labels and not list_file and not label_root:
                raise CirnError(f"label {lone_labels[0]} has no image: expected "
                                f"{images_root / lone_labels[0].relative_to(labels_root)} (or .jpg); "
                                f"{len(lone_labels)} labels have none")
        if not samples:
            raise CirnError(f"{root} holds no image/label pairs: expected {self.layout}")
        super().__init__(samples, size_wh=size_wh, flip=flip, normalization=normalization, label_size=label_size,
                         with_labels=with_labels, max_images=max_images)


SOURCE_DATASETS = {"toy": GTA5Dataset, "gta5": GTA5Dataset, "synthia": SynthiaDataset, "folder": FolderDataset}


# ---------------------------------------------------------------- your own footage (target)
LABEL_DIRS = ("labels", "gtFine")  # sub-folders of a target folder that hold labels, never training images


class ImageFolderDataset(SegmentationDataset):
    """Every image under `root` (recursive, sorted; a list of roots: each in turn), unlabelled: a folder target, or
    the decoded frames of a video target. Names are relative paths without the suffix. Sub-folders named labels/ or
    gtFine/ are left out (a target folder that also holds labelled frames must not train on, or read, their labels);
    so is `exclude` (the --target-val folder, when it lies inside)."""

    def __init__(self, root, size_wh=None, list_file=None, flip=False, normalization="imagenet", max_images=0,
                 exclude=None):
        images = {}
        exclude = Path(exclude).expanduser().resolve() if exclude else None
        for folder in root if isinstance(root, (list, tuple)) else [root]:
            folder = _check_root(folder, "images (.png, .jpg) in it or its sub-folders")
            found = {name: path for name, path in _relative_names(folder, IMAGE_SUFFIXES, LABEL_DIRS).items()
                     if exclude is None or exclude not in path.resolve().parents}
            if not found:
                raise CirnError(f"the target folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): give a "
                                "folder of your camera's frames, or --target video with a video file")
            clash = sorted(set(found) & set(images))
            if clash:
                raise CirnError(f"{found[clash[0]]} and {images[clash[0]]} share the name {clash[0]!r}: rename one "
                                "(outputs and pseudo labels are named after it)")
            images.update(found)
        if list_file:
            listed = [str(Path(e).with_suffix("")) if Path(e).suffix.lower() in IMAGE_SUFFIXES else e
                      for e in _read_list(list_file)]
            absent = [name for name in listed if name not in images]
            if absent:
                raise CirnError(f"list file {list_file} names {absent[0]!r} but the target has no such image")
            images = {name: images[name] for name in listed}
        super().__init__([(name, path, None) for name, path in images.items()], size_wh=size_wh, flip=flip,
                         normalization=normalization, with_labels=False, max_images=max_images)


PSEUDO_LABELS = "labels"  # stage 3 writes {pseudo_root}/labels/NAME.png


class PseudoLabelDataset(SegmentationDataset):
    """The images of an unlabelled target set with stage 3's pseudo labels, {pseudo_root}/labels/NAME.png holding
    trainIds of `class_names` (255 ignore); whatever the target's layout."""

    def __init__(self, target, pseudo_root, class_names):
        self.label_map = trainid_map(class_names)
        labels_dir = Path(pseudo_root) / PSEUDO_LABELS
        samples = [(name, image, labels_dir / f"{name}.png") for name, image, _ in target.samples]
        missing = [label for _, _, label in samples if not label.is_file()]
        if missing:
            raise CirnError(f"no pseudo label {missing[0]} ({len(missing)} of {len(samples)} images have none): "
                            f"{pseudo_root} is not stage 3's pseudo labels of this target")
        super().__init__(samples, size_wh=target.size_wh, flip=target.flip, normalization=target.normalization)


# ---------------------------------------------------------------- a video target, decoded once
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAMES_MANIFEST = "frames.json"


def video_files(spec):
    """The videos of a --target video root: the file itself, or every video in a folder (sorted, recursive)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CirnError(f"the target video {path} does not exist: give a video file or a folder of videos")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not found:
        raise CirnError(f"the target folder {path} holds no videos ({', '.join(VIDEO_SUFFIXES)}): give a video file, "
                        "a folder of videos, or --target folder for a folder of images")
    return found


def frames_cache_dir(video, stride, bad_frames):
    """Where a video's sampled frames are decoded to: $CIRN_DATA/frames/{stem}-{digest of the file and options}."""
    import hashlib
    import os
    stat = video.stat()
    key = f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stride}|{bad_frames}"
    base = Path(os.environ.get("CIRN_DATA") or "~/.cache/cirn").expanduser()
    return base / "frames" / f"{video.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def decode_video_frames(spec, stride, bad_frames, quiet=False):
    """Decode every `stride`-th frame of the target video(s) once into PNGs, {cache}/{stem}/{stem}_000000_{index}.png
    (the names cirn-run gives a video's frames), and return the cache folders, one per video. A finished folder
    (frames.json, written last) is reused. Undecodable frames follow `bad_frames` (the runtime's policies)."""
    from cirn.common.sources import VideoSource
    from .io import write_png
    folders = []
    videos = video_files(spec)
    top = Path(spec).expanduser()
    for video in videos:
        # A folder's videos keep their relative folder in the frame names (day1/cam.mp4 and day2/cam.mp4 may coexist)
        relative = video.parent.relative_to(top) if top.is_dir() else Path()
        cache = frames_cache_dir(video, stride, bad_frames)
        manifest = cache / FRAMES_MANIFEST
        if manifest.is_file():
            folders.append(cache)
            continue
        source = VideoSource(video, stride=stride, bad_frames=bad_frames)  # a file that is no video: CirnError
        count = 0
        try:
            for frame in source:
                write_png(cache / relative / video.stem / f"{frame.name}.png", frame.image)
                count += 1
        finally:
            source.close()
        if not count:
            raise CirnError(f"no frame of {video} could be decoded (data.bad_frames={bad_frames})")
        for what, items in (("undecodable frames were left out", source.skipped),
                            ("decoding stopped early", [source.decode_error] if source.decode_error else [])):
            if items:
                print(f"warning: {video}: {what} (data.bad_frames={bad_frames}): {', '.join(map(str, items[:5]))}"
                      f"{' ...' if len(items) > 5 else ''}", file=sys.stderr, flush=True)
        from .io import atomic_write_text
        import json
        atomic_write_text(manifest, json.dumps({"video": str(video.resolve()), "stride": stride, "frames": count,
                                                "bad_frames": bad_frames, "skipped": source.skipped,
                                                "decode_error": source.decode_error}, indent=2))
        if not quiet:
            print(f"{video}: {count} frames (one in {stride}) decoded once into {cache}", file=sys.stderr)
        folders.append(cache)
    return folders


# ---------------------------------------------------------------- DataConfig -> datasets
def _source_root(cfg_data):
    if cfg_data.source_root:
        return cfg_data.source_root
    if cfg_data.source != "toy":
        raise CirnError(f"data.source is {cfg_data.source!r} but no source root is set: pass --source-root "
                        f"(or data.source_root=/path/to/{cfg_data.source})")
    from .toy import ensure_toy
    return ensure_toy(look=cfg_data.toy_look).gta5  # the toy source uses the GTA5 layout


TARGET_ROOTS = {"cityscapes": "/path/to/cityscapes", "folder": "/path/to/your/frames",
                "video": "/path/to/drive.mp4 (or a folder of videos)"}


def _target_root(cfg_data):
    if cfg_data.target_root:
        return cfg_data.target_root
    if cfg_data.target != "toy":
        raise CirnError(f"data.target is {cfg_data.target!r} but no target root is set: pass --target-root "
                        f"(or data.target_root={TARGET_ROOTS[cfg_data.target]})")
    from .toy import ensure_toy
    return ensure_toy(look=cfg_data.toy_look).cityscapes


def has_target_labels(cfg_data):
    """Whether the run may score on labelled target images: the toy's or Cityscapes' val split, or --target-val.
    Without them (your own footage) no step reads a target label, and checkpoints are picked label-free."""
    return bool(cfg_data.target_val) or cfg_data.target in ("toy", "cityscapes")


def build_source_dataset(cfg_data, normalization="imagenet", intermediate=True, with_labels=True, flip=None):
    """Labelled source training set: GTA5/SYNTHIA/toy/your folder, or the intermediate domain when
    data.intermediate_root is set (and `intermediate`): its images with the source labels. intermediate=False gives
    the raw source (stage 1)."""
    cls = SOURCE_DATASETS[cfg_data.source]
    source_root = _source_root(cfg_data)
    root, label_root = source_root, None
    if intermediate and cfg_data.intermediate_root:
        root, label_root = cfg_data.intermediate_root, source_root
    options = dict(size_wh=cfg_data.source_size_wh, list_file=cfg_data.source_list or None, with_labels=with_labels,
                   flip=cfg_data.flip if flip is None else flip, normalization=normalization, label_root=label_root,
                   label_map=source_label_map(cfg_data))
    if cls is FolderDataset:
        dataset = FolderDataset(root, image_dir=cfg_data.source_images, label_dir=cfg_data.source_labels, **options)
    else:
        dataset = cls(root, **options)
    dataset.cache = cfg_data.cache_images
    return dataset


class _ItemTransform(Dataset):
    """Another dataset's items, each changed by `transform(item, rng)`. Indexed with an (index, seed) key, as
    InfiniteLoader does, rng is default_rng((seed, stream)), apart from the flip's default_rng(seed) and the other
    transforms' streams: the draws replay exactly on resume, whatever the number of workers."""

    stream = 0

    def __init__(self, dataset):
        self.dataset = dataset

    @property
    def skipped(self):
        return self.dataset.skipped

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        item = dict(self.dataset[key])
        seed = key[1] if isinstance(key, tuple) else int(torch.randint(2**62, ()))
        return self.transform(item, np.random.default_rng((seed, self.stream)))


class RandomCrop(_ItemTransform):
    """Random (width, height) crops of another dataset's items (image and, if present, label); an image no larger
    than the crop along a side keeps that side whole. Offsets from stream 1 (_ItemTransform)."""

    stream = 1

    def __init__(self, dataset, size_wh):
        super().__init__(dataset)
        self.size_wh = tuple(size_wh)

    def transform(self, item, rng):
        height, width = item["image"].shape[-2:]
        crop_w, crop_h = min(self.size_wh[0], width), min(self.size_wh[1], height)
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        item["image"] = item["image"][:, top:top + crop_h, left:left + crop_w]  # (3, crop_h, crop_w)
        if "label" in item:
            item["label"] = item["label"][top:top + crop_h, left:left + crop_w]  # (crop_h, crop_w)
        return item


class ColorJitter(_ItemTransform):
    """Another dataset's items with their image photometrically jittered (augment.color_jitter at `strength`),
    labels untouched. Draws from stream 2 (_ItemTransform)."""

    stream = 2

    def __init__(self, dataset, strength, normalization):
        super().__init__(dataset)
        self.strength, self.normalization = strength, normalization

    def transform(self, item, rng):
        rgb = unnormalize_tensor(item["image"], self.normalization)  # (3, H, W) float RGB 0-255
        item["image"] = normalize_tensor(color_jitter(rgb, rng, self.strength), self.normalization)
        return item


def build_target_dataset(cfg_data, normalization="imagenet", with_labels=False, split="train", flip=None,
                         quiet=False):
    """Target training set: Cityscapes layout (train split; labelled only for the oracle), every image of a folder,
    or the sampled frames of a video (data.frame_stride; decoded once, decode_video_frames)."""
    flip = cfg_data.flip if flip is None else flip
    if cfg_data.target in ("folder", "video"):
        if with_labels:
            raise CirnError(f"--target {cfg_data.target} has no labels to train on (the oracle needs the toy or "
                            "Cityscapes target)")
        root = _target_root(cfg_data)
        if cfg_data.target == "video":
            root = decode_video_frames(root, cfg_data.frame_stride, cfg_data.bad_frames, quiet=quiet)
        elif Path(root).expanduser().is_file():
            raise CirnError(f"--target folder needs a folder of images, but {root} is a file: for a video use "
                            "--target video")
        dataset = ImageFolderDataset(root, size_wh=cfg_data.target_size_wh, list_file=cfg_data.target_list or None,
                                     flip=flip, normalization=normalization, exclude=cfg_data.target_val or None)
    else:
        dataset = CityscapesDataset(_target_root(cfg_data), split=split, size_wh=cfg_data.target_size_wh,
                                    list_file=cfg_data.target_list or None, with_labels=with_labels, flip=flip,
                                    normalization=normalization)
    dataset.cache = cfg_data.cache_images
    return dataset


def build_train_dataset(cfg_data, domain, normalization="imagenet", with_labels=True, class_names=None):
    """'source' (intermediate domain when set), 'target' (labelled only if asked) or 'pseudo' (the target with
    stage 3's pseudo labels of `class_names`) training set. Unreadable samples follow data.bad_images."""
    if domain == "source":
        dataset = build_source_dataset(cfg_data, normalization, with_labels=with_labels)
    elif domain == "target":
        dataset = build_target_dataset(cfg_data, normalization, with_labels=with_labels)
    elif domain == "pseudo":
        if not cfg_data.pseudo_root:
            raise CirnError("training on pseudo labels needs data.pseudo_root (written by cirn-train stage3)")
        from .labels import CLASS_NAMES
        dataset = PseudoLabelDataset(build_target_dataset(cfg_data, normalization, quiet=True), cfg_data.pseudo_root,
                                     class_names or CLASS_NAMES)
        dataset.cache = cfg_data.cache_images
    else:
        raise CirnError(f"unknown training domain {domain!r}: expected 'source', 'target' or 'pseudo'")
    dataset.bad_images = cfg_data.bad_images
    if cfg_data.crop_size_wh:
        dataset = RandomCrop(dataset, cfg_data.crop_size_wh)
    if cfg_data.color_jitter > 0 and domain != "target":
        # The labelled images of the adaptation (source, intermediate, pseudo-labelled target): a look drawn anew
        # each time. Stage 2's unlabelled target and the oracle's labelled one stay as taken.
        dataset = ColorJitter(dataset, cfg_data.color_jitter, normalization)
    return dataset


def build_val_dataset(cfg_data, normalization="imagenet", class_names=()):
    """Labelled target images to score on, labels kept at full resolution for the metric (images resized to
    data.target_size_wh): --target-val (a folder with images/ and labels/ read with data.target_val_label_map, or a
    Cityscapes root's val split), else the toy's or Cityscapes' val split; None when the target has no labels.
    `class_names`: the model's own class set (model.class_names; empty = Cityscapes'), which the labels must hold."""
    options = dict(size_wh=cfg_data.target_size_wh, flip=False, normalization=normalization, label_size="original",
                   max_images=cfg_data.max_val_images)
    root = cfg_data.target_val
    if root:
        if (Path(root).expanduser() / "gtFine").is_dir():
            dataset = CityscapesDataset(root, split=cfg_data.val_split, with_labels=True, **options)
        else:
            from .labelmaps import load_label_map
            label_map = load_label_map(cfg_data.target_val_label_map) if cfg_data.target_val_label_map else \
                source_label_map(cfg_data)
            dataset = FolderDataset(root, label_map, what="--target-val", **options)
    elif not has_target_labels(cfg_data):
        return None
    else:
        dataset = CityscapesDataset(_target_root(cfg_data), split=cfg_data.val_split, with_labels=True, **options)
    theirs = tuple(dataset.label_map.class_names) if dataset.label_map.own_classes else None
    if theirs != (tuple(class_names) if class_names else None):
        raise CirnError(f"the target val labels ({dataset.label_map.name}) are of the classes "
                        f"{', '.join(theirs or ('of Cityscapes',))}, the model's are "
                        f"{', '.join(class_names or ('Cityscapes',))}: give --target-val labels of the model's classes "
                        "(data.target_val_label_map)")
    dataset.cache = cfg_data.cache_images
    return dataset


# ---------------------------------------------------------------- endless, resumable batches
class _StreamBatchSampler:
    """Batches of (index, augmentation seed) keys, cut from the endless stream of per-epoch permutations; with
    shard=(rank, world), this process's every world-th key of each global batch."""

    def __init__(self, num_samples, batch_size, seed, position, shard=(0, 1)):
        self.num_samples, self.batch_size, self.seed, self.position = num_samples, batch_size, seed, position
        self.shard = shard

    def __iter__(self):
        epoch, offset = divmod(self.position, self.num_samples)
        batch = []
        while True:
            order, aug_seeds = epoch_order(self.seed, epoch, self.num_samples)
            for i in range(offset, self.num_samples):
                batch.append((int(order[i]), int(aug_seeds[i])))
                if len(batch) == self.batch_size:
                    rank, world = self.shard
                    yield batch[rank::world]
                    batch = []
            epoch, offset = epoch + 1, 0


def epoch_order(seed, epoch, num_samples):
    """(permutation, per-sample augmentation seeds) of one epoch: a pure function of (seed, epoch)."""
    rng = np.random.default_rng((seed, epoch))
    return rng.permutation(num_samples), rng.integers(0, 2**63 - 1, size=num_samples)


class InfiniteLoader:
    """Endless batches over `dataset`, reshuffled every epoch, resumable exactly.

    The sample stream is epoch 0's permutation, then epoch 1's, ...; each permutation and the seeds of each sample's
    random flip come from np.random.default_rng((seed, epoch)). Batches are consecutive runs of `batch_size` items
    of that stream, so a batch may straddle two epochs and a dataset smaller than a batch still works. The whole
    state is {seed, position}, position = samples handed out so far: a restored loader replays the same stream
    from there, whatever num_workers is and whatever else consumed the global RNG.

    Under torchrun, `batch_size` is the global batch and each process gets its 1/world share of every batch of that
    stream (distributed.py), so N processes together see exactly the samples one process would.
    """

    def __init__(self, dataset, batch_size, seed=0, num_workers=0, position=0, pin_memory=False):
        if len(dataset) == 0:
            raise CirnError("cannot draw batches from an empty dataset")
        if batch_size < 1:
            raise CirnError(f"batch size must be at least 1, got {batch_size}")
        distributed.shard_batch(batch_size)  # a global batch that does not split over the processes is an error
        self.shard = (distributed.rank(), distributed.world_size())
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.pin_memory = pin_memory
        self.seed, self.position = seed, position
        self._batches = None

    @property
    def epoch(self):
        return self.position // len(self.dataset)

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None:  # created lazily, so load_state_dict before the first batch costs nothing
            sampler = _StreamBatchSampler(len(self.dataset), self.batch_size, self.seed, self.position, self.shard)
            # An own generator: DataLoader would otherwise draw its worker base seed from the global RNG and
            # shift the model's random stream whenever the loader (re)starts, e.g. after a resume.
            generator = torch.Generator().manual_seed(self.seed)
            self._batches = iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                            pin_memory=self.pin_memory, generator=generator))
        batch = next(self._batches)
        self.position += self.batch_size
        reports = batch.pop(UNCOVERED_KEY, None)  # from the workers (SegmentationDataset._load)
        if reports:
            tally = getattr(self.dataset, "dataset", self.dataset).uncovered
            for report in reports:
                tally.merge(json.loads(report))
        return batch

    def state_dict(self):
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state):
        self.seed, self.position = int(state["seed"]), int(state["position"])
        self._batches = None  # workers prefetch ahead: restart the stream at the restored position


def infinite_loader(dataset, batch_size, seed=0, num_workers=0, state=None, pin_memory=False):
    """An InfiniteLoader (iterate with next()); `state` = a previous loader's state_dict() to resume from."""
    loader = InfiniteLoader(dataset, batch_size, seed=seed, num_workers=num_workers, pin_memory=pin_memory)
    if state is not None:
        loader.load_state_dict(state)
    return loader
