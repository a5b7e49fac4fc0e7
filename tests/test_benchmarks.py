"""benchmarks/: run_latency and run_accuracy on a smoke checkpoint (tiny model, width 4, 64x32 frames).

torch.compile is skipped (--skip) to keep these fast: its first compilation takes ~50 s on a busy 2-core CPU.
"""
import csv
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from cirn.common.errors import CirnError
from cirn.train.checkpoint import load_model
from cirn.train.config import from_dict
from cirn.train.datasets import build_val_dataset
from cirn.train.evaluate import evaluate_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STATUSES = {"ok", "unavailable", "failed", "skipped"}
CPU_ROWS = ("torch-eager", "ort-cpu-fp32", "ort-cpu-int8")
FAST = ["--quick", "--warmup", "1", "--iterations", "3", "--seconds", "0", "--calib-images", "2",
        "--skip", "torch-compile", "--skip", "torch-compile-cuda"]


@pytest.fixture(scope="module")
def bench():
    """The benchmark scripts as modules (they import variants, measure and report from benchmarks/, as when run as
    scripts)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ("variants", "measure", "report", "run_latency",
                                                                "run_accuracy", "pseudo_labels", "so_collapse",
                                                                "selection", "frame_cache", "table4_seeds",
                                                                "fda_clipping")}
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def latency(bench, checkpoint, tmp_path_factory):
    """run_latency --quick on the smoke checkpoint: (report, output folder, export folder, printed text)."""
    out, exports = tmp_path_factory.mktemp("latency"), tmp_path_factory.mktemp("exports")
    report = bench["run_latency"].main(["--model", str(checkpoint), "--out", str(out), "--export-dir", str(exports),
                                        *FAST])
    return report, out, exports


def test_latency_writes_every_row_and_file(bench, latency):
    report, out, _ = latency
    names = [v.name for v in bench["variants"].VARIANTS]
    assert [r["name"] for r in report["rows"]] == names
    for row in report["rows"]:
        assert row["status"] in STATUSES
        assert (row["status"] == "ok") == (row["reason"] is None), row
    rows = {r["name"]: r for r in report["rows"]}
    for name in CPU_ROWS:
        row = rows[name]
        assert row["status"] == "ok", row["reason"]
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["fps"] > 0 and row["iterations"] >= 3 and row["size_mb"] > 0 and row["memory_mb"] is not None
        assert row["gflops_per_s"] == pytest.approx(report["model"]["gflops_per_frame"] * row["fps"])
        assert row["percent_of_peak"] == pytest.approx(
            100 * row["gflops_per_s"] / report["gemm_gflops_per_s"]["peak"]["cpu"])
        if row["precision"] == "fp32":  # the peak is the fastest fp32 rate of the run, these rows included
            assert row["percent_of_peak"] <= 100 + 1e-9
    gemm = report["gemm_gflops_per_s"]
    assert {"torch", "onnxruntime"} <= set(gemm["before"]["cpu"]) and set(gemm["after"]["cpu"]) == set(
        gemm["before"]["cpu"])
    assert gemm["peak"]["cpu"] >= max(*gemm["before"]["cpu"].values(), *gemm["after"]["cpu"].values())
    fma = report["cpu_fp32_fma_peak_estimate"]
    assert fma["gflops"] is None or fma["gflops"] > 0 and "estimate" in fma["how"]
    assert rows["torch-compile"]["status"] == "skipped"
    if not torch.cuda.is_available():
        for name in ("torch-eager-cuda", "ort-cuda-fp32", "ort-trt-fp16", "trt-fp32", "trt-fp16", "trt-int8"):
            assert rows[name]["status"] == "unavailable" and "CUDA" in rows[name]["reason"]
    assert all(goal["value"] is not None for goal in report["goals"].values())

    saved = json.loads((out / "latency.json").read_text())
    assert [r["name"] for r in saved["rows"]] == names and saved["input"] == {"height": 32, "width": 64, "batch": 1}
    with open(out / "latency.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == names
    table = (out / "latency.md").read_text()
    assert all(f"| {name} |" in table for name in names)
    assert "no CUDA GPU" in table or torch.cuda.is_available()
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_variant_gets_its_reason_and_the_run_goes_on(bench, checkpoint, latency, tmp_path):
    """An exported .onnx runs with the files beside it: a corrupt INT8 graph fails its row only."""
    _, _, exports = latency
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((exports / "model.onnx").read_bytes())
    (folder / "model.int8.onnx").write_bytes(b"not an onnx file")
    report = bench["run_latency"].main(["--model", str(folder / "model.onnx"), "--out", str(tmp_path / "out"),
                                        *FAST, "--skip", "torch-eager"])
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["ort-cpu-int8"]["status"] == "failed" and "model.int8.onnx" in rows["ort-cpu-int8"]["reason"]
    assert rows["ort-cpu-fp32"]["status"] == "ok"
    assert rows["torch-eager"]["status"] == "skipped"
    assert report["goals"]["int8_over_fp32"]["value"] is None and report["goals"]["int8_over_fp32"]["met"] is None


def test_goal_ratios_by_hand(bench):
    rows = [{"name": "torch-eager", "status": "ok", "fps": 100.0},
            {"name": "ort-cpu-fp32", "status": "ok", "fps": 160.0, "percent_of_peak": 50.0},
            {"name": "ort-cpu-int8", "status": "failed", "fps": None}]
    goals = bench["run_latency"].goal_ratios(rows)
    assert goals["ort_fp32_over_torch_eager"]["value"] == pytest.approx(1.6)
    assert goals["ort_fp32_over_torch_eager"]["met"] is True
    assert goals["int8_over_fp32"]["value"] is None and goals["int8_over_fp32"]["met"] is None
    assert goals["onnx_fp32_over_gemm"]["value"] == 50.0 and goals["onnx_fp32_over_gemm"]["met"] is False


def test_theoretical_fma_peak_by_hand(bench):
    measure = bench["measure"]
    assert measure.vector_floats("fpu sse sse2 avx fma avx2 avx512f avx512dq".split()) == 16
    assert measure.vector_floats("fpu sse sse2 avx fma avx2".split()) == 8
    assert measure.vector_floats(["fp", "asimd"]) == 4 and measure.vector_floats(["fpu"]) is None
    assert measure.fma_peak_gflops(2, 2100, 16) == pytest.approx(2 * 2.1 * 2 * 16 * 2)  # 268.8
    assert measure.fma_peak_gflops(4, 3000, 8, fma_units=1) == pytest.approx(192.0)
    here = measure.cpu_fp32_peak(threads=1)
    assert here["cores"] == 1 and (here["gflops"] is None or here["gflops"] == pytest.approx(
        measure.fma_peak_gflops(1, here["mhz"], here["floats"])))


def test_the_reference_peak_is_the_fastest_fp32_rate_of_the_run(bench):
    reference_peak = bench["measure"].reference_peak
    gemms = [{"cpu": {"torch": 100.0, "onnxruntime": 150.0}}, {"cpu": {"torch": 110.0, "onnxruntime": 140.0}}]
    rows = [{"name": "ort-cpu-fp32", "device": "cpu", "precision": "fp32", "gflops_per_s": 180.0},
            {"name": "ort-cpu-int8", "device": "cpu", "precision": "int8", "gflops_per_s": 400.0},
            {"name": "torch-eager-cuda", "device": "cuda", "precision": "fp32", "gflops_per_s": 5000.0},
            {"name": "torch-eager", "device": "cpu", "precision": "fp32", "gflops_per_s": None}]
    assert reference_peak(gemms, rows, "cpu") == (180.0, "variant ort-cpu-fp32")
    assert reference_peak(gemms, rows[1:], "cpu") == (150.0, "onnxruntime fp32 GEMM")  # INT8 is not fp32
    assert reference_peak([], rows, "cuda") == (5000.0, "variant torch-eager-cuda")
    assert reference_peak([], [], "cpu") == (None, None)


def test_accuracy_torch_and_onnx_fp32_agree(bench, checkpoint, tmp_path):
    report = bench["run_accuracy"].main(["--model", str(checkpoint), "--out", str(tmp_path), "--calib-images", "2",
                                         "--skip", "torch-compile", "--skip", "torch-compile-cuda"])
    rows = {r["name"]: r for r in report["rows"]}
    torch_fp32, onnx_fp32, onnx_int8 = rows["torch-eager"], rows["ort-cpu-fp32"], rows["ort-cpu-int8"]
    assert torch_fp32["status"] == onnx_fp32["status"] == onnx_int8["status"] == "ok"
    assert report["data"]["images"] == 4  # the toy_data val split
    assert onnx_fp32["miou"] == pytest.approx(torch_fp32["miou"], abs=1e-9)
    assert onnx_fp32["miou_change"] == pytest.approx(0.0, abs=1e-9) and onnx_fp32["agreement"] == 100.0
    assert 0 <= onnx_int8["agreement"] <= 100
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    assert [r["name"] for r in saved["rows"]] == [v.name for v in bench["variants"].VARIANTS]
    assert (tmp_path / "accuracy.csv").is_file() and (tmp_path / "accuracy.md").is_file()


def test_accuracy_needs_a_trained_checkpoint(bench, tmp_path):
    with pytest.raises(CirnError, match="trained checkpoint"):
        bench["run_accuracy"].main(["--model", "tiny", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench["run_latency"].main(["--skip", "no-such-variant", "--out", str(tmp_path)])


def test_pseudo_label_precision_against_the_train_labels(bench, checkpoint, toy_data, tmp_path):
    """Pseudo labels = the true labels, except one image's road called car: precision and the error found."""
    import numpy as np

    from cirn.train import labels
    from cirn.train.datasets import cityscapes_label_files
    from cirn.train.io import read_label
    from cirn.train.io import write_png
    target = toy_data / "cityscapes"
    files = cityscapes_label_files(target, "train")
    valid = wrong = 0
    for i, (name, path) in enumerate(files):
        ids = read_label(path)
        trainids = labels.LABELID_TO_TRAINID[ids]
        valid += int((trainids != labels.IGNORE_INDEX).sum())
        if i == 0:
            wrong = int((trainids == 0).sum())
            trainids = np.where(trainids == 0, 13, trainids).astype(np.uint8)  # road -> car
        write_png(tmp_path / "pseudo" / "labels" / f"{name}.png", trainids)
    assert wrong > 0
    figures = bench["pseudo_labels"].main([str(tmp_path / "pseudo"), "--target-root", str(target), "--model",
                                           str(checkpoint), "--easy-split", "0.5", "--json", str(tmp_path / "f.json")])
    assert figures["images"] == len(files) and figures["easy_images"] == figures["hard_images"] == len(files) // 2
    assert figures["precision"] == pytest.approx(1 - wrong / valid)
    top = figures["top_errors"][0]
    assert (top["true"], top["pseudo"], top["pixels"]) == ("road", "car", wrong) and top["in_hard"] in (0.0, 1.0)
    assert json.loads((tmp_path / "f.json").read_text())["classes"]["road"]["precision"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_latency_on_the_gpu(bench, checkpoint, tmp_path):
    report = bench["run_latency"].main(["--model", str(checkpoint), "--out", str(tmp_path), *FAST])
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["torch-eager-cuda"]["status"] == "ok", rows["torch-eager-cuda"]["reason"]
    assert rows["torch-eager-cuda"]["memory_kind"] == "GPU memory delta"
    assert report["gemm_gflops_per_s"]["peak"]["cuda"] > 0


def test_so_collapse_scores_the_three_ways(bench, checkpoint, tmp_path):
    probe = bench["so_collapse"]
    figures = probe.main([str(checkpoint), "--images", "4", "--json", str(tmp_path / "f.json")])
    model, state = load_model(checkpoint)
    val = build_val_dataset(from_dict(state["config"]).data, model.normalization)
    assert figures["as trained"] == pytest.approx(evaluate_model(model.fused, val)["miou"])
    assert len(figures) == 3 and all(0 <= v <= 100 for v in figures.values())
    assert json.loads((tmp_path / "f.json").read_text())["miou"] == figures
    stats = probe.channel_stats(val, 2)
    same = probe.ColourMatched(val, stats, stats)[0]["image"]  # matched onto its own statistics: unchanged
    assert torch.allclose(same, val[0]["image"], atol=1e-4)
    before = [b.clone() for b in (m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))]
    probe.reestimate_batchnorm(model, val, 2)
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not model.training and any(not torch.equal(b, a) for b, a in zip(before, after))


def test_selection_ranks_criteria_against_the_miou(bench, tmp_path):
    """Five evaluations per step where entropy falls as the mIoU rises, flip agreement runs against it and the
    mIoU peaks before the end: entropy tracks it best and picks the peak."""
    miou = [10.0, 14.0, 18.0, 17.0, 16.0]
    for sub in bench["selection"].STEPS.values():
        lines = [json.dumps({"kind": "train", "iteration": 1, "loss_seg": 1.0})]
        lines += [json.dumps({"kind": "val", "iteration": 50 * (k + 1), "miou": m, "entropy": 1 - m / 100,
                              "disagreement": 0.01, "flip": 1 - m / 100}) for k, m in enumerate(miou)]
        (tmp_path / "run" / sub).mkdir(parents=True)
        (tmp_path / "run" / sub / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    figures = bench["selection"].main([str(tmp_path / "run"), "--json", str(tmp_path / "s.json")])
    step = figures["runs"][str(tmp_path / "run")]["CIR+ASS"]
    assert step["criteria"]["entropy"] == {"rho": pytest.approx(1.0), "picked_miou": 18.0}
    assert step["criteria"]["flip"]["rho"] == pytest.approx(-1.0)
    assert step["criteria"]["last"] == {"rho": pytest.approx(0.6), "picked_miou": 16.0}  # 1 - 6 * 8 / 120
    assert step["criteria"]["disagreement"]["picked_miou"] == 10.0  # constant: the first evaluation is kept
    assert figures["choice"] == "entropy" and figures["mean_regret"]["entropy"] == 0.0
    assert json.loads((tmp_path / "s.json").read_text())["choice"] == "entropy"
    (tmp_path / "run").rename(tmp_path / "again")  # another day's run, counted with the earlier one's figures
    both = bench["selection"].main([str(tmp_path / "again"), "--previous", str(tmp_path / "s.json")])
    assert list(both["runs"]) == [str(tmp_path / "run"), str(tmp_path / "again")]
    assert both["mean_rho"]["last"] == pytest.approx(0.6) and both["choice"] == "entropy"


def test_frame_cache_times_both_ways_over_the_same_frames(bench, tmp_path, monkeypatch):
    from cirn.train.toy import render_video
    monkeypatch.setenv("CIRN_DATA", str(tmp_path / "data"))  # main() points it at a temporary cache of its own
    video = render_video(tmp_path / "d.mp4", frames=8, size_wh=(64, 32))["video"]
    figures = bench["frame_cache"].main([str(video), "--stride", "2", "--draws", "5"])
    assert figures["frames"] == 4 and min(figures["png_ms"], figures["seek_ms"], figures["decode_ms_per_frame"]) > 0
    assert not (tmp_path / "data").exists()


def test_table4_seeds_pairs_the_orderings_by_seed(bench, tmp_path, capsys):
    """Three runs where CIR beats SO at every seed by more than the spread, and ASS+ST loses to ASS at one seed."""
    table = bench["table4_seeds"]
    base = {"SO": 20.0, "CIR": 24.0, "ASS": 25.0, "CIR+ASS": 26.0, "ASS+ST": 26.0, "CIR+ASS+ST": 27.0}
    for seed, (so, ass_st) in enumerate([(20.0, 26.0), (21.0, 24.0), (22.0, 26.5)]):
        rows = {row: {"miou": v} for row, v in {**base, "SO": so, "ASS+ST": ass_st}.items()}
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "ablation.json").write_text(json.dumps({"labelled": True, "rows": rows}))
    summary = table.main([str(tmp_path / f"s{k}") for k in range(3)] + ["--json", str(tmp_path / "t.json")])
    assert summary["rows"]["SO"]["mean"] == pytest.approx(21.0) and summary["rows"]["SO"]["std"] == pytest.approx(1.0)
    so_cir = summary["orderings"]["SO < CIR"]
    assert so_cir["gains"] == [4.0, 3.0, 2.0] and so_cir["every_seed"] and so_cir["above_spread"]
    ass_st = summary["orderings"]["ASS < ASS+ST"]
    assert ass_st["gains"] == [1.0, -1.0, 1.5] and not ass_st["every_seed"] and not ass_st["above_spread"]
    assert json.loads((tmp_path / "t.json").read_text())["orderings"]["SO < CIR"]["mean"] == pytest.approx(3.0)
    with pytest.raises(SystemExit) as exit_info:
        table.main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "error: " + str(tmp_path / "missing" / "ablation.json") + " does not exist" in capsys.readouterr().err


def test_fda_clipping_counts_the_channel_values_at_0_and_255(bench, tmp_path):
    import numpy as np

    from cirn.train.io import write_png
    for folder, image in (("source", [[[10, 0, 255], [30, 40, 50]]]), ("translated", [[[0, 0, 255], [0, 20, 30]]])):
        write_png(tmp_path / folder / "images" / "00001.png", np.array(image, np.uint8))
    figures = bench["fda_clipping"].main([str(tmp_path / "translated"), str(tmp_path / "source")])
    assert figures["source"] == {"mean": [20.0, 20.0, 152.5], "at_0": pytest.approx(100 / 6),
                                 "at_255": pytest.approx(100 / 6)}
    assert figures["translated"]["at_0"] == pytest.approx(50.0) and figures["translated"]["mean"][0] == 0.0
    (tmp_path / "source" / "images" / "00001.png").unlink()
    with pytest.raises(SystemExit, match="does not exist"):
        bench["fda_clipping"].main([str(tmp_path / "translated"), str(tmp_path / "source")])
