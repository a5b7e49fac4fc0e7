"""Training under faults: SIGKILL then --resume, a truncated newest checkpoint, a full or read-only disk, corrupt
images. (NaN loss: test_training.py; a pickled checkpoint: test_checkpoints.py.)"""
import errno
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from click.testing import CliRunner

from cirn.cli import train_main
from cirn.train import supervised
from cirn.train.config import load_config
from cirn.train.checkpoint import load_checkpoint
from cirn.common.errors import CirnError

KILL_RUN = ["run.iterations=60", "run.checkpoint_every=5", "run.eval_every=30", "run.batch_size=2", "run.device=cpu"]


def _argv(toy_args, out, *extra):
    cli = shutil.which("cirn-train")
    assert cli, "cirn-train is not on PATH (pip install -e .)"
    return [cli, "source-only", "--preset", "smoke", *toy_args, "--out", str(out), "--quiet", *KILL_RUN, *extra]


def _last_iteration(run_dir):
    try:
        return load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"]
    except CirnError:  # not there yet
        return 0


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["states"]["model"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(toy_args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_argv(toy_args, tmp_path / "full"), env=env, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_argv(toy_args, killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _last_iteration(killed) < 10 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = _last_iteration(killed)
    assert 10 <= at_kill < 60 and not (killed / "summary.json").exists()

    again = subprocess.run(_argv(toy_args, tmp_path / "killed"), env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # a killed run is not silently overwritten
    resumed = subprocess.run(_argv(toy_args, killed, "--resume"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at iteration {at_kill}" in resumed.stderr
    full, after = _weights(tmp_path / "full"), _weights(killed)
    for key, value in full.items():
        assert torch.equal(value, after[key]), key
    assert not list(killed.rglob(".*.tmp*"))  # no temporary file of the interrupted write survives


def test_truncated_newest_checkpoint_resumes_from_the_previous(toy_args, tmp_path):
    out = tmp_path / "run"
    args = ["source-only", "--preset", "smoke", *toy_args, "--out", str(out), "--quiet", "run.iterations=4",
            "run.checkpoint_every=2", "run.eval_every=4"]
    assert CliRunner().invoke(train_main, args).exit_code == 0
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # the newest checkpoint, cut short (a crash mid-copy, a bad disk)
    (out / "summary.json").unlink()
    result = CliRunner().invoke(train_main, [*args, "--resume", "run.iterations=6"])
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output and "resuming from the previous checkpoint" in result.output
    assert "at iteration 2" in result.output  # prev.pt held iteration 2
    assert load_checkpoint(last)["iteration"] == 6


def _smoke(toy_data, **overrides):
    return load_config("smoke", overrides=[f"data.source_root={toy_data / 'gta5'}",
                                           f"data.target_root={toy_data / 'cityscapes'}",
                                           *(f"{k}={v}" for k, v in overrides.items())])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_is_a_clear_error_with_no_partial_files(toy_data, tmp_path, monkeypatch, code):
    """The checkpoint write fails half-way (torch.save has written some bytes, then the disk refuses more)."""
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # some bytes reach the temporary file ...
        raise OSError(code, os.strerror(code), str(path))  # ... then the disk is full / turns read-only

    monkeypatch.setattr(torch, "save", failing_save)
    out = tmp_path / "run"
    with pytest.raises(CirnError, match=os.strerror(code)) as caught:
        supervised.run(_smoke(toy_data), out, quiet=True)
    assert "last.pt" in str(caught.value) and "Nothing was written" in str(caught.value)
    assert not (out / "checkpoints" / "last.pt").exists() and not list(out.rglob(".*.tmp*"))

    result = CliRunner().invoke(train_main, ["source-only", "--preset", "smoke", "--source-root",
                                             str(toy_data / "gta5"), "--target-root", str(toy_data / "cityscapes"),
                                             "--out", str(tmp_path / "cli"), "--quiet"])
    assert result.exit_code == 2 and os.strerror(code) in result.output and "Traceback" not in result.output


def test_unwritable_run_folder_is_a_clear_error(toy_data, tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, os.strerror(errno.EROFS))))
    with pytest.raises(CirnError, match="Read-only file system"):
        supervised.run(_smoke(toy_data), tmp_path / "ro", quiet=True)


def test_corrupt_training_image_fails_or_is_skipped(toy_data, tmp_path):
    data = tmp_path / "toy"
    shutil.copytree(toy_data, data)
    bad = sorted((data / "gta5" / "images").iterdir())[3]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n cut")
    cfg = load_config("smoke", overrides=[f"data.source_root={data / 'gta5'}",
                                          f"data.target_root={data / 'cityscapes'}", "run.iterations=4",
                                          "run.batch_size=4"])
    with pytest.raises(CirnError, match=bad.name):
        supervised.run(cfg, tmp_path / "fail", quiet=True)
    skip = load_config(None, overrides=["data.bad_images=skip"], base=cfg)
    summary = supervised.run(skip, tmp_path / "skip", quiet=True)
    assert summary["skipped_images"] == [bad.stem]
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_images"] == [bad.stem]
