"""Dataset loaders on tiny 16x32 fixtures written in the exact on-disk formats of REFERENCE.md."""
import dataclasses
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cirn.train import datasets
from cirn.train.config import DataConfig
from cirn.train.augment import color_jitter, gaussian_blur
from cirn.train.datasets import (CityscapesDataset, ColorJitter, GTA5Dataset, RandomCrop, SynthiaDataset,
                                 build_source_dataset,
                                 build_target_dataset, build_train_dataset, build_val_dataset, denormalize,
                                 infinite_loader, normalize, normalize_tensor)
from cirn.common.errors import CirnError
from cirn.common.normalization import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, normalize_array

H, W = 16, 32
# Cityscapes labelIds of the 19 classes in trainId order, plus ignored ones (0 unlabeled, 9 parking, 29 caravan).
LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 9, 29]
TRAIN_IDS = list(range(19)) + [255, 255, 255]


def random_image(seed, height=H, width=W):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def striped(values, height=H, width=W):
    """(height, width) uint8 with vertical stripes cycling through `values`, 2 pixels wide (nearest-resize safe)."""
    cols = np.array(values, dtype=np.uint8)[(np.arange(width) // 2) % len(values)]
    return np.tile(cols, (height, 1))


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_cityscapes(root, split, names, with_labels=True):
    for i, name in enumerate(names):
        city = name.split("_")[0]
        save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", random_image(i))
        if with_labels:
            save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", striped(np.roll(LABEL_IDS, i)))
    return root


def write_gta5(root, count=3, label_size=(H, W), images=True, labels=True):
    palette = np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist()
    for i in range(count):
        if images:
            save(root / "images" / f"{i + 1:05d}.png", random_image(i))
        if labels:
            label = Image.fromarray(striped(np.roll(LABEL_IDS, i), *label_size))
            label.putpalette(palette)  # an 'L' image with a palette becomes 'P': indices are the labelIds
            (root / "labels").mkdir(parents=True, exist_ok=True)
            label.save(root / "labels" / f"{i + 1:05d}.png")
    return root


# SYNTHIA class id -> trainId pairs from REFERENCE.md, plus void (0) and unmapped ids (13, 14, 22) -> 255.
SYNTHIA_IDS = [3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11, 0, 13, 14, 22]
SYNTHIA_TRAIN_IDS = list(range(19)) + [255, 255, 255, 255]


def write_synthia(root, count=2):
    for i in range(count):
        save(root / "RGB" / f"{i:07d}.png", random_image(i))
        rgb = np.zeros((H, W, 3), dtype=np.uint16)
        rgb[..., 0] = striped(np.roll(SYNTHIA_IDS, i))  # class id in R
        rgb[..., 1] = 1000 + np.arange(W, dtype=np.uint16)  # instance id in G, must not leak into the label
        path = root / "GT" / "LABELS" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    return root


def expected(trainids, i):
    return striped(np.roll(trainids, i)).astype(np.int64)


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes(root, "train", ["aachen_000000_000019", "bremen_000001_000019"])
    write_cityscapes(root, "val", ["frankfurt_000000_000294", "lindau_000000_000019"])
    return root


# ---------------------------------------------------------------- normalisation
def test_normalize_imagenet_and_caffe_values():
    image = np.array([[[255, 0, 128]]], dtype=np.uint8)  # (1, 1, 3) RGB
    x = normalize(image, "imagenet")
    assert x.shape == (3, 1, 1) and x.dtype == torch.float32
    want = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(x.flatten(), torch.tensor(want), atol=1e-6)
    x = normalize(image, "caffe")  # BGR order, 0-255, mean subtracted, no std
    want = [128 - CAFFE_MEAN_BGR[0], 0 - CAFFE_MEAN_BGR[1], 255 - CAFFE_MEAN_BGR[2]]
    assert torch.allclose(x.flatten(), torch.tensor(want, dtype=torch.float32), atol=1e-4)
    assert torch.allclose(normalize(image, "tanh").flatten(), torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)


@pytest.mark.parametrize("mode", ["imagenet", "caffe", "tanh"])
def test_denormalize_round_trip(mode):
    image = random_image(3)
    x = normalize(image, mode)
    np.testing.assert_array_equal(denormalize(x, mode), image)
    np.testing.assert_array_equal(denormalize(torch.stack([x, x]), mode), np.stack([image, image]))


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_tensor_form_is_the_numpy_form(mode):
    image = random_image(4)
    np.testing.assert_allclose(normalize(image, mode).numpy(), normalize_array(image, mode), rtol=1e-6, atol=1e-6)
    batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float()  # (2, 3, H, W) RGB 0-255
    np.testing.assert_allclose(normalize_tensor(batch, mode).numpy(), normalize_array(np.stack([image, image]), mode),
                               rtol=1e-6, atol=1e-6)


def test_unknown_normalization():
    with pytest.raises(CirnError, match="imagenet"):
        normalize(random_image(0), "bgr")


# ---------------------------------------------------------------- Cityscapes
def test_cityscapes_item(cityscapes):
    ds = CityscapesDataset(cityscapes, split="val")
    assert len(ds) == 2
    item = ds[0]
    assert item["name"] == "frankfurt/frankfurt_000000_000294"
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["label"].numpy(), expected(TRAIN_IDS, 0))
    assert item["size_hw"].tolist() == [H, W]
    np.testing.assert_array_equal(denormalize(item["image"]), random_image(0))
    np.testing.assert_array_equal(ds[1]["label"].numpy(), expected(TRAIN_IDS, 1))


def test_cityscapes_resize_and_original_labels(cityscapes):
    ds = CityscapesDataset(cityscapes, split="val", size_wh=(16, 8))  # (width, height)
    item = ds[0]
    assert item["image"].shape == (3, 8, 16) and item["label"].shape == (8, 16)
    np.testing.assert_array_equal(item["label"].numpy(), expected(TRAIN_IDS, 0)[::2, ::2])
    assert item["size_hw"].tolist() == [H, W]
    want = np.asarray(Image.fromarray(random_image(0)).resize((16, 8), Image.BICUBIC))
    np.testing.assert_array_equal(denormalize(item["image"]), want)
    item = CityscapesDataset(cityscapes, split="val", size_wh=(16, 8), label_size="original")[0]
    assert item["image"].shape == (3, 8, 16) and item["label"].shape == (H, W)


def test_cityscapes_unlabelled_split(cityscapes):
    write_cityscapes(cityscapes, "test", ["berlin_000000_000019"], with_labels=False)
    item = CityscapesDataset(cityscapes, split="test", with_labels=False)[0]
    assert "label" not in item and item["name"] == "berlin/berlin_000000_000019"
    with pytest.raises(CirnError, match="berlin_000000_000019_gtFine_labelIds.png"):
        CityscapesDataset(cityscapes, split="test")


def test_cityscapes_list_file(cityscapes, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("bremen/bremen_000001_000019_leftImg8bit.png\n\naachen/aachen_000000_000019\n")
    ds = CityscapesDataset(cityscapes, split="train", list_file=lst)
    assert [s[0] for s in ds.samples] == ["bremen/bremen_000001_000019", "aachen/aachen_000000_000019"]
    lst.write_text("aachen/aachen_000000_999999_leftImg8bit.png\n")
    with pytest.raises(CirnError, match="aachen_000000_999999_leftImg8bit.png"):
        CityscapesDataset(cityscapes, split="train", list_file=lst)


def test_cityscapes_errors(cityscapes, tmp_path):
    with pytest.raises(CirnError, match=r"'tain'.*train, val, test"):
        CityscapesDataset(cityscapes, split="tain")
    with pytest.raises(CirnError, match=r"leftImg8bit/test does not exist.*train, val"):
        CityscapesDataset(cityscapes, split="test")
    with pytest.raises(CirnError, match=f"{tmp_path / 'nowhere'} does not exist.*Cityscapes layout"):
        CityscapesDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(CirnError, match=r"no \*_leftImg8bit.png images under .*empty/leftImg8bit/val"):
        CityscapesDataset(tmp_path / "empty", split="val")
    label = cityscapes / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(CirnError, match=f"lindau_000000_000019_leftImg8bit.png has no label: expected {label}"):
        CityscapesDataset(cityscapes, split="val")


def test_unreadable_image_names_the_file(cityscapes):
    bad = cityscapes / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    bad.write_bytes(b"not a png")
    ds = CityscapesDataset(cityscapes, split="val")
    with pytest.raises(CirnError, match=str(bad)):
        ds[0]


def test_flip_moves_image_and_label_together(cityscapes):
    plain = CityscapesDataset(cityscapes, split="val")[0]
    ds = CityscapesDataset(cityscapes, split="val", flip=True)
    seeds = {bool(np.random.default_rng(s).random() < 0.5): s for s in range(10)}
    flipped, kept = ds[(0, seeds[True])], ds[(0, seeds[False])]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["label"], plain["label"].flip(-1))
    assert torch.equal(kept["image"], plain["image"])
    torch.manual_seed(0)  # plain integer indices draw from torch's global RNG
    first = [ds[0]["image"][0, 0, 0].item() for _ in range(8)]
    torch.manual_seed(0)
    assert [ds[0]["image"][0, 0, 0].item() for _ in range(8)] == first
    assert len(set(first)) == 2



def test_cached_items_are_the_read_ones_and_skip_the_disk(cityscapes):
    plain = CityscapesDataset(cityscapes, split="val", size_wh=(16, 8), flip=True)
    cached = CityscapesDataset(cityscapes, split="val", size_wh=(16, 8), flip=True)
    cached.cache = True
    read = [plain[(0, seed)] for seed in range(6)]
    cached[(0, 0)]
    for path in cityscapes.rglob("*.png"):
        path.unlink()  # from now on only the cache can answer
    for seed, expected_item in enumerate(read):  # the flip still follows each key
        item = cached[(0, seed)]
        assert torch.equal(item["image"], expected_item["image"]) and torch.equal(item["label"], expected_item["label"])
    assert len({bool(torch.equal(r["image"], read[0]["image"])) for r in read}) == 2  # both flips were seen
    with pytest.raises(CirnError):
        plain[(0, 3)]  # without the cache the files are read again


def test_random_crop_of_image_and_label_replays_from_its_key(cityscapes):
    base = CityscapesDataset(cityscapes, split="val")
    crops = RandomCrop(base, (8, 4))
    whole = base[(0, 5)]
    item = crops[(0, 5)]
    assert item["image"].shape == (3, 4, 8) and item["label"].shape == (4, 8)
    assert torch.equal(item["image"], crops[(0, 5)]["image"])  # the same key, the same crop
    windows = [(t, x) for t in range(H - 3) for x in range(W - 7)
               if torch.equal(whole["image"][:, t:t + 4, x:x + 8], item["image"])]
    assert any(torch.equal(whole["label"][t:t + 4, x:x + 8], item["label"]) for t, x in windows)
    assert len({tuple(crops[(0, s)]["image"].flatten()[:8].tolist()) for s in range(12)}) > 1
    tall = RandomCrop(base, (8, 1000))[(0, 1)]  # a side larger than the image keeps it whole
    assert tall["image"].shape == (3, H, 8)


def test_training_sets_crop_and_cache_as_configured(cityscapes):
    cfg = DataConfig(target="cityscapes", target_root=str(cityscapes), target_size_wh=(16, 8),
                     crop_size_wh=(8, 8), cache_images=True)
    train = build_train_dataset(cfg, "target")
    assert isinstance(train, RandomCrop) and train.dataset.cache and train[(0, 0)]["image"].shape == (3, 8, 8)
    val = build_val_dataset(cfg)
    assert val.cache and val[0]["image"].shape == (3, 8, 16)  # evaluation never crops
    assert not isinstance(build_train_dataset(dataclasses.replace(cfg, crop_size_wh=()), "target"), RandomCrop)


def test_color_jitter_changes_colours_within_range_and_replays_from_its_seed():
    image = torch.from_numpy(random_image(0)).permute(2, 0, 1).float()  # (3, H, W) RGB 0-255
    assert color_jitter(image, np.random.default_rng(1), 0.0) is image  # strength 0: untouched
    out = color_jitter(image, np.random.default_rng(1), 0.5)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, color_jitter(image, np.random.default_rng(1), 0.5))  # the same draw from the same seed
    assert not torch.equal(out, color_jitter(image, np.random.default_rng(2), 0.5))
    assert (out - image).abs().mean() > 1  # a real change


def test_gaussian_blur_keeps_flat_images_and_spreads_an_impulse_symmetrically():
    flat = torch.full((3, 9, 9), 100.0)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat)
    impulse = torch.zeros(3, 9, 9)
    impulse[:, 4, 4] = 1.0
    blurred = gaussian_blur(impulse, 1.0)
    assert blurred.sum().item() == pytest.approx(3.0, rel=1e-5)  # the kernel sums to 1 (no mass at the borders)
    assert blurred[0, 4, 4] < 1 and torch.allclose(blurred[0], blurred[0].flip(0)) and torch.allclose(
        blurred[0], blurred[0].T)


def test_training_sets_jitter_the_source_only(cityscapes, tmp_path):
    write_gta5(tmp_path / "gta5")
    cfg = DataConfig(source="gta5", source_root=str(tmp_path / "gta5"), target="cityscapes",
                     target_root=str(cityscapes), color_jitter=0.5)
    source = build_train_dataset(cfg, "source")
    assert isinstance(source, ColorJitter)
    item, base = source[(0, 3)], source.dataset[(0, 3)]  # jittered, and the same item (flip included) without
    assert torch.equal(item["label"], base["label"])  # labels untouched
    assert not torch.equal(item["image"], base["image"])
    assert torch.equal(item["image"], source[(0, 3)]["image"])  # replays from its key (exact resume)
    # Stage 2's unlabelled target and the oracle's labelled one are trained on as the camera took them.
    assert not isinstance(build_train_dataset(cfg, "target", with_labels=False), ColorJitter)
    assert not isinstance(build_train_dataset(cfg, "target"), ColorJitter)
    assert not isinstance(build_train_dataset(dataclasses.replace(cfg, color_jitter=0.0), "source"), ColorJitter)


# ---------------------------------------------------------------- GTA5, SYNTHIA, intermediate
def test_gta5_palette_labels(tmp_path):
    root = write_gta5(tmp_path / "gta5")
    assert Image.open(root / "labels" / "00001.png").mode == "P"
    ds = GTA5Dataset(root)
    assert [s[0] for s in ds.samples] == ["00001", "00002", "00003"]
    for i in range(3):
        np.testing.assert_array_equal(ds[i]["label"].numpy(), expected(TRAIN_IDS, i))


def test_gta5_label_of_another_size_is_resized(tmp_path):
    root = write_gta5(tmp_path / "gta5", count=1, label_size=(H // 2, W // 2))
    item = GTA5Dataset(root)[0]
    assert item["image"].shape == (3, H, W) and item["label"].shape == (H, W)
    item = GTA5Dataset(root, size_wh=(16, 8))[0]
    assert item["image"].shape == (3, 8, 16) and item["label"].shape == (8, 16)
    assert set(item["label"].unique().tolist()) <= set(TRAIN_IDS)


def test_synthia_16bit_labels(tmp_path):
    root = write_synthia(tmp_path / "synthia")
    raw = cv2.imread(str(root / "GT/LABELS/0000000.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (H, W, 3)
    ds = SynthiaDataset(root)
    assert [s[0] for s in ds.samples] == ["0000000", "0000001"]
    for i in range(2):
        np.testing.assert_array_equal(ds[i]["label"].numpy(), expected(SYNTHIA_TRAIN_IDS, i))


def test_intermediate_domain_borrows_source_labels(tmp_path):
    source = write_gta5(tmp_path / "gta5")
    inter = write_gta5(tmp_path / "inter", count=2, labels=False)
    ds = GTA5Dataset(inter, label_root=source)
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[1]["label"].numpy(), expected(TRAIN_IDS, 1))
    with pytest.raises(CirnError, match=f"{inter} has images/ but no labels/.*label_root"):
        GTA5Dataset(inter)
    assert "label" not in GTA5Dataset(inter, with_labels=False)[0]
    with pytest.raises(CirnError, match=f"{tmp_path / 'nope' / 'labels'} does not exist"):
        GTA5Dataset(inter, label_root=tmp_path / "nope")


def test_source_list_file_and_errors(tmp_path):
    root = write_gta5(tmp_path / "gta5")
    lst = tmp_path / "list.txt"
    lst.write_text("00003.png\n00001\n")
    assert [s[0] for s in GTA5Dataset(root, list_file=lst).samples] == ["00003", "00001"]
    lst.write_text("00009.png\n")
    with pytest.raises(CirnError, match=f"{lst}.*{root / 'images' / '00009.png'}"):
        GTA5Dataset(root, list_file=lst)
    (root / "labels" / "00002.png").unlink()
    with pytest.raises(CirnError, match=f"{root / 'images' / '00002.png'} has no label: expected "
                                        f"{root / 'labels' / '00002.png'}"):
        GTA5Dataset(root)
    with pytest.raises(CirnError, match=f"{tmp_path / 'missing'} does not exist.*GTA5 layout"):
        GTA5Dataset(tmp_path / "missing")
    (tmp_path / "empty" / "RGB").mkdir(parents=True)
    (tmp_path / "empty" / "GT" / "LABELS").mkdir(parents=True)
    with pytest.raises(CirnError, match=f"no images in {tmp_path / 'empty' / 'RGB'}.*SYNTHIA layout"):
        SynthiaDataset(tmp_path / "empty")
    with pytest.raises(CirnError, match=f"{tmp_path / 'gta5' / 'RGB'} does not exist"):
        SynthiaDataset(root)


# ---------------------------------------------------------------- DataConfig -> datasets
def test_builders_translate_the_config(tmp_path, cityscapes):
    source = write_gta5(tmp_path / "gta5")
    inter = write_gta5(tmp_path / "inter", count=2, labels=False)
    cfg = DataConfig(source="gta5", source_root=str(source), target="cityscapes", target_root=str(cityscapes),
                     source_size_wh=(16, 8), target_size_wh=(16, 8), flip=False, max_val_images=1)
    src = build_source_dataset(cfg, "caffe")
    assert isinstance(src, GTA5Dataset) and len(src) == 3 and src.normalization == "caffe"
    assert src[0]["image"].shape == (3, 8, 16) and src[0]["label"].shape == (8, 16)
    trg = build_target_dataset(cfg)
    assert "label" not in trg[0] and [s[0].split("/")[0] for s in trg.samples] == ["aachen", "bremen"]
    assert "label" in build_train_dataset(cfg, "target")[0]
    val = build_val_dataset(cfg)
    assert len(val) == 1 and val[0]["image"].shape == (3, 8, 16) and val[0]["label"].shape == (H, W)
    cfg = dataclasses.replace(cfg, intermediate_root=str(inter))
    assert len(build_train_dataset(cfg, "source")) == 2
    assert len(build_source_dataset(cfg, intermediate=False)) == 3
    synthia = DataConfig(source="synthia", source_root=str(write_synthia(tmp_path / "synthia")))
    assert isinstance(build_source_dataset(synthia), SynthiaDataset)


def test_builders_need_roots_for_real_datasets():
    with pytest.raises(CirnError, match="--source-root"):
        build_source_dataset(DataConfig(source="gta5"))
    with pytest.raises(CirnError, match="--target-root"):
        build_val_dataset(DataConfig(target="cityscapes"))


def test_builders_default_to_the_toy_domains(tmp_path, cityscapes, monkeypatch):
    source = write_gta5(tmp_path / "gta5")
    looks = []

    def ensure_toy(root=None, seed=0, fmt="gta5", look="camera"):
        looks.append(look)
        return types.SimpleNamespace(root=tmp_path, gta5=source, synthia=None, cityscapes=cityscapes)

    toy = types.ModuleType("cirn.train.toy")
    toy.ensure_toy = ensure_toy
    monkeypatch.setitem(sys.modules, "cirn.train.toy", toy)
    cfg = DataConfig()
    assert build_source_dataset(cfg).samples[0][1] == source / "images" / "00001.png"
    assert len(build_val_dataset(cfg)) == 2
    assert looks == ["camera", "camera"]

    dusk = DataConfig(toy_look="dusk")
    build_source_dataset(dusk)
    build_val_dataset(dusk)
    build_val_dataset(DataConfig(toy_look="dusk", target_root=str(cityscapes)))  # a dataset root: no toy data
    assert looks == ["camera", "camera", "dusk", "dusk"]


# ---------------------------------------------------------------- infinite loader
def names_of(batches):
    return [tuple(b["name"]) for b in batches]


def test_infinite_loader_epochs_and_exact_resume(tmp_path):
    ds = GTA5Dataset(write_gta5(tmp_path / "gta5"), flip=True)
    loader = infinite_loader(ds, batch_size=2, seed=5)
    reference = [next(loader) for _ in range(6)]  # 12 samples = 4 epochs of 3
    stream = [n for batch in names_of(reference) for n in batch]
    epochs = [stream[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(e) == ["00001", "00002", "00003"] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled
    assert loader.state_dict() == {"seed": 5, "position": 12} and loader.epoch == 4

    first = infinite_loader(ds, batch_size=2, seed=5)
    for _ in range(2):
        next(first)
    torch.manual_seed(123)  # resuming must not depend on the global RNG
    resumed = infinite_loader(ds, batch_size=2, seed=0, state=first.state_dict())
    for want in reference[2:]:
        got = next(resumed)
        assert got["name"] == want["name"]
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
    other = infinite_loader(ds, batch_size=2, seed=6)
    assert names_of(next(other) for _ in range(6)) != names_of(reference)


def test_infinite_loader_same_stream_with_a_worker(tmp_path):
    ds = GTA5Dataset(write_gta5(tmp_path / "gta5"), flip=True)
    main, worker = infinite_loader(ds, 4, seed=1), infinite_loader(ds, 4, seed=1, num_workers=1)
    for _ in range(2):  # batch larger than the dataset: the stream wraps across epochs
        a, b = next(main), next(worker)
        assert a["name"] == b["name"] and torch.equal(a["image"], b["image"])
    assert main.state_dict()["position"] == 8


def test_infinite_loader_leaves_the_global_rng_alone(tmp_path):
    ds = GTA5Dataset(write_gta5(tmp_path / "gta5"), flip=True)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    loader = infinite_loader(ds, 2, seed=0)
    next(loader)
    next(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_infinite_loader_loads_state_mid_stream(tmp_path):
    ds = GTA5Dataset(write_gta5(tmp_path / "gta5"))
    a, b = infinite_loader(ds, 1, seed=2), infinite_loader(ds, 1, seed=2)
    names = [next(a)["name"] for _ in range(5)]
    next(b)
    b.load_state_dict({"seed": 2, "position": 3})
    assert [next(b)["name"], next(b)["name"]] == names[3:5]
    assert datasets.InfiniteLoader(ds, 1).epoch == 0
