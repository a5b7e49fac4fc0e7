"""Your own domains (issue #17): a folder source with label maps, a folder or video target, label-free checkpoint
selection, Table 4 without target labels. Label files are written in the exact formats of the tools that make them."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cirn.cli import data_main, train_main
from cirn.common.errors import CirnError
from cirn.train import labels as L
from cirn.train.config import load_config
from cirn.train.datasets import FolderDataset, build_target_dataset, build_val_dataset
from cirn.train.io import read_label, write_png
from cirn.train.labelmaps import BUILTIN, UncoveredTally, load_label_map
from cirn.train.selection import criterion_value, rank_correlation, selection_subset

from test_bad_inputs import assert_one_error_line
from test_faults_runtime import corrupt_video

FIVE_CLASSES = {"road": [128, 64, 128], "sidewalk": [244, 35, 232], "building": [70, 70, 70],
                "vegetation": [107, 142, 35], "car": [0, 0, 142]}


def carla_raw(tags, instance=0x1234):
    """A CARLA >= 0.9.14 raw semantic image: (H, W, 3) uint8 RGB, the tag in R, an instance id in G (low) and B."""
    raw = np.zeros((*np.shape(tags), 3), np.uint8)
    raw[..., 0], raw[..., 1], raw[..., 2] = tags, instance & 255, instance >> 8
    return raw


def five_class_map(path):
    """A YAML map over CARLA tags onto an own 5-class set (everything unlisted is uncovered, but tag 0)."""
    path.write_text(yaml.safe_dump({"read": "red", "classes": FIVE_CLASSES,
                                    "map": {0: "ignore", 1: "road", 24: "road", 2: "sidewalk", 3: "building",
                                            9: "vegetation", 14: "car"}}, sort_keys=False))
    return path


# ---------------------------------------------------------------- built-in maps on exact-format files
def test_carla_tags_in_the_red_channel_with_instance_ids_in_green_and_blue(tmp_path):
    tags = np.array([[1, 7, 14, 19], [0, 20, 28, 11]], np.uint8)
    write_png(tmp_path / "l.png", carla_raw(tags))
    trainids = BUILTIN["carla"].read_trainids(tmp_path / "l.png")
    np.testing.assert_array_equal(trainids, [[0, 6, 13, 18], [255, 255, 255, 10]])  # 1..19 -> 0..18, 0/20-28 none


def test_carla_as_saved_by_the_simulator_bgra(tmp_path):
    """carla.Image.save_to_disk writes the raw BGRA buffer: a 4-channel PNG whose red channel is the tag."""
    import cv2
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., 2] = [[1, 2, 3], [12, 13, 26]]  # R in BGRA order
    bgra[..., 1], bgra[..., 0], bgra[..., 3] = 7, 9, 255
    cv2.imwrite(str(tmp_path / "raw.png"), bgra)
    tally = UncoveredTally("carla")
    np.testing.assert_array_equal(BUILTIN["carla"].read_trainids(tmp_path / "raw.png", tally),
                                  [[0, 1, 2], [11, 12, 255]])
    assert tally.summary() == {}


def test_carla_legacy_tags(tmp_path):
    tags = np.array([[7, 6, 10, 22, 1, 13, 3, 0, 18, 4, 8, 11]], np.uint8)
    write_png(tmp_path / "l.png", carla_raw(tags))
    # Road and RoadLine -> road, Vehicles -> car (ours), Terrain, Building, Sky; Other and Unlabeled ignored.
    np.testing.assert_array_equal(BUILTIN["carla-legacy"].read_trainids(tmp_path / "l.png"),
                                  [[0, 0, 13, 9, 2, 10, 255, 255, 6, 11, 1, 3]])


def test_palette_png_and_uncovered_colours_reported_once(tmp_path, capsys):
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = L.PALETTE[0], L.PALETTE[13], L.PALETTE[10]
    rgb[1, :2] = (1, 2, 3)  # no Cityscapes colour
    write_png(tmp_path / "c.png", rgb)
    tally = UncoveredTally("palette")
    trainids = BUILTIN["palette"].read_trainids(tmp_path / "c.png", tally)
    np.testing.assert_array_equal(trainids, [[0, 13, 10, 255], [255, 255, 255, 255]])  # black: unlabelled
    BUILTIN["palette"].read_trainids(tmp_path / "c.png", tally)
    assert capsys.readouterr().err.count("does not cover value 1,2,3 (25.00%") == 1  # once, with its share
    assert tally.summary() == {"1,2,3": 25.0}


def test_cityscapes_trainids_gta5_and_synthia_maps(tmp_path):
    ids = np.array([[7, 26, 0, 33]], np.uint8)
    write_png(tmp_path / "cs.png", ids)
    np.testing.assert_array_equal(BUILTIN["cityscapes"].read_trainids(tmp_path / "cs.png"), [[0, 13, 255, 18]])
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette(bytes(range(256)) * 3)
    palette.save(tmp_path / "gta5.png")  # GTA5: the palette indices are the labelIds
    np.testing.assert_array_equal(BUILTIN["gta5"].read_trainids(tmp_path / "gta5.png"), [[0, 13, 255, 18]])
    write_png(tmp_path / "t.png", np.array([[0, 18, 255]], np.uint8))
    np.testing.assert_array_equal(BUILTIN["trainids"].read_trainids(tmp_path / "t.png"), [[0, 18, 255]])
    synthia = np.zeros((1, 3, 3), np.uint16)
    synthia[..., 0], synthia[..., 1] = [3, 8, 13], 500  # road, car, lane marking (no trainId); instance in G
    write_png(tmp_path / "s.png", synthia)
    np.testing.assert_array_equal(BUILTIN["synthia"].read_trainids(tmp_path / "s.png"), [[0, 13, 255]])


def test_a_colour_label_is_refused_by_a_value_map(tmp_path):
    write_png(tmp_path / "c.png", carla_raw(np.ones((2, 2), np.uint8)))
    with pytest.raises(CirnError, match="c.png is a colour image.*read: red"):
        BUILTIN["cityscapes"].read_trainids(tmp_path / "c.png")


def test_yaml_map_with_its_own_classes(tmp_path):
    label_map = load_label_map(five_class_map(tmp_path / "five.yaml"))
    assert label_map.class_names == tuple(FIVE_CLASSES) and label_map.own_classes
    np.testing.assert_array_equal(label_map.palette, list(FIVE_CLASSES.values()))
    trainids, uncovered = label_map.to_trainids(np.array([[1, 24, 14, 0, 5, 5]]))
    np.testing.assert_array_equal(trainids, [[0, 0, 4, 255, 255, 255]])
    assert uncovered == {5: 2}
    colours = tmp_path / "rgb.yaml"
    colours.write_text('read: rgb\nmap:\n  "128,64,128": road\n  "0,0,142": car\n  "0,0,0": ignore\n')
    assert load_label_map(colours).table == {(128, 64, 128): 0, (0, 0, 142): 13, (0, 0, 0): 255}


# ---------------------------------------------------------------- a folder source
@pytest.fixture(scope="module")
def carla_toy(tmp_path_factory):
    """The toy source in the CARLA layout (cirn-data toy --format carla) beside a small toy target."""
    from cirn.train import toy
    root = tmp_path_factory.mktemp("carla-toy")
    toy.generate(root, fmt="carla", num_source=6, num_train=6, num_val=4, workers=1)
    return root


def test_folder_source_pairs_by_relative_path_and_names_what_is_missing(tmp_path):
    for name in ("town1/a", "town2/a"):
        write_png(tmp_path / "src" / "images" / f"{name}.png", np.zeros((8, 8, 3), np.uint8))
        write_png(tmp_path / "src" / "labels" / f"{name}.png", carla_raw(np.full((8, 8), 14, np.uint8)))
    dataset = FolderDataset(tmp_path / "src", BUILTIN["carla"])
    assert [s[0] for s in dataset.samples] == ["town1/a", "town2/a"] and int(dataset[1]["label"].max()) == 13
    write_png(tmp_path / "src" / "images" / "town2" / "b.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(CirnError, match=r"image .*town2/b.jpg has no label: expected .*labels/town2/b.png"):
        FolderDataset(tmp_path / "src", BUILTIN["carla"])
    (tmp_path / "src" / "images" / "town2" / "b.jpg").unlink()
    write_png(tmp_path / "src" / "labels" / "c.png", carla_raw(np.ones((8, 8), np.uint8)))
    with pytest.raises(CirnError, match=r"label .*labels/c.png has no image"):
        FolderDataset(tmp_path / "src", BUILTIN["carla"])


def test_toy_in_the_carla_layout_reads_as_the_gta5_one(carla_toy):
    from cirn.train import toy
    from cirn.train.datasets import GTA5Dataset
    toy.generate(carla_toy, fmt="gta5", num_source=6, num_train=6, num_val=4, workers=1)
    carla, gta5 = FolderDataset(carla_toy / "carla", BUILTIN["carla"]), GTA5Dataset(carla_toy / "gta5")
    raw = read_label(carla.samples[0][2], unchanged=True)
    assert raw.shape[-1] == 3 and raw[..., 1:].any()  # instance ids in G/B
    for i in range(len(gta5)):
        assert (carla[i]["image"] == gta5[i]["image"]).all() and (carla[i]["label"] == gta5[i]["label"]).all()


def test_uncovered_values_of_loader_workers_reach_the_main_process_reported_once(carla_toy, tmp_path, capsys):
    from cirn.train.datasets import infinite_loader
    five = load_label_map(five_class_map(tmp_path / "five.yaml"))
    summaries = []
    for workers in (0, 2):
        dataset = FolderDataset(carla_toy / "carla", five)
        loader = infinite_loader(dataset, batch_size=2, num_workers=workers)
        batches = [next(loader) for _ in range(3)]  # one epoch: each of the 6 labels read once
        assert all("uncovered_labels" not in b for b in batches)
        summaries.append(dataset.uncovered.summary())
        warnings = [line for line in capsys.readouterr().err.splitlines() if "does not cover value" in line]
        assert len(warnings) == len(summaries[-1]) > 0  # each value once, whichever process read it
    assert summaries[0] == pytest.approx(summaries[1])


def test_folder_edge_cases(tmp_path):
    """Two files of one name are refused; a target folder's labels/ and gtFine/ sub-folders, and the --target-val
    folder inside it, are never training images."""
    from cirn.train.datasets import ImageFolderDataset
    for name in ("a.png", "a.jpg"):
        write_png(tmp_path / "src" / "images" / name, np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "src" / "labels" / "a.png", carla_raw(np.ones((8, 8), np.uint8)))
    with pytest.raises(CirnError, match=r"images/a.jpg and .*images/a.png share the name 'a'"):
        FolderDataset(tmp_path / "src", BUILTIN["carla"])
    footage = tmp_path / "footage"
    for name in ("drive/f1", "labels/f1", "drive/gtFine/f2", "val/images/f3", "val/labels/f3"):
        write_png(footage / f"{name}.png", np.zeros((8, 8, 3), np.uint8))
    assert [s[0] for s in ImageFolderDataset(footage).samples] == ["drive/f1", "val/images/f3"]
    assert [s[0] for s in ImageFolderDataset(footage, exclude=footage / "val").samples] == ["drive/f1"]


def test_cityscapes_void_colours_are_ignored_not_uncovered(tmp_path):
    from cirn.train.labelmaps import CITYSCAPES_VOID_COLOURS
    rgb = np.array([CITYSCAPES_VOID_COLOURS + [tuple(L.PALETTE[0])]], np.uint8)
    write_png(tmp_path / "c.png", rgb)
    trainids, uncovered = BUILTIN["palette"].to_trainids(BUILTIN["palette"].raw(tmp_path / "c.png"))
    assert uncovered == {} and trainids.tolist() == [[255] * len(CITYSCAPES_VOID_COLOURS) + [0]]


def test_an_own_class_set_of_more_than_19_is_scored_whole():
    from cirn.train.evaluate import protocol_classes
    assert protocol_classes(19, 25) == list(range(25)) and protocol_classes(19, 5) == list(range(5))
    assert protocol_classes(16, 19) == list(L.PROTOCOLS[16])


def test_relative_paths_are_saved_absolute(carla_toy, tmp_path, monkeypatch):
    """A run's config.yaml (and its checkpoints) name its data by absolute paths: export, resume and eval may run
    from another directory."""
    from cirn.train.config import resolve_run
    five_class_map(tmp_path / "five.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = resolve_run(tmp_path / "run", "smoke", updates={"data": {
        "source": "folder", "source_root": str(carla_toy / "carla"), "label_map": "five.yaml"}})
    assert cfg.data.label_map == str(tmp_path / "five.yaml") and cfg.model.num_classes == 5
    assert resolve_run(tmp_path / "run", "smoke", updates={"data": {"label_map": "carla"}}).data.label_map == "carla"


# ---------------------------------------------------------------- a video target
def test_video_target_with_a_corrupt_frame_follows_bad_frames(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRN_DATA", str(tmp_path / "cache"))
    video = corrupt_video(tmp_path, bad=4, count=10)
    cfg = load_config("smoke", overrides=["data.target=video", f"data.target_root={video}", "data.frame_stride=2"])
    dataset = build_target_dataset(cfg.data)
    assert [s[0] for s in dataset.samples] == [f"glitch/glitch_000000_{k:06d}" for k in (0, 2, 6, 8)]
    assert "undecodable frames were left out" in capsys.readouterr().err
    again = build_target_dataset(cfg.data)  # decoded once: the cache is reused
    assert again.samples == dataset.samples and "decoded once" not in capsys.readouterr().err
    stop = load_config(None, overrides=["data.bad_frames=stop"], base=cfg)
    assert len(build_target_dataset(stop.data).samples) == 2  # frames 0 and 2, then the end
    fail = load_config(None, overrides=["data.bad_frames=fail"], base=cfg)
    with pytest.raises(CirnError, match="frame 4 .*could not be decoded"):
        build_target_dataset(fail.data)


def test_a_folder_of_videos_keeps_their_folders_in_the_frame_names(tmp_path, monkeypatch):
    from cirn.train import toy
    monkeypatch.setenv("CIRN_DATA", str(tmp_path / "cache"))
    for day in ("day1", "day2"):
        (tmp_path / "videos" / day).mkdir(parents=True)
        toy.render_video(tmp_path / "videos" / day / "cam.mp4", frames=2, size_wh=(64, 32))
    cfg = load_config("smoke", overrides=["data.target=video", f"data.target_root={tmp_path / 'videos'}",
                                          "data.frame_stride=1"])
    names = [s[0] for s in build_target_dataset(cfg.data, quiet=True).samples]
    assert names == [f"{day}/cam/cam_000000_{k:06d}" for day in ("day1", "day2") for k in (0, 1)]


# ---------------------------------------------------------------- label-free selection
def test_rank_correlation_and_criteria():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert rank_correlation([1, 1, 2], [3, 3, 5]) == pytest.approx(1.0)  # ties share their rank
    assert np.isnan(rank_correlation([1, 2, 3], [5, 5, 5]))
    scores = {"entropy": 0.5, "disagreement": 0.01, "flip": 0.9}
    assert criterion_value("entropy", scores, 7) == -0.5 and criterion_value("flip", scores, 7) == 0.9
    assert criterion_value("last", scores, 7) == 7
    assert selection_subset(range(10), 4) == [0, 3, 6, 9] and selection_subset(range(3), 50) == [0, 1, 2]


def _own_footage(root, toy_root):
    """The toy target's train images as a plain folder of frames, and its val split as a labelled folder
    (images/ + labels/ with CARLA-style tags, trainId + 1, in the red channel)."""
    import shutil
    frames, val = root / "frames", root / "val"
    shutil.copytree(toy_root / "cityscapes" / "leftImg8bit" / "train", frames)
    (val / "images").mkdir(parents=True)
    for path in sorted((toy_root / "cityscapes" / "leftImg8bit" / "val").rglob("*.png")):
        name = path.name.replace("_leftImg8bit.png", "")
        shutil.copy(path, val / "images" / f"{name}.png")
        label = toy_root / "cityscapes" / "gtFine" / "val" / path.parent.name / f"{name}_gtFine_labelIds.png"
        trainids = L.LABELID_TO_TRAINID[read_label(label)].astype(np.int16)
        write_png(val / "labels" / f"{name}.png", carla_raw(np.where(trainids == 255, 0, trainids + 1)))
    return frames, val


def test_own_five_classes_through_training_export_and_an_overlay(carla_toy, tmp_path):
    """A YAML map with its own 5 classes: the model, the scores, the export metadata and the overlay follow it."""
    frames, val = _own_footage(tmp_path, carla_toy)
    five = five_class_map(tmp_path / "five.yaml")
    out = tmp_path / "so"
    result = CliRunner().invoke(train_main, [
        "source-only", "--preset", "smoke", "--out", str(out), "--quiet", "--source", "folder", "--source-root",
        str(carla_toy / "carla"), "--label-map", str(five), "--target", "folder", "--target-root", str(frames),
        "--target-val", str(val)])
    assert result.exit_code == 0, result.output
    state = __import__("torch").load(out / "best.pt", weights_only=True)
    assert state["config"]["model"]["class_names"] == list(FIVE_CLASSES) and state["model_meta"]["num_classes"] == 5
    assert list(state["per_class"]) == list(FIVE_CLASSES) and state["select"] == "miou"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["uncovered_labels"]) and all(0 < v < 100 for v in summary["uncovered_labels"].values())

    from cirn.export import export_checkpoint, read_metadata
    from cirn.runtime import open_backend, run
    export_checkpoint(out / "best.pt", out / "export", exporter="torchscript", parity_images=2)
    meta = read_metadata(out / "export" / "model.onnx")
    assert meta["class_names"] == list(FIVE_CLASSES) and meta["palette"] == list(FIVE_CLASSES.values())
    backend = open_backend(out / "export" / "model.onnx", "onnxruntime", "cpu")
    info = run(str(val / "images"), backend, out=str(tmp_path / "overlay.mp4"), labels_dir=str(tmp_path / "pred"),
               quiet=True)
    assert info["frames"]["processed"] == 4 and (tmp_path / "overlay.mp4").stat().st_size > 0
    predicted = np.concatenate([read_label(p).ravel() for p in (tmp_path / "pred").rglob("*.png")])
    assert predicted.max() < 5

    from cirn.train.config import from_dict
    from cirn.train.pipeline import plot_examples  # all-stages' example grid, with the val labels of 5 classes
    plot_examples({"SO": out / "best.pt"}, from_dict(state["config"]), carla_toy / "carla", tmp_path / "ex.png")
    assert (tmp_path / "ex.png").stat().st_size > 0

    from cirn.runtime.outputs import overlay
    image, labels = np.full((32, 64, 3), 255, np.uint8), np.full((32, 64), 4, np.uint8)  # every pixel car
    shown = overlay(image, labels, backend.metadata.palette, alpha=1.0)
    assert tuple(shown[0, 0]) == tuple(FIVE_CLASSES["car"])


def test_no_target_label_is_read_without_target_val(carla_toy, tmp_path, monkeypatch):
    """All stages on a folder source and a video target: every row is written with label-free diagnostics, and no
    label file under the target (nor any mIoU) is read on the way. This fails if one is."""
    from cirn.train import evaluate, labelmaps, toy
    monkeypatch.setenv("CIRN_DATA", str(tmp_path / "cache"))
    clip = toy.render_video(tmp_path / "drive.mp4", frames=12, size_wh=(64, 32))  # its ground truth beside it
    read = []
    original = labelmaps.LabelMap.read_trainids

    def spy(self, path, tally=None):
        read.append(Path(path).resolve())
        return original(self, path, tally)

    monkeypatch.setattr(labelmaps.LabelMap, "read_trainids", spy)
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: pytest.fail("an mIoU was computed"))
    out = tmp_path / "all"
    result = CliRunner().invoke(train_main, [
        "all-stages", "--preset", "smoke", "--out", str(out), "--source", "folder", "--source-root",
        str(carla_toy / "carla"), "--label-map", "carla", "--target", "video", "--target-root", str(clip["video"]),
        "--quiet", "data.frame_stride=2"])
    assert result.exit_code == 0, result.output
    target_side = [p for p in read if Path(clip["root"]).resolve() in p.parents or "frames" in p.parts]
    pseudo = [p for p in read if "pseudo" in p.parts]
    assert not target_side and pseudo  # stage 3 reads its own pseudo labels, nothing of the target's
    assert "no target labels" in result.output
    ablation = json.loads((out / "ablation.json").read_text())
    assert ablation["labelled"] is False and list(ablation["rows"]) == ["SO", "CIR", "ASS", "CIR+ASS", "ASS+ST",
                                                                        "CIR+ASS+ST"]
    for row in ablation["rows"].values():
        assert row["miou"] is None and row["select"] == "last"
        assert set(row["label_free"]) == {"entropy", "disagreement", "flip"}
    assert not (out / "ablation.png").exists() and (out / "examples.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input: one error line each
def test_own_domain_bad_inputs_are_one_error_line(carla_toy, tmp_path):
    def train(*args):
        return CliRunner().invoke(train_main, ["source-only", "--preset", "smoke", "--out", str(tmp_path / "run"),
                                               *args])
    src = ["--source", "folder", "--source-root", str(carla_toy / "carla")]
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("read: red\nmap:\n  1: raod\n")
    assert_one_error_line(train(*src, "--label-map", str(unknown)), "maps 1 to 'raod', which is not a class")
    listed = tmp_path / "listed.yaml"
    listed.write_text("read: red\nmap:\n  1: [road]\n")
    assert_one_error_line(train(*src, "--label-map", str(listed)), "each value must be one class name")
    broken = tmp_path / "broken.yaml"
    broken.write_text("map: {1: road\n")
    assert_one_error_line(train(*src, "--label-map", str(broken)), "broken.yaml is not valid YAML")
    assert_one_error_line(train(*src, "--label-map", "carla-2"), "unknown label map 'carla-2'")
    assert_one_error_line(train(*src), "needs a label map")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    assert_one_error_line(train("--source", "folder", "--source-root", str(tmp_path / "empty"), "--label-map",
                                "carla"), "holds no image/label pairs")
    (tmp_path / "nothing").mkdir()
    folder = [*src, "--label-map", "carla", "--target", "folder", "--target-root", str(tmp_path / "nothing")]
    assert_one_error_line(train(*folder), "holds no images")
    assert_one_error_line(train(*folder[:-3], "video", "--target-root", str(tmp_path / "nothing")), "holds no videos")
    (tmp_path / "val" / "images").mkdir(parents=True)
    write_png(tmp_path / "val" / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert_one_error_line(train(*src, "--label-map", "carla", "--target-val", str(tmp_path / "val")),
                          "labels does not exist")
    assert not (tmp_path / "run").exists()


def test_cirn_data_toy_carla_format(tmp_path):
    result = CliRunner().invoke(data_main, ["toy", "--out", str(tmp_path / "t"), "--format", "carla",
                                            "--num-source", "2", "--num-train", "2", "--num-val", "1",
                                            "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "--source folder --label-map carla" in result.output
    assert sorted(p.name for p in (tmp_path / "t" / "carla" / "labels").iterdir()) == ["00000000.png", "00000001.png"]


def test_val_labels_must_hold_the_models_classes(carla_toy, tmp_path):
    cfg = load_config("smoke", overrides=[f"data.target_root={carla_toy}/cityscapes"])
    with pytest.raises(CirnError, match="the model's are road, sidewalk"):
        build_val_dataset(cfg.data, class_names=tuple(FIVE_CLASSES))
