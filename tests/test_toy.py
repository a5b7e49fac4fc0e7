"""The procedural toy domain pair: layouts, label ids, class coverage, determinism, reruns, errors and the CLI."""
import hashlib
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cirn.cli import data_main
from cirn.train import toy
from cirn.common.errors import CirnError
from cirn.train.io import read_image, read_label
from cirn.train.labels import (CITYSCAPES_LABEL_IDS, LABELID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID, SYNTHIA_TO_TRAINID,
                               colorize)

TINY = dict(num_source=4, num_train=3, num_val=2, source_size_wh=(64, 36), target_size_wh=(64, 32))
THINGS = {11, 12, 13, 14, 15, 16, 17, 18}  # person ... bicycle: the classes with instance ids


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 images per domain at the default sizes, both source layouts; shared by the read-only tests."""
    root = tmp_path_factory.mktemp("toy")
    toy.generate(root, fmt="both", num_source=40, num_train=32, num_val=8, workers=2)
    return root


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def digests(root):
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files(root) if name != "toy.json"}


def cityscapes_names(split, cities, count):
    stems = [f"{split}/{cities[i % len(cities)]}/{cities[i % len(cities)]}_{i // len(cities):06d}_000019"
             for i in range(count)]
    return ([f"cityscapes/leftImg8bit/{s}_leftImg8bit.png" for s in stems]
            + [f"cityscapes/gtFine/{s}_gtFine_{kind}.png" for s in stems for kind in ("labelIds", "color")])


def test_layouts_hold_exactly_the_expected_files(dataset):
    expected = ["toy.json"]
    expected += [f"gta5/{folder}/{i:05d}.png" for folder in ("images", "labels") for i in range(1, 41)]
    expected += [f"synthia/{folder}/{i:07d}.png" for folder in ("RGB", "GT/LABELS") for i in range(40)]
    expected += cityscapes_names("train", ("toytown", "pixelburg"), 32) + cityscapes_names("val", ("valley",), 8)
    assert files(dataset) == sorted(expected)

    manifest = json.loads((dataset / "toy.json").read_text())
    assert manifest["seed"] == 0 and manifest["format"] == "both" and manifest["version"] == toy.GENERATOR_VERSION
    assert manifest["gta5"] == {"images": 40, "size": [320, 180]}
    assert manifest["synthia"] == {"images": 40, "size": [320, 190]}
    assert (manifest["cityscapes"]["train"], manifest["cityscapes"]["val"]) == (32, 8)

    assert read_image(dataset / "gta5/images/00001.png").shape == (180, 320, 3)
    assert read_image(dataset / "synthia/RGB/0000000.png").shape == (190, 320, 3)
    stem = "cityscapes/leftImg8bit/val/valley/valley_000000_000019_leftImg8bit.png"
    assert read_image(dataset / stem).shape == (128, 256, 3)


def test_gta5_labels_are_palette_pngs_of_cityscapes_label_ids(dataset):
    with Image.open(dataset / "gta5/labels/00001.png") as img:
        assert img.mode == "P"
        assert tuple(img.getpalette()[7 * 3:7 * 3 + 3]) == (128, 64, 128)  # labelId 7, road
    for i in range(1, 41):
        ids = read_label(dataset / f"gta5/labels/{i:05d}.png")
        assert ids.shape == (180, 320)
        assert set(np.unique(ids)) <= set(CITYSCAPES_LABEL_IDS) | {0}


def test_synthia_labels_are_16_bit_with_class_and_instance_ids(dataset):
    raw = cv2.imread(str(dataset / "synthia/GT/LABELS/0000000.png"), cv2.IMREAD_UNCHANGED)  # BGR order
    assert raw.dtype == np.uint16 and raw.shape == (190, 320, 3)
    assert set(np.unique(raw[..., 2])) <= set(SYNTHIA_ID_TO_TRAINID) | {0}
    assert not raw[..., 0].any()
    rgb = read_label(dataset / "synthia/GT/LABELS/0000000.png", unchanged=True)
    np.testing.assert_array_equal(rgb[..., 0], raw[..., 2])
    for i in range(40):
        gt = read_label(dataset / f"synthia/GT/LABELS/{i:07d}.png", unchanged=True)
        with_instance = SYNTHIA_TO_TRAINID[gt[..., 0]][gt[..., 1] > 0]
        assert with_instance.size and set(np.unique(with_instance)) <= THINGS  # only things carry instance ids


def test_cityscapes_labels_and_colours_agree_and_the_bonnet_is_ignored(dataset):
    stem = "cityscapes/gtFine/train/toytown/toytown_000003_000019_gtFine"
    ids = read_label(dataset / f"{stem}_labelIds.png")
    assert ids.shape == (128, 256) and ids.dtype == np.uint8
    assert set(np.unique(ids)) <= set(CITYSCAPES_LABEL_IDS) | {0}
    assert (ids[-1] == 0).all()  # the ego car's bonnet along the bottom edge
    np.testing.assert_array_equal(read_image(f"{dataset / stem}_color.png"), colorize(LABELID_TO_TRAINID[ids]))


def test_every_class_appears_in_each_domain(dataset):
    source = set()
    for path in (dataset / "gta5/labels").glob("*.png"):
        source |= set(LABELID_TO_TRAINID[np.unique(read_label(path))].tolist())
    synthia = set()
    for path in (dataset / "synthia/GT/LABELS").glob("*.png"):
        synthia |= set(SYNTHIA_TO_TRAINID[np.unique(read_label(path, unchanged=True)[..., 0])].tolist())
    target = set()
    for path in (dataset / "cityscapes/gtFine").rglob("*_labelIds.png"):
        target |= set(LABELID_TO_TRAINID[np.unique(read_label(path))].tolist())
    assert source - {255} == set(range(19))
    assert synthia - {255} == set(range(19))
    assert target - {255} == set(range(19))


def test_the_domain_gap_is_real_and_colour_matching_narrows_it(dataset):
    """A nearest-class-mean colour classifier: fitted on the source it scores far below one fitted on the target."""
    def pixels(pairs):
        x = np.concatenate([image.reshape(-1, 3) for image, _ in pairs]).astype(np.float32)
        y = np.concatenate([labels.reshape(-1) for _, labels in pairs])
        return x[y < 19], y[y < 19]

    def load(images, labels):
        return [(read_image(i), LABELID_TO_TRAINID[read_label(lab)]) for i, lab in zip(images, labels, strict=True)]

    def miou(train, x_val, y_val):
        x, y = pixels(train)
        means = np.stack([x[y == c].mean(0) if (y == c).any() else np.full(3, 1e6) for c in range(19)])
        pred = ((x_val[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        cm = np.bincount(y_val * 19 + pred, minlength=361).reshape(19, 19)
        iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
        return iou[cm.sum(1) > 0].mean()

    source = load(sorted((dataset / "gta5/images").glob("*.png")), sorted((dataset / "gta5/labels").glob("*.png")))
    city = dataset / "cityscapes"
    target = {split: load(sorted((city / "leftImg8bit" / split).rglob("*.png")),
                          sorted((city / "gtFine" / split).rglob("*_labelIds.png"))) for split in ("train", "val")}
    x_val, y_val = pixels(target["val"])
    reference = np.concatenate([image.reshape(-1, 3) for image, _ in target["train"]]).astype(np.float32)
    mean, std = reference.mean(0), reference.std(0)
    matched = [((im - im.reshape(-1, 3).mean(0)) / im.reshape(-1, 3).std(0) * std + mean, lab) for im, lab in source]

    source_only, colour_matched, oracle = (miou(train, x_val, y_val) for train in (source, matched, target["train"]))
    assert source_only < 0.5 * oracle
    assert source_only < colour_matched < oracle


def test_same_seed_gives_the_same_bytes_whatever_the_workers(tmp_path):
    toy.generate(tmp_path / "a", fmt="both", workers=1, **TINY)
    toy.generate(tmp_path / "b", fmt="both", workers=2, **TINY)
    toy.generate(tmp_path / "c", fmt="both", seed=1, workers=2, **TINY)
    a, b, c = (digests(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if "/images/" in name or "leftImg8bit" in name)


def test_a_rerun_is_skipped_and_a_change_regenerates_and_prunes(tmp_path):
    first = toy.generate(tmp_path, workers=1, **TINY)
    stamp = (tmp_path / "gta5/images/00001.png").stat().st_mtime_ns
    assert "already complete" in toy.generate(tmp_path, workers=1, **TINY)
    assert (tmp_path / "gta5/images/00001.png").stat().st_mtime_ns == stamp
    assert "already complete" not in first

    toy.generate(tmp_path, workers=1, **{**TINY, "num_source": 2})
    assert files(tmp_path / "gta5/images") == ["00001.png", "00002.png"]
    assert json.loads((tmp_path / "toy.json").read_text())["gta5"]["images"] == 2


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    real = toy.dataset._render_task
    calls = []

    def crash_after_three(job, task):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task)
        real(job, task)

    monkeypatch.setattr(toy.dataset, "_render_task", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        toy.generate(tmp_path, workers=1, **TINY)
    assert not (tmp_path / "toy.json").exists()
    monkeypatch.setattr(toy.dataset, "_render_task", real)
    summary = toy.generate(tmp_path, workers=1, **TINY)
    total = TINY["num_source"] + TINY["num_train"] + TINY["num_val"]
    assert f"{total - 3} images rendered" in summary
    assert (tmp_path / "toy.json").exists() and not (tmp_path / "toy.partial").exists()


def test_adding_the_synthia_layout_keeps_the_rest(tmp_path):
    toy.generate(tmp_path, workers=1, **TINY)
    before = digests(tmp_path)
    summary = toy.generate(tmp_path, fmt="synthia", workers=1, **TINY)
    assert f"{TINY['num_source']} images rendered" in summary
    after = digests(tmp_path)
    assert {name: after[name] for name in before} == before
    assert json.loads((tmp_path / "toy.json").read_text())["format"] == "both"


@pytest.mark.parametrize("bad", [
    {"num_source": 0}, {"num_train": -1}, {"num_val": 1.5}, {"source_size_wh": (16, 9)}, {"target_size_wh": (256,)},
    {"target_size_wh": (64, 10000)}, {"fmt": "png"}, {"seed": -1}, {"workers": 0},
])
def test_bad_arguments_raise_a_clear_error(tmp_path, bad):
    with pytest.raises(CirnError):
        toy.generate(tmp_path / "out", **{**TINY, **bad})
    assert not (tmp_path / "out").exists()


def test_refuses_to_write_over_a_dataset_it_did_not_make(tmp_path):
    (tmp_path / "cityscapes/leftImg8bit").mkdir(parents=True)
    with pytest.raises(CirnError, match="not a toy dataset"):
        toy.generate(tmp_path, **TINY)


def test_default_root_follows_cirn_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRN_DATA", str(tmp_path))
    assert toy.default_root() == tmp_path / "toy"
    assert toy.default_root(3) == tmp_path / "toy-seed3"
    monkeypatch.delenv("CIRN_DATA")
    assert str(toy.default_root()).endswith(".cache/cirn/toy")


def test_ensure_toy_generates_on_first_use_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRN_DATA", str(tmp_path))
    real = toy.generate
    monkeypatch.setattr(toy.dataset, "generate", lambda root, **kwargs: real(root, **{**kwargs, **TINY, "workers": 1}))
    paths = toy.ensure_toy()
    assert "generating the toy dataset" in capsys.readouterr().err
    assert paths == toy.ToyPaths(tmp_path / "toy", tmp_path / "toy/gta5", None, tmp_path / "toy/cityscapes")
    assert (paths.gta5 / "images/00001.png").exists()

    assert toy.ensure_toy() == paths
    assert capsys.readouterr().err == ""

    with_synthia = toy.ensure_toy(fmt="synthia")
    assert with_synthia.synthia == tmp_path / "toy/synthia" and with_synthia.gta5 == paths.gta5
    assert (with_synthia.synthia / "GT/LABELS/0000000.png").exists()


def test_render_frame_drives_down_the_street():
    scene = toy.sample_scene(np.random.default_rng(0), "target")
    here = toy.render_frame(scene, (96, 48), "source", instances=True)
    ahead = toy.render_frame(scene, (96, 48), "source", camera_forward=10.0)
    assert here.image.shape == (48, 96, 3) and here.labels.shape == (48, 96) and here.instances.shape == (48, 96)
    assert ahead.instances is None
    assert not np.array_equal(here.labels, ahead.labels)
    assert set(np.unique(here.labels)) <= set(range(19))
    with pytest.raises(CirnError):
        toy.render_frame(scene, (96, 48), "cartoon")


def test_cli_renders_a_small_pair(tmp_path):
    out = tmp_path / "toy"
    args = ["toy", "--out", str(out), "--num-source", "4", "--num-train", "3", "--num-val", "2", "--workers", "1"]
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 0, result.output
    assert "gta5" in result.output and (out / "toy.json").exists()
    assert (out / "gta5/images/00004.png").exists()

    result = CliRunner().invoke(data_main, ["toy", "--out", str(tmp_path / "bad"), "--num-source", "0"])
    assert result.exit_code == 2 and "error: num_source" in result.output
