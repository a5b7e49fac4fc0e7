"""Data-parallel training under torchrun with 2 CPU processes (gloo) against one process on the same global batch."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cirn.train.datasets import _StreamBatchSampler

# With frozen BatchNorm, N processes compute the single-process update up to the order of float sums. With training
# BatchNorm (the tiny model's default) each process normalises by the statistics of its own share of the batch,
# the one difference from a single process: the curves then agree within a few percent over these iterations.
EXACT_TOLERANCE = 1e-4  # relative, per logged iteration
BATCHNORM_TOLERANCE = 0.15
# fp32: on a CPU with bf16 instructions run.amp=auto trains in bf16, whose rounding of each process's share of the
# batch differs from the whole batch's by more than EXACT_TOLERANCE.
SHORT_RUN = ["run.iterations=8", "run.batch_size=4", "run.eval_every=8", "run.checkpoint_every=4", "run.device=cpu",
             "run.amp=none"]


def test_shards_of_a_batch_are_the_single_process_batch():
    whole = iter(_StreamBatchSampler(10, 4, seed=3, position=6))
    shards = [iter(_StreamBatchSampler(10, 4, seed=3, position=6, shard=(r, 2))) for r in range(2)]
    for _ in range(7):
        batch = next(whole)
        parts = [next(s) for s in shards]
        assert sorted(parts[0] + parts[1]) == sorted(batch)
        assert len(parts[0]) == len(parts[1]) == 2


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["loss_seg"] for r in records if r["kind"] == "train"}


def _train(args, run_dir, processes, command="source-only", settings=SHORT_RUN):
    """`cirn-train COMMAND --preset smoke ARGS` in one process, or in `processes` under torchrun (gloo)."""
    cli = shutil.which("cirn-train")
    assert cli, "cirn-train is not on PATH (pip install -e .)"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "--no-python"] if processes > 1 else []
    argv = [*launcher, cli, command, "--preset", "smoke", *args, "--out", str(run_dir), "--quiet", *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("batchnorm, tolerance, recipe", [
    ("frozen", EXACT_TOLERANCE, ()), ("train", BATCHNORM_TOLERANCE, ()),
    # The toy preset's recipe: class weights from the global batch's pixel counts, AdamW, jitter drawn per item key.
    ("frozen", EXACT_TOLERANCE, ("optim.optimizer=adamw", "optim.lr=0.005", "optim.class_balance=0.5",
                                 "data.color_jitter=0.5"))], ids=["frozen", "train", "frozen-toy-recipe"])
def test_two_processes_follow_the_single_process_loss_curve(toy_args, tmp_path, batchnorm, tolerance, recipe):
    args = [*toy_args, f"model.batchnorm={batchnorm}", *recipe]
    _train(args, tmp_path / "one", 1)
    two = _train(args, tmp_path / "two", 2)
    one_curve, two_curve = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert list(one_curve) == list(two_curve) == list(range(1, 9))  # process 0 alone logged, once per iteration
    for it in one_curve:
        assert two_curve[it] == pytest.approx(one_curve[it], rel=tolerance), (it, one_curve, two_curve)
    assert one_curve[8] < one_curve[1]  # it trained
    # Process 0 alone wrote the checkpoints and the summary, and printed the result once.
    assert (tmp_path / "two" / "best.pt").is_file() and (tmp_path / "two" / "summary.json").is_file()
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 8 and state["extras"]["batches"]["position"] == 8 * 4
    assert two.stdout.count("best target mIoU") == 1


def test_a_global_batch_that_does_not_split_is_an_error(monkeypatch):
    from cirn.train import distributed
    from cirn.train.datasets import InfiniteLoader
    from cirn.common.errors import CirnError
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(CirnError, match="does not split over 2 processes"):
        InfiniteLoader([0, 1, 2], batch_size=3)


@pytest.mark.slow
def test_every_stage_runs_under_torchrun(toy_args, tmp_path):
    """all-stages (pretrain, SO, stage 1 CycleGAN + translation, CIR, ASS, CIR+ASS, stage 3 pseudo labels) with 2
    processes: process 0 writes each shared file once and the others read it back; re-running skips every finished
    step."""
    out = tmp_path / "two"
    two = _train(toy_args, out, 2, "all-stages", ["run.batch_size=2", "run.device=cpu"])
    assert two.stdout.count("CIR+ASS+ST") == 2  # the table, printed by process 0 only (header row + its row)
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert list(rows) == ["SO", "CIR", "ASS", "CIR+ASS", "ASS+ST", "CIR+ASS+ST"]
    manifest = json.loads((out / "stage1" / "intermediate" / "intermediate.json").read_text())
    assert manifest["count"] == len(list((out / "stage1" / "intermediate" / "images").iterdir())) == 8
    assert json.loads((out / "cir-ass-st" / "round1" / "pseudo" / "summary.json").read_text())
    assert not list(out.rglob(".*.tmp*"))
    again = _train(toy_args, out, 2, "all-stages", ["run.batch_size=2", "run.device=cpu"])
    assert again.stdout.count("already finished") == 8
