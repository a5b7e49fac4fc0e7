"""cirn-run: backends against PyTorch, the threaded pipeline (order, stride, batches), bad inputs, decode failures,
Ctrl-C, the toy dashcam clip and its video mIoU through cirn-eval."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cirn.cli import data_main, eval_main, run_main
from cirn.export import DeployModel, export_checkpoint
from cirn.export.frames import cityscapes_frames
from cirn.runtime import (Backend, Interrupted, ModelMetadata, backend_for, find_default_model, open_backend,
                          open_source, run)
from cirn.runtime.outputs import overlay, resize_labels
from cirn.runtime.pipeline import inference_size_hw
from cirn.train import toy
from cirn.train.checkpoint import load_model
from cirn.common.errors import CirnError
from cirn.train.labels import CLASS_NAMES, LABELID_TO_TRAINID, PALETTE

PARITY_FLOOR = 99.9  # % of labels equal to PyTorch FP32: export's floor for FP32 graphs (export.parity)


@pytest.fixture(scope="module")
def onnx_dynamic(checkpoint):
    """The default export with dynamic batch, height and width (labels out)."""
    result = export_checkpoint(checkpoint, checkpoint.parent / "dynamic", dynamic=True, parity_images=2)
    return checkpoint.parent / "dynamic" / "model.onnx", result


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An 8-frame toy dashcam clip at 64x32 with its ground truth."""
    out = tmp_path_factory.mktemp("clip") / "drive.mp4"
    return toy.render_video(out, frames=8, fps=10, size_wh=(64, 32))


def val_frames(toy_data, size=(64, 32), count=4):
    """(B, H, W, 3) uint8 RGB toy target val images at size=(W, H)."""
    frames = cityscapes_frames(toy_data / "cityscapes", "val", size, count, with_labels=False)
    return np.stack([f.image.transpose(1, 2, 0) for f in frames])


def pytorch_labels(checkpoint, frames):
    """The reference: the checkpoint's DeployModel in PyTorch FP32 on (B, H, W, 3) frames -> (B, H, W) labels."""
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return DeployModel(model, "labels")(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()).numpy()


def agreement(a, b):
    assert a.shape == b.shape
    return 100.0 * float((a == b).mean())


def count_frames(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_video(path, values, size=(64, 32), fourcc="mp4v", fps=10):
    """A video whose frame k is a flat grey of values[k]: the frame index survives MPEG-4 compression."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    for value in values:
        writer.write(np.full((size[1], size[0], 3), value, np.uint8))
    writer.release()
    return path


class IndexBackend(Backend):
    """A fake backend that reads back the frame index written as a grey level (20 k + 10) into a label map; it
    can raise KeyboardInterrupt at a given call, as Ctrl-C during inference would."""
    name = "index"

    def __init__(self, interrupt_at_call=None, dynamic=True):
        meta = ModelMetadata(CLASS_NAMES, PALETTE, (32, 64), dynamic, "labels")
        super().__init__(meta, "cpu")
        self.calls, self.batches, self.interrupt_at_call = 0, [], interrupt_at_call

    def _infer(self, frames):
        self.calls += 1
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt
        self.batches.append(len(frames))
        index = np.rint((frames.reshape(len(frames), -1).mean(axis=1) - 10) / 20).astype(np.uint8)
        return np.broadcast_to(index[:, None, None], frames.shape[:3]).copy()

    def warmup(self, size=None, batch=1, runs=2):
        return 0.0


# ---------------------------------------------------------------- backends
def test_backends_match_pytorch(toy_data, checkpoint, onnx_dynamic, onnx_static):
    frames = val_frames(toy_data)  # (4, 32, 64, 3)
    expected = pytorch_labels(checkpoint, frames)
    for model in (checkpoint, onnx_dynamic[0], onnx_static):
        backend = open_backend(model, device="cpu")
        labels = backend(frames)
        assert labels.dtype == np.uint8 and labels.shape == (4, 32, 64)
        assert agreement(labels, expected) >= PARITY_FLOOR, backend.describe()
        meta = backend.metadata
        assert meta.class_names == CLASS_NAMES and np.array_equal(meta.palette, PALETTE)
        assert meta.input_size_hw == (32, 64)
    assert open_backend(onnx_static).metadata.max_batch == 1  # a batch of 4 went through in four calls
    # a dynamic model at another size and batch
    frames = val_frames(toy_data, size=(96, 48), count=3)
    labels = open_backend(onnx_dynamic[0])(frames)
    assert agreement(labels, pytorch_labels(checkpoint, frames)) >= PARITY_FLOOR


def test_torch_backend_probabilities(toy_data, checkpoint):
    frames = val_frames(toy_data, count=2)
    probs = open_backend(checkpoint, device="cpu", output="probs")(frames)
    assert probs.shape == (2, 19, 32, 64) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert agreement(probs.argmax(axis=1), pytorch_labels(checkpoint, frames)) >= PARITY_FLOOR


def test_backend_choice_and_errors(tmp_path, checkpoint, onnx_dynamic, onnx_static, monkeypatch):
    assert backend_for("a.pt") == "torch" and backend_for("a.onnx") == "onnxruntime"
    assert backend_for("a.engine") == "tensorrt" and backend_for("a.onnx", "tensorrt") == "tensorrt"
    with pytest.raises(CirnError, match="cannot tell how to run"):
        backend_for("model.h5")
    with pytest.raises(CirnError, match="cirn-export"):
        backend_for("best.pt", "onnxruntime")
    with pytest.raises(CirnError, match="cannot run a .onnx"):
        backend_for("model.onnx", "torch")
    with pytest.raises(CirnError, match="does not exist"):
        open_backend(tmp_path / "missing.onnx")
    with pytest.raises(CirnError, match="NVIDIA GPUs only"):
        open_backend(onnx_dynamic[0], "tensorrt", "cpu")
    static = open_backend(onnx_static)
    with pytest.raises(CirnError, match="static"):
        inference_size_hw(static.metadata, "128x64")
    with pytest.raises(CirnError, match="static"):
        static(np.zeros((1, 64, 128, 3), np.uint8))
    assert inference_size_hw(open_backend(onnx_dynamic[0]).metadata, "128x64") == (64, 128)
    with pytest.raises(CirnError, match="WIDTHxHEIGHT"):
        inference_size_hw(static.metadata, "128")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")  # the fallback under test
def test_a_cuda_provider_without_a_gpu_runs_on_the_cpu(onnx_dynamic, monkeypatch):
    """onnxruntime-gpu lists its CUDA provider on machines without a GPU, and a CUDA session there silently runs on
    the CPU: without --device the backend probes a session and runs on the CPU; --device cuda stays an error."""
    import onnxruntime
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = open_backend(onnx_dynamic[0])
    assert backend.device == "cpu" and backend.providers == ["CPUExecutionProvider"]
    assert backend(np.zeros((1, 32, 64, 3), np.uint8)).shape == (1, 32, 64)
    with pytest.raises(CirnError, match="fell back"):
        open_backend(onnx_dynamic[0], device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without a GPU")
def test_missing_gpu_and_libraries_say_what_to_install(tmp_path, checkpoint, onnx_dynamic):
    with pytest.raises(CirnError, match="no CUDA GPU"):
        open_backend(checkpoint, device="cuda")
    with pytest.raises(CirnError, match="onnxruntime-gpu"):
        open_backend(onnx_dynamic[0], device="cuda")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(CirnError, match="tensorrt package"):
            open_backend(engine)
    else:
        with pytest.raises(CirnError, match="GPU"):
            open_backend(engine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_autocast_matches_cpu(toy_data, checkpoint):
    frames = val_frames(toy_data)
    expected = pytorch_labels(checkpoint, frames)
    for precision, floor in (("fp32", PARITY_FLOOR), ("fp16", 98.0), ("bf16", 95.0)):
        labels = open_backend(checkpoint, device="cuda", precision=precision)(frames)
        assert agreement(labels, expected) >= floor, precision


def test_default_model_prefers_the_export(tmp_path):
    with pytest.raises(CirnError, match="no --model given"):
        find_default_model(tmp_path / "runs")
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "best.pt").write_bytes(b"")
    assert find_default_model(tmp_path / "runs").name == "best.pt"
    (tmp_path / "runs" / "a" / "export").mkdir()
    (tmp_path / "runs" / "a" / "export" / "model.onnx").write_bytes(b"")
    assert find_default_model(tmp_path / "runs").name == "model.onnx"


# ---------------------------------------------------------------- the pipeline
@pytest.mark.parametrize("kind", ["video", "folder"])
def test_pipeline_keeps_count_and_order(tmp_path, kind):
    values = [20 * k + 10 for k in range(10)]
    if kind == "video":
        source = write_video(tmp_path / "vid.mp4", values)
        names = [f"vid_000000_{k:06d}" for k in range(0, 10, 2)]
    else:
        source = tmp_path / "images"
        source.mkdir()
        for k, value in enumerate(values):
            cv2.imwrite(str(source / f"f{k:02d}.png"), np.full((32, 64, 3), value, np.uint8))
        names = [f"f{k:02d}" for k in range(0, 10, 2)]
    backend = IndexBackend()
    info = run(source, backend, out=tmp_path / "out.mp4", labels_dir=tmp_path / "labels", npz=tmp_path / "l.npz",
               summary=tmp_path / "summary.json", batch=3, stride=2, quiet=True)
    assert backend.batches == [3, 2]
    assert info["frames"] == {"processed": 5, "decoded": 5, "expected": 5, "skipped": 0, "skipped_names": []}
    assert info["complete"]
    for name, k in zip(names, range(0, 10, 2), strict=True):
        labels = cv2.imread(str(tmp_path / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (32, 64) and (labels == k).all(), name
    with np.load(tmp_path / "l.npz") as npz:
        assert list(npz["_index"]) == [0, 2, 4, 6, 8]
        assert [int(npz[name][0, 0]) for name in names] == [0, 2, 4, 6, 8]
    assert len(count_frames(tmp_path / "out.mp4")) == 5
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["frames"]["processed"] == 5 and saved["timing"]["fps"]["end_to_end"] > 0
    assert {"p50", "p90", "p99"} <= set(saved["latency_ms"]["inference_batch"])
    assert not list(tmp_path.glob(".*partial*"))  # no temporary files left


def test_frames_resized_to_the_model_and_labels_back(tmp_path, checkpoint, onnx_static):
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    for k, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"city_000000_{k:06d}_leftImg8bit.png"), frame[..., ::-1])
    info = run(folder, open_backend(onnx_static), labels_dir=tmp_path / "labels", side_by_side=True,
               out=tmp_path / "o.mp4", quiet=True)
    assert info["input_size_hw"] == [32, 64] and info["frame_size_hw"] == [64, 128]
    labels = cv2.imread(str(tmp_path / "labels" / "city_000000_000000.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (64, 128)  # back at the frame's size, named without _leftImg8bit
    video = count_frames(tmp_path / "o.mp4")
    assert len(video) == 3 and video[0].shape == (64, 256, 3)  # side by side


def test_pipeline_with_the_torch_backend_and_a_chosen_size(tmp_path, clip, checkpoint):
    info = run(clip["video"], open_backend(checkpoint, device="cpu"), imgsz="96x48", batch=2,
               labels_dir=tmp_path / "labels", quiet=True)
    assert info["backend"] == "torch" and info["input_size_hw"] == [48, 96] and info["frames"]["processed"] == 8
    labels = cv2.imread(str(tmp_path / "labels" / "drive_000000_000007.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (32, 64)  # the clip's frame size


def test_overlay_and_legend():
    image = np.full((64, 128, 3), 100, np.uint8)
    labels = np.zeros((64, 128), np.uint8)
    labels[:, 64:] = 13
    shown = overlay(image, labels, PALETTE, alpha=1.0)
    assert (shown[0, 0] == PALETTE[0]).all() and (shown[0, 127] == PALETTE[13]).all()
    with_legend = overlay(image, labels, PALETTE, alpha=1.0, class_names=CLASS_NAMES)
    assert not np.array_equal(with_legend[:20, :60], shown[:20, :60])  # the legend is drawn at the top left
    assert np.array_equal(with_legend[40:, 100:], shown[40:, 100:])
    from cirn.runtime.outputs import _legend_layout
    _, text_h, line, _ = _legend_layout(64, tuple(CLASS_NAMES))
    pad, middle = max(2, text_h // 3), text_h // 2
    for row, c in enumerate((0, 13)):  # swatches in class order, in the exact class colour (car has zero channels)
        assert (with_legend[pad + row * line + middle, pad + middle] == PALETTE[c]).all(), c
    assert resize_labels(np.array([[1, 2]], np.uint8), (2, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]


# ---------------------------------------------------------------- bad inputs, failures, Ctrl-C
def bad_inputs(tmp_path):
    """A missing file, a text file, a video with an unknown codec, a video without frames."""
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    avi = write_video(tmp_path / "ok.avi", [10, 30], fourcc="MJPG")
    codec = tmp_path / "codec.avi"
    codec.write_bytes(avi.read_bytes().replace(b"MJPG", b"ZZZZ"))  # a codec FFmpeg has never heard of
    empty = write_video(tmp_path / "empty.avi", [], fourcc="MJPG")
    return {"missing": (tmp_path / "missing.mp4", "does not exist"), "text": (text, "cannot open"),
            "codec": (codec, "codec"), "empty": (empty, "no frames")}


def test_bad_inputs_are_clear_errors(tmp_path, onnx_static):
    for name, (path, message) in bad_inputs(tmp_path).items():
        with pytest.raises(CirnError, match=message):
            open_source(str(path))
        result = CliRunner().invoke(run_main, [str(path), "--model", str(onnx_static), "--quiet"])
        assert result.exit_code == 2, (name, result.output)
        assert message in result.output and "Traceback" not in result.output, name
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(CirnError, match="no images"):
        open_source(str(empty_dir))
    assert not list(tmp_path.glob("*_seg.*"))  # nothing written


def test_decode_failure_mid_stream_keeps_what_was_decoded(tmp_path):
    video = write_video(tmp_path / "drive.avi", [20 * k + 10 for k in range(10)], fourcc="MJPG")
    data = video.read_bytes()
    chunks = [i for i in range(len(data)) if data[i:i + 4] == b"00dc"]  # [index placeholder, frame 0, frame 1, ...]
    broken = tmp_path / "broken.avi"
    broken.write_bytes(data[:chunks[1 + 6]])  # the recording stopped after 6 of the 10 announced frames
    backend = IndexBackend()
    info = run(broken, backend, out=tmp_path / "out.mp4", labels_dir=tmp_path / "labels", batch=4, quiet=True)
    assert info["frames"]["processed"] == 6 and not info["complete"]
    assert "stopped at frame 6 of the 10" in info["decode_error"]
    assert len(count_frames(tmp_path / "out.mp4")) == 6
    assert sorted(p.name for p in (tmp_path / "labels").iterdir())[-1] == "broken_000000_000005.png"


def test_decoder_exception_ends_the_stream_cleanly(tmp_path, monkeypatch):
    source = write_video(tmp_path / "v.mp4", [20 * k + 10 for k in range(8)])
    from cirn.runtime import sources
    original = sources.VideoSource.__iter__

    def failing(self):
        for frame in original(self):
            if frame.index == 5:
                raise OSError("device unplugged")
            yield frame
    monkeypatch.setattr(sources.VideoSource, "__iter__", failing)
    info = run(source, IndexBackend(), out=tmp_path / "out.mp4", batch=2, quiet=True)
    assert info["frames"]["processed"] == 5 and "device unplugged" in info["decode_error"]
    assert len(count_frames(tmp_path / "out.mp4")) == 5


def test_ctrl_c_finalises_a_playable_partial_video(tmp_path, monkeypatch):
    source = write_video(tmp_path / "v.mp4", [20 * k + 10 for k in range(12)])
    backend = IndexBackend(interrupt_at_call=3)  # Ctrl-C during the third batch
    with pytest.raises(Interrupted) as caught:
        run(source, backend, out=tmp_path / "out.mp4", npz=tmp_path / "l.npz", summary=tmp_path / "s.json",
            batch=2, quiet=True)
    info = caught.value.summary
    assert info["stopped"] == "interrupted" and info["frames"]["processed"] == 4 and not info["complete"]
    frames = count_frames(tmp_path / "out.mp4")  # under its final name, and it plays
    assert len(frames) == 4
    assert json.loads((tmp_path / "s.json").read_text())["note"].startswith("interrupted")
    assert list(np.load(tmp_path / "l.npz")["_index"]) == [0, 1, 2, 3]
    assert not list(tmp_path.glob(".*partial*"))
    # the same through the command: exit code 130 and a note on stderr
    import cirn.runtime
    monkeypatch.setattr(cirn.runtime, "open_backend", lambda *a, **k: IndexBackend(interrupt_at_call=2))
    model = tmp_path / "fake.onnx"
    model.write_bytes(b"")
    result = CliRunner().invoke(run_main, [str(source), "--model", str(model), "--out", str(tmp_path / "c.mp4"),
                                           "--quiet"])
    assert result.exit_code == 130
    assert "interrupted: stopped after 1 frames" in result.output and "c.mp4" in result.output
    assert len(count_frames(tmp_path / "c.mp4")) == 1


def test_a_failing_backend_leaves_no_partial_files(tmp_path):
    source = write_video(tmp_path / "v.mp4", [10] * 6)

    class Broken(IndexBackend):
        def _infer(self, frames):
            if self.calls == 1:
                raise RuntimeError("out of memory")
            return super()._infer(frames)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(source, Broken(), out=tmp_path / "out.mp4", npz=tmp_path / "l.npz", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


# ---------------------------------------------------------------- the toy clip and video mIoU
def test_toy_video_is_a_deterministic_drive(tmp_path, clip):
    assert len(count_frames(clip["video"])) == 8
    labels = _clip_labels(clip)
    assert [p.name for p in labels][:2] == ["drive_000000_000000_gtFine_labelIds.png",
                                            "drive_000000_000001_gtFine_labelIds.png"]
    again = toy.render_video(tmp_path / "drive.mp4", frames=8, fps=10, size_wh=(64, 32))
    for a, b in zip(_clip_labels(clip), _clip_labels(again), strict=True):
        assert a.read_bytes() == b.read_bytes()
    first, last = (LABELID_TO_TRAINID[cv2.imread(str(p), cv2.IMREAD_UNCHANGED)] for p in (labels[0], labels[-1]))
    assert not np.array_equal(first, last)  # the camera moved
    # one look for the whole clip (scalars), new noise every frame (arrays)
    a, b = toy.video._ClipCamera(0, 0), toy.video._ClipCamera(0, 1)
    assert a.uniform(0, 1) == b.uniform(0, 1) and a.normal(0, 1, 3).tolist() == b.normal(0, 1, 3).tolist()
    assert not np.array_equal(a.standard_normal((8, 8)), b.standard_normal((8, 8)))


def _clip_labels(clip):
    from pathlib import Path
    return sorted((Path(clip["root"]) / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))


def test_toy_video_cli(tmp_path):
    out = tmp_path / "c.mp4"
    result = CliRunner().invoke(data_main, ["toy-video", "--out", str(out), "--frames", "3", "--size", "64x32"])
    assert result.exit_code == 0, result.output
    assert len(count_frames(out)) == 3 and len(list((tmp_path / "c" / "gtFine" / "val" / "c").iterdir())) == 3
    result = CliRunner().invoke(data_main, ["toy-video", "--out", str(tmp_path / "c.avi")])
    assert result.exit_code == 2 and ".mp4" in result.output


def test_video_miou_through_cirn_eval(tmp_path, clip, onnx_dynamic):
    root = clip["root"]
    # the ground truth scored against itself
    result = CliRunner().invoke(eval_main, ["--pred-dir", f"{root}/gtFine/val", "--target-root", root,
                                            "--pred-format", "labelid", "--json", str(tmp_path / "gt.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "gt.json").read_text())["miou"] == pytest.approx(100.0)
    # the model's labels from cirn-run, named like the frames
    labels = tmp_path / "labels"
    result = CliRunner().invoke(run_main, [clip["video"], "--model", str(onnx_dynamic[0]), "--labels-dir",
                                           str(labels), "--out", str(tmp_path / "seg.mp4"), "--batch", "3",
                                           "--benchmark", "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(eval_main, ["--pred-dir", str(labels), "--target-root", root,
                                            "--json", str(tmp_path / "model.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "model.json").read_text())
    assert scores["num_images"] == 8 and 0.0 <= scores["miou"] <= 100.0
    summary = json.loads((tmp_path / "seg.json").read_text())  # the default summary beside --out
    assert summary["frames"]["processed"] == 8 and summary["benchmark"]["ratio"] > 0
    assert summary["benchmark"]["pure_inference_fps"] > 0 and summary["class_shares"]["overall"]


def test_cli_without_model_or_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "v.mp4", [10, 30])
    result = CliRunner().invoke(run_main, ["v.mp4"])
    assert result.exit_code == 2 and "no --model given" in result.output


def test_cli_default_output_names(tmp_path, monkeypatch, onnx_static):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "toy" / "export"
    runs.mkdir(parents=True)
    shutil.copy(onnx_static, runs / "model.onnx")
    write_video(tmp_path / "v.mp4", [10, 30, 50])
    result = CliRunner().invoke(run_main, ["v.mp4", "--stride", "2"])
    assert result.exit_code == 0, result.output
    assert "FPS end to end" in result.output
    assert len(count_frames(tmp_path / "v_seg.mp4")) == 2
    assert json.loads((tmp_path / "v_seg.json").read_text())["frames"]["processed"] == 2
