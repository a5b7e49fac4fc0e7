import pytest

from cirn.train.config import Config, load_config, merge, parse_overrides, preset_names, save_config, read_yaml
from cirn.common.errors import CirnError


def test_defaults_and_presets():
    cfg = load_config("toy")
    assert cfg.model.name == "tiny" and cfg.data.source == "toy"
    paper = load_config("paper")
    assert paper.model.name == "deeplabv2-r101" and paper.run.batch_size == 1 and paper.run.iterations == 100000
    assert paper.optim.lr == 2.5e-4 and paper.optim.d_betas == (0.9, 0.99)
    assert (paper.adapt.lambda_adv, paper.adapt.lambda_cos, paper.adapt.eps) == (0.001, 40.0, 0.4)
    assert paper.model.num_attention == 2 and paper.data.source_size == (1280, 720)
    synthia = load_config("paper-synthia")
    assert synthia.data.source == "synthia" and synthia.data.source_size == (1280, 760) and synthia.data.protocol == 16
    assert {"toy", "smoke", "paper", "paper-synthia"} <= set(preset_names())


def test_overrides_parse_yaml_values():
    cfg = load_config("toy", overrides=["run.iterations=7", "data.source_size=[64,32]", "optim.lr=1e-3",
                                        "data.flip=false"])
    assert cfg.run.iterations == 7 and cfg.data.source_size == (64, 32)
    assert cfg.optim.lr == 1e-3 and cfg.data.flip is False
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_int_widens_to_float():
    assert merge(Config(), {"optim": {"lr": 1}}).optim.lr == 1.0


@pytest.mark.parametrize("override, words", [
    ("run.iteratons=5", ["run.iteratons", "iterations"]),
    ("nope.x=1", ["nope", "data", "model"]),
    ("run.iterations=abc", ["run.iterations", "int"]),
    ("data.flip=3", ["data.flip", "true or false"]),
    ("model.name=vgg", ["model.name", "deeplabv2-r101"]),
    ("run.iterations", ["key.sub=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(CirnError) as err:
        load_config("toy", overrides=[override])
    for word in words:
        assert word in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(CirnError, match="paper"):
        load_config("nonexistent")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("smoke", overrides=["model.num_attention=0"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(None, tmp_path / "config.yaml")
    assert again == cfg
    assert read_yaml(tmp_path / "config.yaml")["model"]["num_attention"] == 0


def test_bad_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run: [unclosed\n")
    with pytest.raises(CirnError, match="bad.yaml"):
        load_config("toy", path)
    with pytest.raises(CirnError, match="missing.yaml"):
        load_config("toy", tmp_path / "missing.yaml")
