"""cirn-run under faults and at scale: undecodable frames and images (--bad-frames), sharded inference."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime import IndexBackend, count_frames, write_video

from cirn.cli import run_main
from cirn.runtime import run
from cirn.runtime.shard import outputs, parse_shard, plan
from cirn.runtime.sources import BadFrame
from cirn.common.errors import CirnError
from cirn.train.io import write_png


def corrupt_video(tmp_path, bad=4, count=10):
    """An MJPG AVI of `count` grey frames (20 k + 10) whose frame `bad` holds no JPEG data any more."""
    data = bytearray(write_video(tmp_path / "clean.avi", [20 * k + 10 for k in range(count)], fourcc="MJPG")
                     .read_bytes())
    chunks = [i for i in range(len(data)) if data[i:i + 4] == b"00dc"]  # [index placeholder, frame 0, frame 1, ...]
    start = chunks[1 + bad] + 8  # past the chunk id and size
    data[start + 2:start + 200] = bytes(198)  # keep the JPEG start marker, zero the rest of its header and data
    path = tmp_path / "glitch.avi"
    path.write_bytes(bytes(data))
    return path


def image_folder(tmp_path, count=6, bad=(2,)):
    folder = tmp_path / "frames"
    for k in range(count):
        path = folder / f"f{k}.png"
        if k in bad:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        else:
            write_png(path, np.full((32, 64, 3), 20 * k + 10, np.uint8))
    return folder


def test_corrupt_frame_in_a_video_per_policy(tmp_path):
    video = corrupt_video(tmp_path)
    stop = run(video, IndexBackend(), out=tmp_path / "stop.mp4", quiet=True, log=lambda m: None)
    assert stop["frames"]["processed"] == 4 and "frame 4 of the 10" in stop["decode_error"]
    assert len(count_frames(tmp_path / "stop.mp4")) == 4

    labels = tmp_path / "labels"
    skip = run(video, IndexBackend(), out=tmp_path / "skip.mp4", labels_dir=labels, batch=3, quiet=True,
               bad_frames="skip", log=lambda m: None)
    assert skip["frames"]["processed"] == 9 and skip["complete"]
    assert skip["frames"]["skipped"] == 1 and skip["frames"]["skipped_names"] == ["glitch_000000_000004"]
    names = sorted(p.name for p in labels.iterdir())
    assert "glitch_000000_000004.png" not in names and "glitch_000000_000005.png" in names  # true indices kept
    assert len(count_frames(tmp_path / "skip.mp4")) == 9

    with pytest.raises(BadFrame, match="frame 4 of the 10"):
        run(video, IndexBackend(), out=tmp_path / "fail.mp4", summary=tmp_path / "fail.json", quiet=True,
            bad_frames="fail")
    assert not list(tmp_path.glob("fail*"))  # nothing under the final names, no temporary files left either
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupt_image_in_a_folder_per_policy(tmp_path):
    folder = image_folder(tmp_path)
    stop = run(folder, IndexBackend(), labels_dir=tmp_path / "stop", quiet=True, log=lambda m: None)
    assert stop["frames"]["processed"] == 2 and "f2.png" in stop["decode_error"]
    skip = run(folder, IndexBackend(), labels_dir=tmp_path / "skip", quiet=True, bad_frames="skip",
               log=lambda m: None)
    assert skip["frames"]["processed"] == 5 and skip["frames"]["skipped_names"] == ["f2"]
    assert sorted(p.stem for p in (tmp_path / "skip").iterdir()) == ["f0", "f1", "f3", "f4", "f5"]
    with pytest.raises(BadFrame, match="f2.png"):
        run(folder, IndexBackend(), labels_dir=tmp_path / "fail", quiet=True, bad_frames="fail")
    assert not list((tmp_path / "fail").glob("*.png"))  # the PNGs of f0 and f1 were removed again


def test_skipped_frame_keeps_the_stride_grid(tmp_path):
    video = corrupt_video(tmp_path, bad=4)
    info = run(video, IndexBackend(), labels_dir=tmp_path / "labels", stride=2, quiet=True, bad_frames="skip",
               log=lambda m: None)
    names = sorted(p.stem[-2:] for p in (tmp_path / "labels").iterdir())
    assert names == ["00", "02", "06", "08"] and info["frames"]["skipped_names"] == ["glitch_000000_000004"]
    odd = run(corrupt_video(tmp_path, bad=5), IndexBackend(), stride=2, quiet=True, bad_frames="fail")
    assert odd["frames"]["processed"] == 5 and odd["complete"]  # a bad frame between samples is never needed


def test_an_overestimated_frame_count_is_the_end_not_a_bad_frame(tmp_path, monkeypatch):
    import cv2
    video = write_video(tmp_path / "v.avi", [20 * k + 10 for k in range(6)], fourcc="MJPG")
    real_get = cv2.VideoCapture.get
    monkeypatch.setattr(cv2.VideoCapture, "get", lambda self, prop: 8.0 if prop == cv2.CAP_PROP_FRAME_COUNT
                        else real_get(self, prop))  # the container claims 8 frames; 6 are there
    for policy in ("skip", "fail"):
        info = run(video, IndexBackend(), quiet=True, bad_frames=policy, log=lambda m: None)
        assert info["frames"]["processed"] == 6 and info["frames"]["skipped"] == 0
        assert "stopped at frame 6 of the 8" in info["decode_error"]


def test_bad_frames_flag_from_the_cli(tmp_path, onnx_static):
    video = corrupt_video(tmp_path)
    out = tmp_path / "o.mp4"
    result = CliRunner().invoke(run_main, [str(video), "--model", str(onnx_static), "--out", str(out), "--quiet",
                                           "--bad-frames", "fail"])
    assert result.exit_code == 2 and "frame 4 of the 10" in result.output and "Traceback" not in result.output
    assert not out.exists()
    result = CliRunner().invoke(run_main, [str(video), "--model", str(onnx_static), "--out", str(out), "--quiet",
                                           "--bad-frames", "skip"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["frames"]["skipped"] == 1


# ---------------------------------------------------------------- sharded inference
def sources_for_sharding(tmp_path):
    videos = [write_video(tmp_path / f"drive{k}.mp4", [20 * j + 10 for j in range(3 + k)]) for k in range(3)]
    folder = image_folder(tmp_path, count=5, bad=())
    return [str(v) for v in videos] + [str(folder)]


def test_shard_plan_covers_every_source_once(tmp_path):
    sources = sources_for_sharding(tmp_path)
    whole = plan(sources, (0, 1))
    shards = [plan(sources, (i, 2)) for i in range(2)]
    videos = [[j.name for j in jobs if j.kind == "video"] for jobs in shards]
    assert videos == [["drive0", "drive2"], ["drive1"]]
    images = [[f.name for j in jobs if j.kind == "folder" for _, f in j.files] for jobs in shards]
    assert images == [["f0.png", "f2.png", "f4.png"], ["f1.png", "f3.png"]]
    assert sorted(images[0] + images[1]) == [f.name for _, f in whole[-1].files]
    assert [k for k, _ in shards[1][-1].files] == [1, 3]  # positions in the folder, for the frame indices
    assert outputs(shards[1][-1], tmp_path, (1, 2))["summary"].name == "frames_seg.shard-1-of-2.json"
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(CirnError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(CirnError, match="named 'drive0'"):
        plan([sources[0], sources[0]])


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_shards_write_each_output_once_and_match_one_run(tmp_path, onnx_static):
    sources = sources_for_sharding(tmp_path)
    common = [*sources, "--model", str(onnx_static), "--quiet", "--labels"]
    for name, extra in (("all", []), ("s0", ["--shard", "0/2"]), ("s1", ["--shard", "1/2"])):
        result = CliRunner().invoke(run_main, [*common, "--out-dir", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    whole, parts = _files(tmp_path / "all"), [_files(tmp_path / "s0"), _files(tmp_path / "s1")]
    assert not set(parts[0]) & set(parts[1])  # no output written by both shards
    pngs = {k for k in whole if k.endswith(".png")}
    assert len(pngs) == 3 + 4 + 5 + 5  # every frame of the three videos and every image
    for key in pngs:
        owner = parts[0] if key in parts[0] else parts[1]
        assert owner[key] == whole[key], key  # the same labels as one process
    videos = sorted(k for part in parts for k in part if k.endswith(".mp4"))
    assert videos == ["drive0_seg.mp4", "drive1_seg.mp4", "drive2_seg.mp4"]
    assert {k for part in parts for k in part if k.endswith(".json")} == {
        "drive0_seg.json", "drive1_seg.json", "drive2_seg.json", "frames_seg.shard-0-of-2.json",
        "frames_seg.shard-1-of-2.json"}


def test_several_sources_need_out_dir(tmp_path, onnx_static):
    sources = sources_for_sharding(tmp_path)
    result = CliRunner().invoke(run_main, [*sources[:2], "--model", str(onnx_static), "--out", "x.mp4"])
    assert result.exit_code == 2 and "--out-dir" in result.output


@pytest.mark.slow
def test_sharded_inference_under_torchrun(tmp_path, onnx_static):
    sources = sources_for_sharding(tmp_path)
    cli = shutil.which("cirn-run")
    assert cli, "cirn-run is not on PATH (pip install -e .)"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--no-python", cli,
            *sources, "--model", str(onnx_static), "--out-dir", str(tmp_path / "out"), "--quiet", "--threads", "1"]
    done = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = _files(tmp_path / "out")
    assert sorted(k for k in files if k.endswith(".mp4")) == ["drive0_seg.mp4", "drive1_seg.mp4", "drive2_seg.mp4"]
    assert len([k for k in files if k.startswith("labels/frames/")]) == 5
    assert {k for k in files if k.startswith("frames_seg.")} == {"frames_seg.shard-0-of-2.json",
                                                                 "frames_seg.shard-1-of-2.json"}
