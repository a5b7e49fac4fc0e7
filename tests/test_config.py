import dataclasses

import pytest

from cirn.train.config import (Config, DataConfig, OptimConfig, RunConfig, from_dict, load_config, merge,
                               parse_overrides, preset_names, read_yaml, resolve_run, save_config, to_dict)
from cirn.common.errors import CirnError


def test_defaults_and_presets():
    cfg = load_config("toy")
    assert cfg.model.name == "tiny" and cfg.data.source == "toy"
    paper = load_config("paper")
    assert paper.model.name == "deeplabv2-r101" and paper.run.batch_size == 1 and paper.run.iterations == 100000
    assert paper.optim.lr == 2.5e-4 and paper.optim.d_betas == (0.9, 0.99)
    assert (paper.adapt.lambda_adv, paper.adapt.lambda_cos, paper.adapt.eps) == (0.001, 40.0, 0.4)
    assert paper.model.num_attention == 2 and paper.data.source_size_wh == (1280, 720)
    synthia = load_config("paper-synthia")
    assert synthia.data.source == "synthia" and synthia.data.source_size_wh == (1280, 760)
    assert synthia.data.protocol == 16
    assert {"toy", "smoke", "paper", "paper-synthia"} <= set(preset_names())


def test_overrides_parse_yaml_values():
    cfg = load_config("toy", overrides=["run.iterations=7", "data.source_size_wh=[64,32]", "optim.lr=1e-3",
                                        "data.flip=false"])
    assert cfg.run.iterations == 7 and cfg.data.source_size_wh == (64, 32)
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


def test_every_preset_loads_and_round_trips(tmp_path):
    for name in preset_names():
        cfg = load_config(name)
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(None, tmp_path / f"{name}.yaml") == cfg == from_dict(to_dict(cfg))


@pytest.mark.parametrize("override, message", [
    ("run.iterations=0", "run.iterations must be an integer >= 1, got 0"),
    ("run.batch_size=-2", "run.batch_size must be an integer >= 1, got -2"),
    ("run.eval_every=0", "run.eval_every must be an integer >= 1, got 0"),
    ("run.checkpoint_every=0", "run.checkpoint_every must be an integer >= 1, got 0"),
    ("run.log_every=0", "run.log_every must be an integer >= 1, got 0"),
    ("run.seed=-1", "run.seed must be an integer >= 0, got -1"),
    ("run.device=gpu", "run.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("optim.lr=-1", "optim.lr must be a number > 0, got -1.0"),
    ("optim.lr=0", "optim.lr must be a number > 0, got 0.0"),
    ("optim.lr=.inf", "optim.lr must be a number > 0, got inf"),
    ("optim.d_lr=0", "optim.d_lr must be a number > 0, got 0.0"),
    ("optim.class_balance=2", "optim.class_balance must be in [0, 1], got 2.0"),
    ("data.color_jitter=1", "data.color_jitter must be in [0, 0.9], got 1.0"),
    ("stage3.lr=-1", "stage3.lr must be a number >= 0, got -1.0"),
    ("optim.head_lr_mult=0", "optim.head_lr_mult must be a number > 0, got 0.0"),
    ("optim.momentum=1", "optim.momentum must be in [0, 1), got 1.0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be a number >= 0, got -0.1"),
    ("optim.power=-1", "optim.power must be a number >= 0"),
    ("optim.warmup=-1", "optim.warmup must be an integer >= 0, got -1"),
    ("optim.d_betas=[0.9, 1.0]", "optim.d_betas must be [beta1, beta2], each in [0, 1), got [0.9, 1.0]"),
    ("optim.d_betas=[0.9]", "optim.d_betas must be [beta1, beta2]"),
    ("adapt.lambda_adv=-1", "adapt.lambda_adv must be a number >= 0, got -1.0"),
    ("adapt.eps=-0.1", "adapt.eps must be a number >= 0"),
    ("adapt.preheat=1.5", "adapt.preheat must be in [0, 1], got 1.5"),
    ("adapt.disc_channels=0", "adapt.disc_channels must be an integer >= 1, got 0"),
    ("data.source_size_wh=[64, 4]", "data.source_size_wh must be [width, height] of integers >= 8, got [64, 4]"),
    ("data.target_size_wh=[64]", "data.target_size_wh must be [width, height]"),
    ("data.max_val_images=-1", "data.max_val_images must be an integer >= 0, got -1"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
    ("data.val_split=''", "data.val_split must be a non-empty string"),
    ("data.protocol=18", "data.protocol: 18 is not one of 19, 16, 13"),
    ("model.num_classes=1", "model.num_classes must be an integer in 2..255, got 1"),
    ("model.num_attention=9", "model.num_attention must be an integer in 0..8, got 9"),
    ("model.width=0", "model.width must be an integer >= 1, got 0"),
    ("stage1.iterations=-1", "stage1.iterations must be an integer >= 0, got -1"),
    ("stage1.batch_size=-1", "stage1.batch_size must be an integer >= 0, got -1"),
    ("data.crop_size_wh=[4, 64]", "data.crop_size_wh must be [width, height] of integers >= 8, or [] for none"),
    ("data.crop_size_wh=[64]", "data.crop_size_wh must be [width, height] of integers >= 8, or [] for none"),
    ("stage1.crop_size_wh=[30, 32]", "stage1.crop_size_wh must be [width, height] of multiples of 4, at least 16"),
    ("stage1.ngf=0", "stage1.ngf must be an integer >= 1, got 0"),
    ("stage1.n_blocks=-1", "stage1.n_blocks must be an integer >= 0, got -1"),
    ("stage1.pool_size=-1", "stage1.pool_size must be an integer >= 0, got -1"),
    ("stage1.lambda_cycle=-1", "stage1.lambda_cycle must be a number >= 0"),
    ("stage1.lr=0", "stage1.lr must be a number > 0, got 0.0"),
    ("stage1.betas=[0.5, 1.5]", "stage1.betas must be [beta1, beta2], each in [0, 1)"),
    ("stage1.decay_start=2", "stage1.decay_start must be in [0, 1], got 2.0"),
    ("stage1.beta=0.5", "stage1.beta must be in [0, 0.5), got 0.5"),
    ("stage1.fda_space=lab", "stage1.fda_space: 'lab' is not one of linear, log"),
    ("stage1.upsample=bilinear", "stage1.upsample: 'bilinear' is not one of deconv, resize"),
    ("stage3.rounds=0", "stage3.rounds must be an integer >= 1, got 0"),
    ("stage3.iterations=-5", "stage3.iterations must be an integer >= 0, got -5"),
    ("stage3.portion=0", "stage3.portion must be in (0, 1], got 0.0"),
    ("stage3.portion_max=0.1", "stage3.portion_max must be in [0.5, 1], got 0.1"),
    ("stage3.percentile=0", "stage3.percentile must be in (0, 100], got 0.0"),
    ("stage3.max_threshold=1.5", "stage3.max_threshold must be in (0, 1], got 1.5"),
    ("stage3.easy_split=0", "stage3.easy_split must be in (0, 1], got 0.0"),
    ("stage3.source_weight=-1", "stage3.source_weight must be a number >= 0, got -1.0"),
    ("stage3.kld_weight=-1", "stage3.kld_weight must be a number >= 0, got -1.0"),
    ("stage3.min_confidence=1", "stage3.min_confidence must be in [0, 1), got 1.0"),
])
def test_every_count_period_and_rate_is_checked_by_name_and_range(override, message):
    with pytest.raises(CirnError) as err:
        load_config("toy", overrides=[override])
    assert message in str(err.value)


def test_sections_check_themselves_when_built_from_python():
    with pytest.raises(CirnError, match="run.log_every must be an integer >= 1, got 0"):
        RunConfig(log_every=0)
    with pytest.raises(CirnError, match="run.iterations must be an integer >= 1, got '10'"):
        RunConfig(iterations="10")
    with pytest.raises(CirnError, match="optim.lr must be a number > 0, got nan"):
        OptimConfig(lr=float("nan"))
    assert DataConfig(source_size_wh=[64, 32]).source_size_wh == (64, 32)  # lists are kept as tuples


def test_configs_are_immutable_and_change_by_replace_or_merge():
    cfg = load_config("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.iterations = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run = RunConfig()
    assert merge(cfg, {"run": {"iterations": 5}}).run.iterations == 5 and cfg.run.iterations == 2
    with pytest.raises(CirnError, match="run.log_every"):
        dataclasses.replace(cfg.run, log_every=0)  # replace validates too


def test_renamed_size_keys_name_the_new_key_and_old_runs_still_load():
    with pytest.raises(CirnError, match="'data.source_size' is now 'data.source_size_wh'"):
        load_config("toy", overrides=["data.source_size=[64,32]"])
    with pytest.raises(CirnError, match="'stage1.crop_size' is now 'stage1.crop_size_wh'"):
        load_config("toy", overrides=["stage1.crop_size=[32,32]"])
    old = to_dict(load_config("smoke"))  # a run saved before the rename
    for section, old_key, new_key in (("data", "source_size", "source_size_wh"),
                                      ("data", "target_size", "target_size_wh"),
                                      ("stage1", "crop_size", "crop_size_wh")):
        old[section][old_key] = old[section].pop(new_key)
    assert from_dict(old) == load_config("smoke")


def test_resolve_run_keeps_a_resumed_runs_config_with_only_explicit_overrides(tmp_path):
    run_dir = tmp_path / "run"
    fresh = resolve_run(run_dir, "smoke", overrides=["run.iterations=3"], updates={"data": {"source_root": None}})
    assert fresh.run.iterations == 3 and fresh.data.source_root == ""
    run_dir.mkdir()
    save_config(merge(fresh, {"optim": {"lr": 0.5}}), run_dir / "config.yaml")
    # resumed: the saved config (lr 0.5) stays; the preset's lr is not re-applied; given values go on top
    resumed = resolve_run(run_dir, "toy", overrides=["run.iterations=6"], updates={"data": {"source_root": "/d"}},
                          resume=True)
    assert resumed.optim.lr == 0.5 and resumed.run.iterations == 6 and resumed.data.source_root == "/d"
    assert resumed.model.width == fresh.model.width == 4  # the smoke model, not the toy preset's
    # without --resume, or with nothing saved, the preset applies
    assert resolve_run(run_dir, "toy").optim.lr == load_config("toy").optim.lr
    assert resolve_run(tmp_path / "new", "toy", resume=True) == load_config("toy")


def test_paper_presets_follow_the_papers_equations():
    """Stage 1 is eq. 5 (GAN + GAN + cycle + L_sem: no identity loss) and stage 3 eq. 9 (the pseudo-label CE
    alone), as loaded from the preset files, trained by SGD on plain CE and unjittered images as DeepLab-v2; the toy
    preset has its own recipe (README, "The toy recipe")."""
    for preset in ("paper", "paper-synthia"):
        cfg = load_config(preset)
        assert cfg.stage1.cir == "cyclegan" and cfg.stage1.lambda_identity == 0 and cfg.stage1.lambda_sem > 0
        assert cfg.stage3.source_weight == 0 and cfg.data.crop_size_wh == () and not cfg.data.cache_images
        assert cfg.optim.optimizer == "sgd" and cfg.optim.class_balance == 0 and cfg.data.color_jitter == 0
        assert cfg.stage3.lr == 0  # optim.lr
    toy = load_config("toy")
    assert toy.stage1.cir == "fda" and toy.stage3.source_weight == 1 and toy.optim.optimizer == "adamw"
