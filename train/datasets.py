"""Dataset loaders in the on-disk layouts of ../shared/REFERENCE.md, normalisation, and the resumable batch stream.

- CityscapesDataset: leftImg8bit/{split}/{city}/{name}_leftImg8bit.png, gtFine/{split}/{city}/{name}_gtFine_labelIds.png
- GTA5Dataset: images/NNNNN.png, labels/NNNNN.png (palette PNG of Cityscapes labelIds)
- SynthiaDataset: RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png (16-bit, class id in the R channel)
The intermediate domain (translated source images) uses the source class with `label_root` = the source root.
Every item is a dict: image (3, H, W) float, label (H, W) long trainIds with 255 ignore (unless with_labels=False),
name (relative, for prediction files) and size_hw (original (H, W)). Models never read configs: the `build_*`
functions translate a DataConfig into these constructors.
"""
import abc
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import distributed, labels
from cirn.common.errors import CirnError
from cirn.common.files import CITYSCAPES_IMAGE_SUFFIX, IMAGE_SUFFIXES
from cirn.common.normalization import affine, check as check_normalization

from .io import read_image, read_label

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


def denormalize(tensor, mode="imagenet"):
    """Inverse of normalize: (3, H, W) or (B, 3, H, W) tensor -> (H, W, 3) or (B, H, W, 3) uint8 RGB numpy."""
    x = tensor.detach().float().cpu()
    bgr, scale, shift = _affine_tensors(mode, x)
    x = (x - shift) / scale
    x = x.flip(-3) if bgr else x  # BGR -> RGB
    x = x.clamp(0, 255).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


# ---------------------------------------------------------------- shared dataset machinery
def _resize(array, size_wh, resample):
    """Resize an (H, W[, 3]) uint8 array to size_wh=(width, height) with PIL (bicubic images, nearest labels)."""
    if (array.shape[1], array.shape[0]) == tuple(size_wh):
        return array
    return np.asarray(Image.fromarray(array).resize(tuple(size_wh), resample))


def _map_ids(lut, ids, path):
    """Dataset ids -> trainIds through a lookup table; ids beyond the table are a clear error."""
    if ids.size and int(ids.max()) >= len(lut):
        raise CirnError(f"label {path} holds id {int(ids.max())}, beyond the {len(lut)} ids of this dataset's "
                        "format; is it the right kind of label file?")
    return lut[ids]


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


class SegmentationDataset(Dataset, abc.ABC):
    """Loading, resizing, flipping and normalisation shared by the layouts; subclasses find samples and map labels.

    `samples`: list of (name, image_path, label_path or None). `size_wh`: (width, height) output size or None.
    `label_size`: 'image' resizes labels (nearest) to the output image size (training); 'original' keeps them as
    stored, so evaluation compares at full resolution. Indexing with an (index, seed) pair, as infinite_loader
    does, draws the random flip from `seed` instead of torch's global RNG (exact resume, any number of workers).
    `bad_images`: 'fail' (an unreadable image or label is an error naming it) or 'skip' (warn once, name it in
    `skipped` and use the next sample instead; data.bad_images for the training sets).
    `cache`: keep each sample's decoded, resized image and label in memory after its first read (data.cache_images;
    every DataLoader worker holds its own copy).
    """

    bad_images = "fail"
    cache = False

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

    def __len__(self):
        return len(self.samples)

    @abc.abstractmethod
    def read_trainids(self, path):
        """(H, W) uint8 trainIds (255 ignore) of one label file; the layout's own id mapping."""

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
        image, label, (height, width) = self._read(index)
        flip = self._flip_now(seed)
        if flip:
            image = image[:, ::-1]
        item = {"image": normalize(image, self.normalization), "name": self.samples[index][0],
                "size_hw": torch.tensor([height, width])}
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

    def __init__(self, root, split="train", size_wh=None, list_file=None, with_labels=True, flip=False,
                 normalization="imagenet", label_size="image", max_images=0, label_root=None):
        image_dir = cityscapes_split_dir(root, "leftImg8bit", split)
        # label_root: labels from another Cityscapes-layout root (stage 3's pseudo labels), images from `root`.
        label_dir = Path(label_root or root).expanduser() / "gtFine" / split
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

    def read_trainids(self, path):
        return _map_ids(labels.LABELID_TO_TRAINID, read_label(path), path)


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
                 label_root=None, label_size="image", max_images=0):
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

    def read_trainids(self, path):
        return _map_ids(labels.LABELID_TO_TRAINID, read_label(path), path)  # palette indices are the labelIds


class SynthiaDataset(_FlatSourceDataset):
    """SYNTHIA-RAND-CITYSCAPES: RGB/NNNNNNN.png with GT/LABELS/NNNNNNN.png (16-bit, class id in R, instance in G)."""
    image_dir = "RGB"
    label_dir = "GT/LABELS"
    layout = "the SYNTHIA layout RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png"

    def read_trainids(self, path):
        raw = read_label(path, unchanged=True)  # (H, W, 3) uint16 in RGB order
        ids = raw[..., 0] if raw.ndim == 3 else raw
        return _map_ids(labels.SYNTHIA_TO_TRAINID, ids, path)


SOURCE_DATASETS = {"toy": GTA5Dataset, "gta5": GTA5Dataset, "synthia": SynthiaDataset}


# ---------------------------------------------------------------- DataConfig -> datasets
def _source_root(cfg_data):
    if cfg_data.source_root:
        return cfg_data.source_root
    if cfg_data.source != "toy":
        raise CirnError(f"data.source is {cfg_data.source!r} but no source root is set: pass --source-root "
                        f"(or data.source_root=/path/to/{cfg_data.source})")
    from .toy import ensure_toy
    return ensure_toy(look=cfg_data.toy_look).gta5  # the toy source uses the GTA5 layout


def _target_root(cfg_data):
    if cfg_data.target_root:
        return cfg_data.target_root
    if cfg_data.target != "toy":
        raise CirnError(f"data.target is {cfg_data.target!r} but no target root is set: pass --target-root "
                        "(or data.target_root=/path/to/cityscapes)")
    from .toy import ensure_toy
    return ensure_toy(look=cfg_data.toy_look).cityscapes


def build_source_dataset(cfg_data, normalization="imagenet", intermediate=True, with_labels=True, flip=None):
    """Labelled source training set: GTA5/SYNTHIA/toy, or the intermediate domain when data.intermediate_root is set
    (and `intermediate`): its images with the source labels. intermediate=False gives the raw source (stage 1)."""
    cls = SOURCE_DATASETS[cfg_data.source]
    source_root = _source_root(cfg_data)
    root, label_root = source_root, None
    if intermediate and cfg_data.intermediate_root:
        root, label_root = cfg_data.intermediate_root, source_root
    dataset = cls(root, size_wh=cfg_data.source_size_wh, list_file=cfg_data.source_list or None,
                  with_labels=with_labels, flip=cfg_data.flip if flip is None else flip, normalization=normalization,
                  label_root=label_root)
    dataset.cache = cfg_data.cache_images
    return dataset


class RandomCrop(Dataset):
    """Random (width, height) crops of another dataset's items (image and, if present, label); an image no larger
    than the crop along a side keeps that side whole.

    Indexed with an (index, seed) key, as InfiniteLoader does, the offsets come from default_rng((seed, 1)), apart
    from the flip's default_rng(seed): crops replay exactly on resume, whatever the number of workers.
    """

    def __init__(self, dataset, size_wh):
        self.dataset, self.size_wh = dataset, tuple(size_wh)

    @property
    def skipped(self):
        return self.dataset.skipped

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        item = dict(self.dataset[key])
        seed = key[1] if isinstance(key, tuple) else int(torch.randint(2**62, ()))
        rng = np.random.default_rng((seed, 1))
        height, width = item["image"].shape[-2:]
        crop_w, crop_h = min(self.size_wh[0], width), min(self.size_wh[1], height)
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        item["image"] = item["image"][:, top:top + crop_h, left:left + crop_w]  # (3, crop_h, crop_w)
        if "label" in item:
            item["label"] = item["label"][top:top + crop_h, left:left + crop_w]  # (crop_h, crop_w)
        return item


def build_target_dataset(cfg_data, normalization="imagenet", with_labels=False, split="train", flip=None):
    """Target training set (Cityscapes layout, train split): unlabelled for adaptation, labelled for the oracle."""
    dataset = CityscapesDataset(_target_root(cfg_data), split=split, size_wh=cfg_data.target_size_wh,
                                list_file=cfg_data.target_list or None, with_labels=with_labels,
                                flip=cfg_data.flip if flip is None else flip, normalization=normalization)
    dataset.cache = cfg_data.cache_images
    return dataset


def build_train_dataset(cfg_data, domain, normalization="imagenet", with_labels=True):
    """'source' (intermediate domain when set) or 'target' training set; the target is labelled only if asked.
    Unreadable samples follow data.bad_images."""
    if domain == "source":
        dataset = build_source_dataset(cfg_data, normalization, with_labels=with_labels)
    elif domain == "target":
        dataset = build_target_dataset(cfg_data, normalization, with_labels=with_labels)
    elif domain == "pseudo":
        if not cfg_data.pseudo_root:
            raise CirnError("training on pseudo labels needs data.pseudo_root (written by cirn-train stage3)")
        dataset = CityscapesDataset(_target_root(cfg_data), "train", size_wh=cfg_data.target_size_wh,
                                    list_file=cfg_data.target_list or None, flip=cfg_data.flip,
                                    normalization=normalization, label_root=cfg_data.pseudo_root)
        dataset.cache = cfg_data.cache_images
    else:
        raise CirnError(f"unknown training domain {domain!r}: expected 'source', 'target' or 'pseudo'")
    dataset.bad_images = cfg_data.bad_images
    return RandomCrop(dataset, cfg_data.crop_size_wh) if cfg_data.crop_size_wh else dataset


def build_val_dataset(cfg_data, normalization="imagenet"):
    """Target val split: images resized to data.target_size_wh, labels kept at full resolution for the metric."""
    dataset = CityscapesDataset(_target_root(cfg_data), split=cfg_data.val_split, size_wh=cfg_data.target_size_wh,
                                with_labels=True, flip=False, normalization=normalization, label_size="original",
                                max_images=cfg_data.max_val_images)
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
