"""benchmarks/gpu_check.py without a GPU: it says so and exits 2 writing nothing; every command it would run parses
with today's options (a renamed flag fails here, not on the GPU machine); its report is built from what the steps
leave behind. The GPU steps themselves run only on a GPU machine."""
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_without_a_gpu_it_says_so_and_writes_nothing(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert "error: no GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_planned_command_parses(gpu_check, tmp_path):
    from cirn import cli
    steps = gpu_check.plan(tmp_path)
    assert [s.name for s in steps][:3] == ["environment", "toy-data", "toy-train"]
    assert sum(s.timeout_s for s in steps) > 540  # the --budget, not the sum of the limits, bounds the run
    scripts = {"run_latency.py": "run_latency", "train_step.py": "train_step", "gpu_check.py": "gpu_check"}
    for step in steps:
        command = [str(c) for c in step.command]
        if command[1] == "-c":  # a cirn console command: click parses its options without running it
            main = getattr(cli, command[2].split("import ")[1].split(";")[0])
            main.make_context("cirn", command[3:], resilient_parsing=False)
            overrides = [arg for arg in command[3:] if "=" in arg and not arg.startswith("-")]
            if overrides:  # and the config takes its key=value overrides
                from cirn.train.config import load_config
                load_config("toy", overrides=overrides)
            continue
        module = importlib.import_module(scripts[Path(command[1]).name])
        if module is gpu_check:
            continue  # its own helper flags, read by main
        if hasattr(module, "parse_args"):
            module.parse_args(command[2:])
        else:  # train_step: argparse exits 2 on an unknown option
            with pytest.raises(SystemExit) as stopped:
                module.main([*command[2:], "--help"])
            assert stopped.value.code == 0


def test_report_from_what_the_steps_left(gpu_check, tmp_path):
    (tmp_path / "toy-export").mkdir()
    (tmp_path / "toy-export" / "parity.json").write_text(json.dumps({"rows": [
        {"name": "trt-fp16", "size": [128, 256], "label_agreement": 99.5, "floor": 98.0, "passed": True}]}))
    (tmp_path / "video.json").write_text(json.dumps({"fastest": "model.fp16.engine", "ratio": 0.93}))
    figures = gpu_check.collect(tmp_path)
    assert figures["toy-export"][0]["passed"] and figures["video"]["ratio"] == 0.93
    steps = gpu_check.plan(tmp_path)
    steps[0].result = {"status": "ok", "seconds": 1.0}
    table = gpu_check.markdown(steps, figures)
    assert "| environment | ok | 1.0 |" in table and "| toy-train | not run |" in table and "### video" in table


def test_train_step_runs_a_tiny_stage2_and_stage1_iteration_on_cpu(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        train_step = importlib.import_module("train_step")
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "s2.json"
    train_step.main(["--stage", "2", "--preset", "smoke", "--source", "64x32", "--target", "64x32", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["stage"] == 2 and result["peak_memory_gb"] > 0 and result["source_wh"] == [64, 32]
    assert {"loss_seg_src", "loss_adv_trg", "loss_discrepancy", "loss_d_trg"} <= set(result["losses"])
    train_step.main(["--stage", "1", "--preset", "smoke", "--crop", "32x32", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["stage"] == 1 and result["crop_wh"] == [32, 32] and "loss_sem" in result["losses"]
