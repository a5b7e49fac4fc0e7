"""The Cityscapes metric: hand-computed confusion matrices, the folder evaluator, cirn-eval, and the official script."""
import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cirn.cli import eval_main
from cirn.train import labels
from cirn.train.datasets import CityscapesDataset
from cirn.common.errors import CirnError
from cirn.train.evaluate import ConfusionMatrix, evaluate_folder, evaluate_model, format_table, save_json

H, W = 16, 32
CITIES = ("frankfurt_000000_000294", "lindau_000000_000019", "munster_000010_000019")


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def gt_label_ids(i):
    """(H, W) Cityscapes labelIds: every class but train (31, so one NaN class), plus ignored ids 0 and 9."""
    ids = [lid for lid in labels.CITYSCAPES_LABEL_IDS if lid != 31] + [0, 9]
    rng = np.random.default_rng(i)
    return rng.choice(np.array(ids, dtype=np.uint8), size=(H, W))


@pytest.fixture
def target(tmp_path):
    """A Cityscapes root with gtFine/val labelIds (and images, so the dataset loader works too)."""
    root = tmp_path / "cityscapes"
    for i, name in enumerate(CITIES):
        city = name.split("_")[0]
        save(root / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png", gt_label_ids(i))
        save(root / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
    return root


def write_predictions(pred_dir, arrays, pattern="{name}.png", city_folders=False):
    for name, array in zip(CITIES, arrays, strict=True):
        sub = name.split("_")[0] if city_folders else ""
        save(pred_dir / sub / pattern.format(name=name), array.astype(np.uint8))
    return pred_dir


def perfect_trainids():
    return [labels.LABELID_TO_TRAINID[gt_label_ids(i)] for i in range(len(CITIES))]


# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_by_hand():
    label = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])  # the 0 on the ignored pixel is no false positive
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, label)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    # class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 1, FN 1, FP 1 -> 1/3; class 2: TP 1, FN 0, FP 1 -> 1/2
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    cm4 = ConfusionMatrix(num_classes=4)
    cm4.update(np.concatenate([pred.ravel(), [255]]), np.concatenate([label.ravel(), [0]]))
    np.testing.assert_allclose(cm4.iou(), [1 / 3, 1 / 3, 1 / 2, math.nan])  # class 3 absent: NaN
    assert cm4.miou() == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)


def test_confusion_matrix_batched_torch_equals_numpy():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (2, 4, 6))
    label[label == 4] = 255
    pred = rng.integers(0, 4, (2, 4, 6))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(pred, label)
    for p, t in zip(torch.from_numpy(pred), torch.from_numpy(label), strict=True):
        b.update(p, t)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.matrix.dtype == np.int64 and a.matrix.sum() == label.size


def test_confusion_matrix_rejects_unknown_ids():
    cm = ConfusionMatrix(3)
    with pytest.raises(CirnError, match=r"prediction holds unknown ids \[3, 7\]"):
        cm.update(np.array([3, 7, 0]), np.array([0, 0, 0]))
    with pytest.raises(CirnError, match=r"label holds unknown ids \[9\]"):
        cm.update(np.array([0]), np.array([9]))
    with pytest.raises(CirnError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((3, 2)))


def test_protocols_average_subsets_of_the_19_class_matrix():
    cm = ConfusionMatrix(19)
    cm.matrix[np.arange(19), np.arange(19)] = 1  # every class right once
    cm.matrix[0, 0] = 2
    cm.matrix[0, 9] = 2  # two road pixels predicted terrain
    # road: TP 2, FN 2 -> 1/2; terrain: TP 1, FP 2 -> 1/3; all others 1
    assert cm.miou(19) == pytest.approx((1 / 2 + 1 / 3 + 17) / 19)
    assert cm.miou(16) == pytest.approx((1 / 2 + 15) / 16)  # terrain left out of the mean, not out of road's FN
    assert cm.miou(13) == pytest.approx((1 / 2 + 12) / 13)
    assert math.isnan(ConfusionMatrix(19).miou(13))
    with pytest.raises(CirnError, match="unknown protocol 15"):
        cm.miou(15)
    small = ConfusionMatrix(3)  # a 3-class test model: the protocol keeps the classes it has
    small.update(np.array([0, 1, 1]), np.array([0, 1, 2]))
    assert small.miou(19) == small.miou(13) == small.miou() == pytest.approx((1 + 1 / 2 + 0) / 3)


# ---------------------------------------------------------------- evaluate_folder
def test_ground_truth_scores_100(target, tmp_path):
    result = evaluate_folder(write_predictions(tmp_path / "pred", perfect_trainids()), target)
    assert result["miou"] == 100.0 and result["num_images"] == 3 and result["protocol"] == 19
    assert math.isnan(result["per_class"]["train"]) and result["per_class"]["road"] == 100.0
    assert np.array(result["confusion_matrix"]).sum() == 3 * H * W
    labelid = write_predictions(tmp_path / "pred_labelid", [gt_label_ids(i) for i in range(3)],
                                pattern="{name}_leftImg8bit.png", city_folders=True)
    assert evaluate_folder(labelid, target, pred_format="labelid")["miou"] == 100.0
    result = evaluate_folder(tmp_path / "pred", target, protocol=13)
    assert len(result["per_class"]) == 13 and "wall" not in result["per_class"]
    table = format_table(result)
    assert "road" in table and "mIoU (13 classes, 3 images): 100.00" in table


def test_folder_matches_a_hand_count(target, tmp_path):
    preds = perfect_trainids()
    preds[0] = np.zeros((H, W), np.uint8)  # image 0 predicted all road
    result = evaluate_folder(write_predictions(tmp_path / "pred", preds, "{name}_gtFine_labelIds.png"), target)
    cm = ConfusionMatrix()
    for i, pred in enumerate(preds):
        cm.update(pred, labels.LABELID_TO_TRAINID[gt_label_ids(i)])
    gt = [labels.LABELID_TO_TRAINID[gt_label_ids(i)] for i in range(3)]
    road_tp = sum((g == 0).sum() for g in gt)
    road_fp = ((gt[0] != 0) & (gt[0] != 255)).sum()
    assert result["per_class"]["road"] == pytest.approx(100 * road_tp / (road_tp + road_fp))
    assert result["miou"] == pytest.approx(100 * cm.miou(19))


def test_folder_errors_name_the_file(target, tmp_path):
    pred_dir = write_predictions(tmp_path / "pred", perfect_trainids())
    bad = pred_dir / f"{CITIES[1]}.png"
    save(bad, np.zeros((H // 2, W // 2), np.uint8))
    with pytest.raises(CirnError, match=f"{bad} is 16x8 but its label .*{CITIES[1]}_gtFine_labelIds.png is 32x16"):
        evaluate_folder(pred_dir, target)
    save(bad, np.full((H, W), 19, np.uint8))
    with pytest.raises(CirnError, match=rf"{bad}: prediction holds unknown ids \[19\]"):
        evaluate_folder(pred_dir, target)
    labelid_dir = write_predictions(tmp_path / "pred_labelid", [gt_label_ids(i) for i in range(3)])
    save(labelid_dir / f"{CITIES[1]}.png", np.full((H, W), 34, np.uint8))
    with pytest.raises(CirnError, match=rf"{labelid_dir / CITIES[1]}.png holds unknown labelIds \[34\]"):
        evaluate_folder(labelid_dir, target, pred_format="labelid")
    save(bad, np.zeros((H, W, 3), np.uint8))
    with pytest.raises(CirnError, match=f"{bad} is a RGB image"):
        evaluate_folder(pred_dir, target)
    save(pred_dir / f"{CITIES[1]}_leftImg8bit.png", np.zeros((H, W), np.uint8))
    with pytest.raises(CirnError, match=f"several predictions for {CITIES[1]}"):
        evaluate_folder(pred_dir, target)
    bad.unlink()
    (pred_dir / f"{CITIES[1]}_leftImg8bit.png").unlink()
    with pytest.raises(CirnError, match=f"no prediction for lindau/{CITIES[1]}"):
        evaluate_folder(pred_dir, target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CirnError, match=f"no prediction PNGs under {tmp_path / 'empty'}"):
        evaluate_folder(tmp_path / "empty", target)
    with pytest.raises(CirnError, match="gtFine/test does not exist"):
        evaluate_folder(pred_dir, target, split="test")


def test_folder_defaults_to_the_toy_target(target, tmp_path, monkeypatch):
    toy = types.ModuleType("cirn.train.toy")
    toy.ensure_toy = lambda root=None, seed=0, fmt="gta5": types.SimpleNamespace(cityscapes=target)
    monkeypatch.setitem(sys.modules, "cirn.train.toy", toy)
    assert evaluate_folder(write_predictions(tmp_path / "pred", perfect_trainids()))["miou"] == 100.0


def test_save_json_writes_nan_as_null(target, tmp_path):
    result = evaluate_folder(write_predictions(tmp_path / "pred", perfect_trainids()), target)
    save_json(result, tmp_path / "out" / "scores.json")
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert data["per_class"]["train"] is None and data["miou"] == 100.0


# ---------------------------------------------------------------- evaluate_model
def test_evaluate_model_upsamples_logits_to_the_label(target):
    dataset = CityscapesDataset(target, split="val", size_wh=(16, 8), label_size="original")

    def model_fn(images):  # (B, 3, 8, 16) -> (B, 19, 1, 2): left column road, right column car
        logits = torch.zeros(images.shape[0], 19, 1, 2)
        logits[:, 0, :, 0] = 10.0
        logits[:, 13, :, 1] = 10.0
        return logits

    rng_before = torch.get_rng_state()
    result = evaluate_model(model_fn, dataset, num_classes=19, protocol=19, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng_before)  # evaluating never shifts the training RNG
    pred = np.zeros((H, W), np.int64)
    pred[:, W // 2:] = 13  # bilinear halfway split at full label resolution
    cm = ConfusionMatrix()
    for i in range(3):
        cm.update(pred, labels.LABELID_TO_TRAINID[gt_label_ids(i)])
    assert result["num_images"] == 3
    np.testing.assert_array_equal(result["confusion_matrix"], cm.matrix)
    assert result["miou"] == pytest.approx(100 * cm.miou(19))


# ---------------------------------------------------------------- cirn-eval
def test_cli_scores_ground_truth_and_writes_json(target, tmp_path):
    pred_dir = write_predictions(tmp_path / "pred", perfect_trainids())
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(eval_main, ["--pred-dir", str(pred_dir), "--target-root", str(target),
                                            "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "mIoU (19 classes, 3 images): 100.00" in result.output
    assert json.loads(out.read_text())["miou"] == 100.0


@pytest.mark.parametrize("problem", ["size", "missing", "bad id"])
def test_cli_errors_are_one_line(problem, target, tmp_path):
    pred_dir = write_predictions(tmp_path / "pred", perfect_trainids())
    path = pred_dir / f"{CITIES[2]}.png"
    if problem == "size":
        save(path, np.zeros((H, W + 1), np.uint8))
    elif problem == "missing":
        path.unlink()
    else:
        save(path, np.full((H, W), 200, np.uint8))
    result = CliRunner().invoke(eval_main, ["--pred-dir", str(pred_dir), "--target-root", str(target)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and CITIES[2] in lines[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- the official script
def test_matches_official_cityscapes_scripts(target, tmp_path, monkeypatch):
    official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                                   reason="cityscapesscripts (dev extra) is not installed")
    from cityscapesscripts.helpers.labels import trainId2label
    rng = np.random.default_rng(7)
    preds = []
    for i in range(3):  # labelId predictions: half right, half any labelId 0..33 (ignored ids included), no train
        gt = gt_label_ids(i)
        noise = rng.choice([lid for lid in range(34) if lid != 31], size=gt.shape).astype(np.uint8)
        preds.append(np.where(rng.random(gt.shape) < 0.5, gt, noise))
    pred_dir = write_predictions(tmp_path / "pred", preds)
    ours = evaluate_folder(pred_dir, target, pred_format="labelid")

    for key, value in {"evalInstLevelScore": False, "evalPixelAccuracy": False, "JSONOutput": False,
                       "quiet": True, "colorized": False, "bold": "", "nocol": "", "evalLabels": []}.items():
        monkeypatch.setattr(official.args, key, value)
    gt_files = [str(p) for p in sorted((target / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))]
    pred_files = [str(pred_dir / (p.split("/")[-1].replace("_gtFine_labelIds", ""))) for p in gt_files]
    theirs = official.evaluateImgLists(pred_files, gt_files, official.args)

    for train_id in range(19):
        name = trainId2label[train_id].name
        want, got = theirs["classScores"][name], ours["per_class"][labels.CLASS_NAMES[train_id]]
        assert (math.isnan(want) and math.isnan(got)) or got / 100 == pytest.approx(want, abs=1e-6), name
    assert math.isnan(theirs["classScores"]["train"])
    assert ours["miou"] / 100 == pytest.approx(theirs["averageScoreClasses"], abs=1e-6)
