"""cirn-export: the deployed graph, ONNX variants, metadata, parity (and its failure), TensorRT around the GPU."""
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cirn.cli import export_main
from cirn.export import DeployModel, export_checkpoint, find_latest_checkpoint, read_metadata, write_metadata
from cirn.export.onnx_export import export_onnx
from cirn.export.parity import OnnxRunner
from cirn.export.precision import quantize_int8
from cirn.export.tensorrt import engine_onnx, ort_tensorrt_onnx
from cirn.runtime.ort import ort_tensorrt_providers
from cirn.runtime.tensorrt import profile_shapes, shape_string, trt_generation
from cirn.train.datasets import normalize
from cirn.common.errors import CirnError
from cirn.train.labels import CLASS_NAMES, PALETTE
from cirn.train.models import create_model, upsample


@pytest.fixture(scope="module")
def dynamic_export(checkpoint, tmp_path_factory):
    """The default exporter through the CLI: dynamic shapes, FP32 + FP16 + INT8, labels out."""
    out = tmp_path_factory.mktemp("export") / "dynamic"
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), "--dynamic", "--fp16", "--int8",
                                              "--calib-images", "4", "--parity-images", "4"])
    assert result.exit_code == 0, result.output
    return out


def tiny_segnet(normalization, num_classes=3):
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=num_classes, num_attention=2, base_width=4)
    model.normalization = normalization
    return model.eval()


def random_frames(batch=2, height=32, width=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 3, height, width), dtype=np.uint8))


# ---------------------------------------------------------------- the graph module
@pytest.mark.parametrize("normalization", ["imagenet", "caffe"])
def test_deploy_model_is_the_evaluation_path(normalization):
    model = tiny_segnet(normalization)
    frames = random_frames()  # (2, 3, 32, 64) uint8 RGB
    images = torch.stack([normalize(f.permute(1, 2, 0).numpy(), normalization) for f in frames])
    with torch.no_grad():
        expected = upsample(model.fused(images), (32, 64))  # what evaluation computes
        deploy = DeployModel(model, "logits")
        assert torch.allclose(deploy(frames), expected, atol=1e-5)
        assert torch.allclose(deploy(frames.float()), expected, atol=1e-5)  # float frames, same values
        labels = DeployModel(model, "labels")(frames)
        probs = DeployModel(model, "probs")(frames)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 32, 64)
    assert torch.equal(labels.long(), expected.argmax(1))
    assert probs.shape == (2, 3, 32, 64) and torch.allclose(probs.sum(1), torch.ones(2, 32, 64), atol=1e-5)


def test_deploy_model_rejects_unknown_output():
    with pytest.raises(CirnError, match="unknown output"):
        DeployModel(tiny_segnet("imagenet"), "scores")


# ---------------------------------------------------------------- ONNX through the CLI (dynamo, dynamic)
def test_dynamic_export_writes_every_variant_and_passes_parity(dynamic_export):
    assert sorted(p.name for p in dynamic_export.iterdir()) == [
        "model.fp16.onnx", "model.int8.onnx", "model.onnx", "parity.json"]
    report = json.loads((dynamic_export / "parity.json").read_text())
    rows = {(r["name"], tuple(r["size"])): r for r in report["rows"]}
    assert set(rows) == {(f"onnx-{p}", s) for p in ("fp32", "fp16", "int8") for s in ((32, 64), (24, 48))}
    assert report["passed"] and all(r["batch"] == 2 for r in report["rows"])
    for size in ((32, 64), (24, 48)):
        fp32 = rows[("onnx-fp32", size)]
        assert fp32["label_agreement"] >= 99.9 and fp32["max_abs_logit_diff"] < 1e-4
        assert fp32["miou_export"] == pytest.approx(fp32["miou_torch"], abs=0.5)
        # FP16 and INT8 ran in ONNX Runtime and were scored against PyTorch FP32.
        assert rows[("onnx-fp16", size)]["label_agreement"] >= 98.0
        assert 0 < rows[("onnx-int8", size)]["max_abs_logit_diff"] < 1.0
    assert report["int8_vs_fp32"]["fp32_ms"] > 0 and report["int8_vs_fp32"]["int8_ms"] > 0


def test_one_dynamic_model_runs_at_two_sizes(dynamic_export, checkpoint):
    from cirn.train.checkpoint import load_model
    model, _ = load_model(checkpoint)
    runner = OnnxRunner(dynamic_export / "model.onnx")
    for batch, height, width in ((1, 32, 64), (3, 40, 72)):
        frames = random_frames(batch, height, width, seed=height)
        labels, logits = runner.run(frames.numpy())
        with torch.no_grad():
            expected = DeployModel(model, "logits")(frames)
        assert labels.dtype == np.uint8 and labels.shape == (batch, height, width)
        assert np.abs(logits - expected.numpy()).max() < 1e-4
        assert (labels == expected.argmax(1).numpy()).mean() >= 0.999


def test_metadata_round_trip(dynamic_export, checkpoint):
    from cirn.train.checkpoint import load_checkpoint
    state = load_checkpoint(checkpoint)
    for name, precision in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"), ("model.int8.onnx", "int8")):
        meta = read_metadata(dynamic_export / name)
        assert meta["precision"] == precision
        assert meta["class_names"] == list(CLASS_NAMES) and meta["palette"] == PALETTE.tolist()
        assert meta["normalization"] == "imagenet" and meta["input_size_hw"] == [32, 64] and meta["dynamic"]
        assert meta["input"]["dtype"] == "uint8" and meta["output"] == "labels"
        assert meta["source_checkpoint"] == str(checkpoint.resolve())
        assert meta["config_digest"] == state["config_digest"]
        assert meta["exporter"] == "dynamo" and meta["opset"] == 18


@pytest.mark.parametrize("target, activation_type", [("cpu", "uint8"), ("tensorrt", "int8")])
def test_int8_targets(dynamic_export, tmp_path, target, activation_type):
    import onnx
    frames = [random_frames(1, seed=i)[0].numpy() for i in range(2)]
    path = quantize_int8(dynamic_export / "model.onnx", tmp_path / "q.onnx", frames, target=target)
    model = onnx.load(str(path))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [weights[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.dtype(activation_type) for z in zero_points)
    if target == "tensorrt":
        assert all((z == 0).all() for z in zero_points)  # symmetric: what TensorRT's Q/DQ mode accepts
    labels, _ = OnnxRunner(path).run(np.stack(frames))
    assert labels.shape == (2, 32, 64)


def test_calibration_frames_from_a_cityscapes_root_or_any_folder(toy_data, tmp_path):
    from cirn.export.frames import calibration_frames
    frames = calibration_frames(None, (64, 32), 3, default_root=toy_data / "cityscapes")  # the train split
    assert len(frames) == 3 and frames[0].image.shape == (3, 32, 64) and frames[0].image.dtype == np.uint8
    assert all(f.label is None for f in frames)
    frames = calibration_frames(toy_data / "gta5" / "images", (48, 24), 2)
    assert [f.image.shape for f in frames] == [(3, 24, 48)] * 2
    with pytest.raises(CirnError, match="no images"):
        calibration_frames(tmp_path, (64, 32), 2)


def test_write_metadata_replaces_and_keeps_keys(dynamic_export, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes((dynamic_export / "model.onnx").read_bytes())
    write_metadata(path, {"precision": "custom", "extra": {"a": [1, 2]}})
    meta = read_metadata(path)
    assert meta["precision"] == "custom" and meta["extra"] == {"a": [1, 2]} and meta["output"] == "labels"


def test_read_metadata_errors(tmp_path):
    with pytest.raises(CirnError, match="does not exist"):
        read_metadata(tmp_path / "missing.onnx")
    (tmp_path / "model.engine").write_bytes(b"")
    with pytest.raises(CirnError, match="no metadata file"):
        read_metadata(tmp_path / "model.engine")


# ---------------------------------------------------------------- outputs and exporters
@pytest.mark.parametrize("output, exporter", [("probs", "torchscript"), ("logits", "torchscript"),
                                              ("logits", "dynamo")])
def test_probs_and_logits_outputs(checkpoint, tmp_path, output, exporter):
    result = export_checkpoint(checkpoint, tmp_path / "out", output=output, exporter=exporter, parity_images=2)
    path = tmp_path / "out" / "model.onnx"
    meta = read_metadata(path)
    assert meta["output"] == output and meta["output_dtype"] == "float32" and not meta["dynamic"]
    rows = result["parity"]["rows"]
    assert len(rows) == 1 and rows[0]["label_agreement"] >= 99.9 and rows[0]["max_abs_logit_diff"] < 1e-4
    values, _ = OnnxRunner(path).run(random_frames(1).numpy())
    assert values.shape == (1, 19, 32, 64) and values.dtype == np.float32
    if output == "probs":
        assert np.allclose(values.sum(axis=1), 1.0, atol=1e-4)


def test_float_input_graph(checkpoint, tmp_path):
    path = export_onnx(DeployModel(tiny_segnet("caffe"), "labels"), tmp_path / "m.onnx", 32, 64,
                       exporter="torchscript", input_dtype="float32")
    import onnx
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    frames = random_frames(1)
    labels, _ = OnnxRunner(path).run(frames.numpy())  # the runner casts uint8 frames to the graph's float input
    with torch.no_grad():
        expected = DeployModel(tiny_segnet("caffe"), "labels")(frames)
    assert (labels == expected.numpy()).mean() >= 0.999


def test_simplify_runs_or_says_why(checkpoint, tmp_path):
    messages = []
    export_checkpoint(checkpoint, tmp_path / "out", exporter="torchscript", simplify=True, parity_images=2,
                      log=messages.append)
    try:
        import onnxslim  # noqa: F401
        have_simplifier = True
    except ImportError:
        try:
            import onnxsim  # noqa: F401
            have_simplifier = True
        except ImportError:
            have_simplifier = False
    said = any("neither onnxslim nor onnxsim" in m for m in messages)
    assert said != have_simplifier
    assert (tmp_path / "out" / "model.onnx").is_file()


# ---------------------------------------------------------------- failures leave nothing
def test_parity_failure_fails_loudly_and_writes_nothing(checkpoint, tmp_path):
    out = tmp_path / "deploy"
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), "--fp16", "--exporter",
                                              "torchscript", "--parity-images", "2", "--parity-floor-fp16", "100.1"])
    assert result.exit_code != 0
    assert "parity check failed" in result.output and "onnx-fp16" in result.output
    assert not out.exists()
    # An existing folder keeps exactly what it held: no half-written models, no temporary folders.
    out.mkdir()
    (out / "keep.txt").write_text("old")
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), "--fp16", "--exporter",
                                              "torchscript", "--parity-images", "2", "--parity-floor-fp16", "100.1"])
    assert result.exit_code != 0
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def _negate_classifiers(path):
    """The exported graph with its last convolution's weights and bias negated: argmax becomes argmin."""
    import onnx
    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    last_conv = [node for node in model.graph.node if node.op_type == "Conv"][-1]
    for name in last_conv.input[1:]:
        if name in weights:
            array = onnx.numpy_helper.to_array(weights[name])
            weights[name].CopyFrom(onnx.numpy_helper.from_array(-array, name))
    onnx.save(model, str(path))


@pytest.mark.parametrize("fault", ["perturbed weight", "wrong normalization"])
def test_parity_gate_catches_a_real_divergence(checkpoint, tmp_path, monkeypatch, fault):
    """Not an impossible floor: a graph that really computes something else fails at the default floors."""
    import cirn.export.pipeline as pipeline
    export_for_real = pipeline.export_onnx

    def faulty_export(deploy, path, *args, **kwargs):
        if fault == "wrong normalization":  # frames go in as 0-255 values, the normalisation forgotten
            deploy.normalize = lambda frames: frames.float()
        try:
            export_for_real(deploy, path, *args, **kwargs)
        finally:
            deploy.__dict__.pop("normalize", None)
        if fault == "perturbed weight":
            _negate_classifiers(path)
        return path

    monkeypatch.setattr(pipeline, "export_onnx", faulty_export)
    out = tmp_path / "deploy"
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), "--exporter", "torchscript",
                                              "--parity-images", "2"])
    assert result.exit_code == 2, result.output
    assert "parity check failed" in result.output and "onnx-fp32" in result.output and "floor 99.9%" in result.output
    assert not out.exists()


def test_parity_off_exports_without_checking(checkpoint, tmp_path, monkeypatch):
    """The benchmarks' export: no parity images read, no floor applied, no parity.json (a stale one goes)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "parity.json").write_text("{}")
    monkeypatch.setattr("cirn.export.pipeline.cityscapes_frames", lambda *args, **kwargs: pytest.fail("read images"))
    result = export_checkpoint(checkpoint, out, fp16=True, exporter="torchscript", floors={"fp16": 100.1},
                               parity=False)
    assert result["parity"] is None
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx", "model.onnx"]
    assert read_metadata(out / "model.fp16.onnx")["precision"] == "fp16"


def test_no_checkpoint_says_to_train_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_main, [])
    assert result.exit_code == 2
    assert "cirn-train stage2" in result.output and "Traceback" not in result.output


def test_latest_checkpoint_is_the_newest_best(tmp_path):
    old, new = tmp_path / "runs" / "a" / "best.pt", tmp_path / "runs" / "b" / "deep" / "best.pt"
    for path, mtime in ((old, 1_000_000), (new, 2_000_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    (tmp_path / "runs" / "a" / "last.pt").write_bytes(b"")
    assert find_latest_checkpoint(tmp_path / "runs") == new


def test_calib_needs_int8(checkpoint, tmp_path):
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(tmp_path / "o"), "--calib",
                                              str(tmp_path)])
    assert result.exit_code == 2 and "needs --int8" in result.output


# ---------------------------------------------------------------- TensorRT
def test_tensorrt_missing_is_a_clear_error_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, installed or not
    out = tmp_path / "engines"
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), "--format", "tensorrt"])
    assert result.exit_code == 2
    assert "TensorRT" in result.output and "--format onnx" in result.output
    assert not out.exists()


def test_tensorrt_without_gpu_is_a_clear_error(checkpoint, tmp_path, monkeypatch):
    import cirn.runtime.tensorrt as runtime_tensorrt
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(runtime_tensorrt, "import_cudart", lambda: types.SimpleNamespace())  # cuda-python "there"
    monkeypatch.setattr(runtime_tensorrt, "cuda_device_count", lambda: 0)
    out = tmp_path / "engines"
    result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), "--format", "all"])
    assert result.exit_code == 2 and "no GPU is visible" in result.output
    assert not out.exists()


def test_profile_shapes():
    static = profile_shapes(128, 256)
    assert static == {"min": (1, 3, 128, 256), "opt": (1, 3, 128, 256), "max": (1, 3, 128, 256)}
    dynamic = profile_shapes(512, 1024, dynamic=True, max_batch=4)
    assert dynamic == {"min": (1, 3, 256, 512), "opt": (1, 3, 512, 1024), "max": (4, 3, 1024, 2048)}
    odd = profile_shapes(36, 60, dynamic=True, max_batch=2, multiple=8)
    assert odd == {"min": (1, 3, 16, 24), "opt": (1, 3, 36, 60), "max": (2, 3, 72, 120)}
    assert profile_shapes(8, 8, dynamic=True)["min"] == (1, 3, 8, 8)  # never below one output stride
    assert shape_string((1, 3, 128, 256)) == "1x3x128x256"
    with pytest.raises(CirnError):
        profile_shapes(128, 256, dynamic=True, max_batch=0)


def test_tensorrt_generations_pick_flags_or_graphs():
    assert trt_generation("10.3.0") == 10 and trt_generation("11.4.0.106") == 11
    with pytest.raises(CirnError, match="too old"):
        trt_generation("8.6.1")
    files = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx",
             "int8-tensorrt": "model.int8.tensorrt.onnx"}
    assert [engine_onnx(p, 10, files).name for p in ("fp32", "fp16", "int8")] == ["model.onnx"] * 3
    assert [engine_onnx(p, 11, files).name for p in ("fp32", "fp16", "int8")] == [
        "model.onnx", "model.fp16.onnx", "model.int8.tensorrt.onnx"]
    with pytest.raises(CirnError, match="not exported"):
        engine_onnx("fp16", 11, {"fp32": "model.onnx"})
    assert ort_tensorrt_onnx("int8", 10, files).name == "model.int8.tensorrt.onnx"
    assert ort_tensorrt_onnx("fp16", 10, files).name == "model.onnx"
    profile = profile_shapes(32, 64, dynamic=True)
    (name, options), _ = ort_tensorrt_providers("int8", profile, "/cache", generation=10)
    assert name == "TensorrtExecutionProvider" and options["trt_int8_enable"] and options["trt_fp16_enable"]
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == "/cache"
    assert options["trt_profile_max_shapes"] == "frames:4x3x64x128"
    (_, options), _ = ort_tensorrt_providers("fp16", profile, "/cache", generation=11)
    assert "trt_fp16_enable" not in options and "trt_int8_enable" not in options


def _tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs the tensorrt package and a CUDA GPU")
def test_tensorrt_engines_match_pytorch(checkpoint, tmp_path):
    result = export_checkpoint(checkpoint, tmp_path / "out", fmt="all", fp16=True, int8=True, dynamic=True,
                               parity_images=4, calib_images=4)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.engine", "model.fp16.engine", "model.int8.engine", "model.engine.json",
            "model.int8.tensorrt.onnx", "tensorrt.timing.cache"} <= names
    rows = [r for r in result["parity"]["rows"] if r["name"].startswith("trt-")]
    assert len(rows) == 6 and all(r["passed"] for r in rows)
    assert read_metadata(tmp_path / "out" / "model.fp16.engine")["tensorrt"]["precision"] == "fp16"
