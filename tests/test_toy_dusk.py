"""The toy target's second look, 'dusk': the same labels, another image; its own folder, manifest, config key and CLI.
The camera look stays byte-identical to what it was before there were looks."""
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cirn.cli import data_main
from cirn.common.errors import CirnError
from cirn.train import toy
from cirn.train.config import TOY_LOOKS, DataConfig, load_config

TINY = dict(num_source=2, num_train=2, num_val=1, source_size_wh=(64, 36), target_size_wh=(64, 32), workers=1)


def sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def digests(root, folder):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def test_dusk_paints_the_same_labels_as_the_target_and_a_clearly_different_image():
    for seed in range(3):
        scene = toy.sample_scene(np.random.default_rng(seed), "target")
        camera, dusk = (toy.render_frame(scene, (64, 32), style, instances=True, rng=np.random.default_rng(seed))
                        for style in ("target", "dusk"))
        np.testing.assert_array_equal(dusk.labels, camera.labels)
        np.testing.assert_array_equal(dusk.instances, camera.instances)
        assert np.abs(dusk.image.astype(np.float32) - camera.image).mean() > 15  # about 20 to 35 at 256x128
        assert 0.5 * camera.image.mean() < dusk.image.mean() < 0.85 * camera.image.mean()  # dimmer, not black


def test_the_camera_look_is_byte_identical_to_before():
    """sha256 of frames rendered by the code before the dusk look existed (numpy 2.4, Pillow 13)."""
    scene = toy.sample_scene(np.random.default_rng(3), "target")
    frame = toy.render_frame(scene, (64, 32), "target", rng=np.random.default_rng(4))
    assert sha256(frame.image) == "1fc3b90683c98a558ba3cd06d5c27cb22133894d206814f6073ca932ac9f5b3b"
    assert sha256(frame.labels) == "daf5d8354c2a427bacd97d860a3d71896ca9665de20275fa2cb1f9a737328a66"
    clip = toy.render_frame(scene, (64, 32), "target", camera_forward=2.0, rng=toy.video._ClipCamera(0, 1))
    assert sha256(clip.image) == "27cd32a90b66a9698913fe0d2567a3f92cf2bc83a15cb840404005ece4a079bf"
    source = toy.render_frame(scene, (64, 32), "source")
    assert sha256(source.image) == "620af87a7dc90dc5a983d063fce367f609c448a0fefa185fd231fd2cb6288099"


def test_each_look_has_its_own_folder_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRN_DATA", str(tmp_path))
    assert toy.default_root(0, "camera") == tmp_path / "toy"
    assert toy.default_root(0, "dusk") == tmp_path / "toy-dusk"
    assert toy.default_root(2, "dusk") == tmp_path / "toy-dusk-seed2"
    assert set(toy.dataset.TARGET_STYLES) == set(TOY_LOOKS)

    camera_root, dusk_root = toy.default_root(0), toy.default_root(0, "dusk")
    toy.generate(camera_root, **TINY)
    summary = toy.generate(dusk_root, look="dusk", **TINY)
    assert "cityscapes layout, dusk look" in summary
    camera, dusk = (json.loads((root / "toy.json").read_text()) for root in (camera_root, dusk_root))
    assert "look" not in camera  # a camera dataset's toy.json is as it was before there were looks
    assert dusk == {**camera, "look": "dusk"}

    assert digests(dusk_root, "gta5") == digests(camera_root, "gta5")  # the source does not depend on the look
    camera_target, dusk_target = digests(camera_root, "cityscapes"), digests(dusk_root, "cityscapes")
    assert camera_target.keys() == dusk_target.keys()
    for name in camera_target:
        assert (camera_target[name] == dusk_target[name]) == ("gtFine" in name)  # same labels, other images

    assert "already complete" in toy.generate(dusk_root, look="dusk", **TINY)
    with pytest.raises(CirnError, match="of the dusk look, not camera"):
        toy.generate(dusk_root, **TINY)
    with pytest.raises(CirnError, match="of the camera look, not dusk"):
        toy.generate(camera_root, look="dusk", **TINY)
    with pytest.raises(CirnError, match="unknown toy look 'night'"):
        toy.generate(tmp_path / "night", look="night", **TINY)
    assert not (tmp_path / "night").exists()


def test_an_unfinished_run_of_the_other_look_is_not_reused(tmp_path, monkeypatch):
    real = toy.dataset._render_task

    def crash(job, task):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy.dataset, "_render_task", crash)
    with pytest.raises(KeyboardInterrupt):
        toy.generate(tmp_path, look="dusk", **TINY)
    monkeypatch.setattr(toy.dataset, "_render_task", real)
    with pytest.raises(CirnError, match="an unfinished toy dataset of the dusk look"):
        toy.generate(tmp_path, **TINY)
    assert "5 images rendered" in toy.generate(tmp_path, look="dusk", **TINY)


def test_ensure_toy_follows_the_look(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRN_DATA", str(tmp_path))
    real = toy.generate
    monkeypatch.setattr(toy.dataset, "generate", lambda root, **kwargs: real(root, **{**kwargs, **TINY}))
    paths = toy.ensure_toy(look="dusk")
    assert "dusk look" in capsys.readouterr().err
    assert paths.cityscapes == tmp_path / "toy-dusk/cityscapes" and paths.gta5 == tmp_path / "toy-dusk/gta5"
    assert toy.ensure_toy(look="dusk") == paths
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "toy").exists()
    with pytest.raises(CirnError, match="of the dusk look, not camera"):
        toy.ensure_toy(root=tmp_path / "toy-dusk")


def test_the_config_key_is_a_checked_choice():
    assert load_config("toy").data.toy_look == "camera"
    assert load_config("toy", overrides=["data.toy_look=dusk"]).data.toy_look == "dusk"
    with pytest.raises(CirnError, match="data.toy_look: 'night' is not one of camera, dusk"):
        load_config("toy", overrides=["data.toy_look=night"])
    with pytest.raises(CirnError, match="data.toy_look"):
        DataConfig(toy_look="night")


def test_cli_renders_the_dusk_look_into_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRN_DATA", str(tmp_path))
    args = ["toy", "--look", "dusk", "--num-source", "2", "--num-train", "2", "--num-val", "1", "--workers", "1"]
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 0, result.output
    assert "dusk look" in result.output
    assert json.loads((tmp_path / "toy-dusk/toy.json").read_text())["look"] == "dusk"
    assert not (tmp_path / "toy").exists()

    result = CliRunner().invoke(data_main, ["toy", "--look", "night"])
    assert result.exit_code == 2 and "'night' is not one of 'camera', 'dusk'" in result.output


def test_the_dusk_clip_has_the_same_ground_truth(tmp_path):
    camera = toy.render_video(tmp_path / "camera.mp4", frames=2, size_wh=(64, 32))
    result = CliRunner().invoke(data_main, ["toy-video", "--out", str(tmp_path / "dusk.mp4"), "--frames", "2",
                                            "--size", "64x32", "--look", "dusk"])
    assert result.exit_code == 0, result.output

    def labels(root, stem):
        return {p.name.replace(stem, ""): p.read_bytes() for p in sorted((root / "gtFine/val" / stem).glob("*.png"))}

    assert labels(tmp_path / "dusk", "dusk") == labels(tmp_path / "camera", "camera")
    assert len(labels(tmp_path / "dusk", "dusk")) == 2
    assert (tmp_path / "dusk.mp4").read_bytes() != (tmp_path / "camera.mp4").read_bytes()
    assert camera["frames"] == 2
