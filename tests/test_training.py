import json
import math

import pytest
import torch
import yaml
from click.testing import CliRunner

from cirn.cli import train_main
from cirn.train import engine, stage2
from cirn.train.config import load_config
from cirn.train.checkpoint import load_checkpoint
from cirn.train.models import build_discriminator, create_model


def run_cli(args):
    result = CliRunner().invoke(train_main, args, catch_exceptions=False)
    return result


@pytest.mark.parametrize("command", ["source-only", "oracle", "stage2"])
def test_two_iteration_run_of_each_command(command, toy_args, tmp_path):
    out = tmp_path / command
    result = run_cli([command, "--preset", "smoke", "--out", str(out), "--quiet", *toy_args])
    assert result.exit_code == 0, result.output
    assert "best target mIoU" in result.output
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "best.pt", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2]
    assert any(r["kind"] == "val" for r in records)
    best = load_checkpoint(out / "best.pt")
    assert best["kind"] == "model" and best["model_meta"]["name"] == "tiny"
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["iteration"] == 2 and set(last["rng"]) >= {"torch", "python", "numpy"}
    if command == "stage2":
        assert {"model", "disc", "opt_seg", "opt_disc"} <= set(last["states"])
        assert {"loss_seg_src", "loss_adv_trg", "loss_discrepancy", "loss_d_src", "loss_d_trg"} <= set(records[0])


def test_existing_run_is_not_overwritten(toy_args, tmp_path):
    args = ["source-only", "--preset", "smoke", "--out", str(tmp_path / "so"), "--quiet", *toy_args]
    assert run_cli(args).exit_code == 0
    again = run_cli(args)
    assert again.exit_code == 2 and "--resume" in again.output


def _smoke_cfg(toy_data, iterations, overrides=()):
    return load_config("smoke", overrides=[
        f"data.source_root={toy_data / 'gta5'}", f"data.target_root={toy_data / 'cityscapes'}",
        f"run.iterations={iterations}", "run.checkpoint_every=2", "run.eval_every=2", *overrides])


@pytest.mark.parametrize("overrides", [(), ("optim.optimizer=adamw", "optim.lr=0.005", "optim.class_balance=0.5")],
                         ids=["sgd", "adamw-balanced"])
def test_resume_matches_uninterrupted_run(toy_data, tmp_path, monkeypatch, overrides):
    cfg = _smoke_cfg(toy_data, 4, overrides)
    stage2.run(cfg, tmp_path / "full", quiet=True)

    real_save = engine.save_training_state

    def save_then_die(run_dir, iteration, *args):
        real_save(run_dir, iteration, *args)
        if iteration == 2:
            raise KeyboardInterrupt  # the run is killed right after its iteration-2 checkpoint

    monkeypatch.setattr(engine, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stage2.run(cfg, tmp_path / "killed", quiet=True)
    monkeypatch.setattr(engine, "save_training_state", real_save)
    stage2.run(cfg, tmp_path / "killed", resume=True, quiet=True)

    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["states"]
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["states"]
    for part in ("model", "disc"):
        for key, value in full[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key}"


def test_checkpoint_of_other_architecture_is_refused(toy_data, tmp_path):
    cfg = _smoke_cfg(toy_data, 2)
    stage2.run(cfg, tmp_path / "run", quiet=True)
    other = load_config(None, overrides=["model.num_classes=7"], base=cfg)
    with pytest.raises(engine.CirnError, match="num_classes"):
        stage2.run(other, tmp_path / "run", resume=True, quiet=True)


def test_nan_loss_stops_with_iteration_and_keeps_checkpoint(toy_data, tmp_path, monkeypatch):
    cfg = _smoke_cfg(toy_data, 4)
    real_step = stage2.train_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        losses = real_step(*args, **kwargs)
        return {**losses, "loss_seg_src": float("nan")} if calls["n"] == 3 else losses

    monkeypatch.setattr(stage2, "train_step", step)
    with pytest.raises(engine.CirnError, match="iteration 3"):
        stage2.run(cfg, tmp_path / "nan", quiet=True)
    assert load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")["iteration"] == 2


def test_describe_prints_paper_counts():
    result = run_cli(["describe", "--model", "deeplabv2-r101", "--height", "512", "--width", "1024"])
    assert result.exit_code == 0
    assert "43,901,068" in result.output and "2,781,121" in result.output


def test_pseudo_label_thresholds_by_hand():
    import numpy as np

    from cirn.train.stage3 import BINS, class_thresholds, pseudo_labels
    hist = np.zeros((3, BINS), dtype=np.int64)
    hist[0, [500, 600, 700, 800, 900]] = 1  # class 0: confidences 0.5 .. 0.9, one pixel each
    hist[1, 950] = 4                        # class 1: four pixels at 0.95; class 2: never predicted
    cbst = class_thresholds(hist, "cbst", portion=0.4)
    assert cbst[0] == pytest.approx(0.8) and cbst[1] == pytest.approx(0.95) and cbst[2] == 1.0
    fda = class_thresholds(hist, "fda", percentile=50, max_threshold=0.9)
    assert fda[0] == pytest.approx(0.7) and fda[1] == pytest.approx(0.9) and fda[2] == pytest.approx(0.9)

    probs = torch.tensor([[0.85, 0.60, 0.2], [0.10, 0.30, 0.2], [0.05, 0.10, 0.6]])[:, None, :]  # (C=3, 1, 3)
    labels = pseudo_labels(probs, np.array([0.8, 0.25, 0.5]), "cbst")
    # pixel 0: 0.85/0.8 > 1 -> class 0; pixel 1: ratios 0.75, 1.2, 0.2 -> class 1; pixel 2: 0.25, 0.8, 1.2 -> 2
    assert labels.tolist() == [[0, 1, 2]]
    labels = pseudo_labels(probs, np.array([0.9, 0.25, 0.5]), "fda")
    assert labels.tolist() == [[255, 255, 2]]  # 0.85 and 0.6 (both class 0) under 0.9; 0.6 >= 0.5 for class 2
    # A confidence floor drops labels that pass their class's threshold: pixel 1 (class 1 at 0.30 < 0.5), pixel 2
    # (class 2 at 0.6 < 0.7) under cbst; under fda pixel 2 as well.
    assert pseudo_labels(probs, np.array([0.8, 0.25, 0.5]), "cbst", min_confidence=0.5).tolist() == [[0, 255, 2]]
    assert pseudo_labels(probs, np.array([0.8, 0.25, 0.5]), "cbst", min_confidence=0.7).tolist() == [[0, 255, 255]]
    assert pseudo_labels(probs, np.array([0.9, 0.25, 0.5]), "fda", min_confidence=0.7).tolist() == [[255, 255, 255]]


def test_easy_split_keeps_the_images_of_lowest_mean_entropy():
    from cirn.train.stage3 import easiest_images, mean_entropy
    uniform, confident = torch.full((4, 2, 2), 0.25), torch.tensor([0.97, 0.01, 0.01, 0.01])[:, None, None]
    assert mean_entropy(uniform) == pytest.approx(math.log(4), rel=1e-6)
    assert mean_entropy(confident.expand(4, 2, 2)) < 0.2
    entropies = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.5}
    assert easiest_images(entropies, 0.5) == {"b", "c"}  # ties broken by name
    assert easiest_images(entropies, 0.6) == {"b", "c", "d"} and easiest_images(entropies, 0.01) == {"b"}


def test_stage3_smoke_and_resume_by_round(toy_args, tmp_path):
    s2 = tmp_path / "s2"
    assert run_cli(["stage2", "--preset", "smoke", "--out", str(s2), "--quiet", *toy_args]).exit_code == 0
    args = ["stage3", "--model", str(s2 / "best.pt"), "--preset", "smoke", "--out", str(tmp_path / "s3"), "--quiet",
            *toy_args, "stage3.rounds=2", "stage3.easy_split=0.5", "stage3.kld_weight=0.1"]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    pseudo = tmp_path / "s3" / "round1" / "pseudo"
    summary = json.loads((pseudo / "summary.json").read_text())
    # The easy split: the 4 of 8 images of lowest mean entropy are labelled, listed, and the fine-tune reads the list.
    assert summary["images"] == 8 and summary["images_labelled"] == 4
    labelled = sorted(p.relative_to(pseudo / "labels").with_suffix("").as_posix()
                      for p in (pseudo / "labels").rglob("*.png"))
    assert len(labelled) == 4 and (pseudo / "images.txt").read_text().split() == labelled
    config = yaml.safe_load((tmp_path / "s3" / "round1" / "config.yaml").read_text())
    assert config["data"]["target_list"] == str(pseudo / "images.txt")
    assert (tmp_path / "s3" / "round2" / "best.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "s3" / "round1" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all("loss_seg_src" in r for r in train)  # the source CE alongside (CBST)
    assert all(r["loss_kld"] > 0 for r in train)  # CRST's MR-KLD on the pseudo-labelled pixels
    again = run_cli(args + ["--resume"])
    assert again.exit_code == 0 and again.output.count("already finished") == 2


def test_all_stages_smoke_and_resume_by_stage(toy_args, tmp_path):
    out = tmp_path / "all"
    args = ["all-stages", "--preset", "smoke", "--out", str(out), "--quiet", *toy_args]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    ablation = json.loads((out / "ablation.json").read_text())
    assert list(ablation["rows"]) == ["SO", "CIR", "ASS", "CIR+ASS", "ASS+ST", "CIR+ASS+ST"]
    for row in ablation["rows"].values():
        assert 0 <= row["miou"] <= 100 and len(row["per_class"]) == 19
    assert "CIR+ASS+ST" in result.output and (out / "ablation.png").stat().st_size > 0
    assert (out / "examples.png").stat().st_size > 0
    # No pretrained weights in the preset: a pretrain step from random weights, and every row that trains from
    # scratch (SO, CIR, ASS, CIR+ASS) starts from its backbone (ImageNet's stand-in), so they train equally long.
    assert "SO, CIR, ASS and CIR+ASS start from the backbone of the pretrain step" in result.output
    for step in ("source-only", "cir", "ass", "cir-ass"):
        config = yaml.safe_load((out / step / "config.yaml").read_text())
        assert config["model"]["pretrained"] == str(out / "pretrain" / "best.pt")
    assert yaml.safe_load((out / "pretrain" / "config.yaml").read_text())["model"]["pretrained"] == ""
    again = run_cli(args)
    assert again.exit_code == 0
    assert again.output.count("already finished") == 8  # the pretrain step, six trained rows and stage 1


# ---------------------------------------------------------------- schedules and the stage-2 step
def test_warmup_poly_lr_and_ten_times_head_lr():
    optim = load_config("smoke", overrides=["optim.lr=0.01", "optim.warmup=4", "optim.head_lr_mult=10",
                                            "optim.power=0.9"]).optim
    model = create_model("tiny", num_classes=3, base_width=4)
    opt = engine.seg_optimizer(model, optim)
    backbone, heads = opt.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone_parameters()}
    assert {id(p) for p in heads["params"]} == {id(p) for p in model.head_parameters()}
    assert len(backbone["params"]) + len(heads["params"]) == sum(p.requires_grad for p in model.parameters())
    # Linear warm-up over the first 4 iterations, (i + 1) / 4 of lr; then lr * (1 - i / 100) ** 0.9.
    expected = {0: 0.0025, 1: 0.005, 3: 0.01, 4: 0.0096392692, 50: 0.0053588673, 99: 0.00015848932}
    for iteration, lr in expected.items():
        engine.set_lr(opt, engine.poly_lr(optim.lr, iteration, 100, optim.power, optim.warmup))
        assert backbone["lr"] == pytest.approx(lr, rel=1e-7), iteration
        assert heads["lr"] == pytest.approx(10 * lr, rel=1e-7), iteration


def test_adamw_keeps_the_param_groups_and_their_rates():
    optim = load_config("smoke", overrides=["optim.optimizer=adamw", "optim.lr=0.004", "optim.head_lr_mult=2",
                                            "optim.momentum=0.8", "optim.weight_decay=0.01"]).optim
    model = create_model("tiny", num_classes=3, base_width=4)
    opt = engine.seg_optimizer(model, optim)
    assert isinstance(opt, torch.optim.AdamW)
    backbone, heads = opt.param_groups
    assert {id(p) for p in heads["params"]} == {id(p) for p in model.head_parameters()}
    assert backbone["betas"] == (0.8, 0.999) and backbone["weight_decay"] == 0.01
    engine.set_lr(opt, engine.poly_lr(optim.lr, 0, 100, optim.power, optim.warmup))
    assert (backbone["lr"], heads["lr"]) == pytest.approx((0.004, 0.008))


def test_adversarial_schedule_damps_and_preheats():
    # CLAN: damping 1 - i / N; plain BCE (preheating) for the first 5% of N = 100 iterations.
    assert stage2.adversarial_schedule(0, 100, damp=True, preheat=0.05) == (1.0, True)
    assert stage2.adversarial_schedule(4, 100, damp=True, preheat=0.05) == (pytest.approx(0.96), True)
    assert stage2.adversarial_schedule(5, 100, damp=True, preheat=0.05) == (pytest.approx(0.95), False)
    assert stage2.adversarial_schedule(75, 100, damp=True, preheat=0.05) == (pytest.approx(0.25), False)
    assert stage2.adversarial_schedule(75, 100, damp=False, preheat=0.05) == (1.0, False)
    assert stage2.adversarial_schedule(75, 100, damp=True, preheat=0.0) == (pytest.approx(0.25), False)


def test_discriminator_is_frozen_during_the_segmentation_update(monkeypatch):
    torch.manual_seed(0)
    cfg = load_config("smoke")
    model = create_model("tiny", num_classes=3, base_width=4).train()
    disc = build_discriminator(3, 4).train()
    opt_seg = engine.seg_optimizer(model, cfg.optim)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=1e-2)
    seen = {}
    real_adversarial, real_discriminator = stage2.adversarial_loss, stage2.discriminator_loss

    def adversarial(d_logits_trg, *args, **kwargs):
        seen["d_trainable_in_adversarial"] = [p.requires_grad for p in disc.parameters()]
        seen["adversarial_reaches_seg_net"] = d_logits_trg.requires_grad
        return real_adversarial(d_logits_trg, *args, **kwargs)

    def discriminator(*args, **kwargs):
        # Every segmentation-side backward has run by now: none of it may have left a gradient in D.
        seen["d_grads_before_d_loss"] = [p.grad for p in disc.parameters()]
        seen["d_trainable_in_d_loss"] = [p.requires_grad for p in disc.parameters()]
        seen["seg_grads_before_d_loss"] = [p.grad.clone() for p in model.head_parameters()]
        return real_discriminator(*args, **kwargs)

    monkeypatch.setattr(stage2, "adversarial_loss", adversarial)
    monkeypatch.setattr(stage2, "discriminator_loss", discriminator)
    disc_before = [p.detach().clone() for p in disc.parameters()]
    images_src, images_trg = torch.randn(2, 3, 32, 64), torch.randn(2, 3, 32, 64)
    labels_src = torch.randint(0, 3, (2, 32, 64))
    amp_ctx, scaler = engine.autocast(torch.device("cpu"), "none"), engine.grad_scaler(torch.device("cpu"), "none")
    stage2.train_step(model, disc, opt_seg, opt_disc, images_src, labels_src, images_trg, cfg.adapt, 1.0, False,
                      amp_ctx, scaler)

    assert not any(seen["d_trainable_in_adversarial"]) and seen["adversarial_reaches_seg_net"]
    assert all(g is None for g in seen["d_grads_before_d_loss"])
    assert all(seen["d_trainable_in_d_loss"]) and all(p.requires_grad for p in disc.parameters())
    # D's own loss trains D only (its inputs are detached): the segmentation gradients are those from before it.
    for before, p in zip(seen["seg_grads_before_d_loss"], model.head_parameters()):
        assert torch.equal(before, p.grad)
    assert all(p.grad is not None for p in disc.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(disc_before, disc.parameters()))  # D stepped in its own update


def test_stage3_step_weighs_the_source_term_by_its_own_class_balance():
    """Stage 3's step: the pseudo labels' CE plain (CBST's thresholds balance them), the source CE beside them
    weighted per class as the earlier stages trained (its class_balance), so rare classes keep their weight."""
    from cirn.train import supervised
    from cirn.train.losses import class_counts, class_weights, seg_loss, valid_pixels
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=3, base_width=4).eval()  # eval: BatchNorm fixed, forwards repeatable
    images, images_src = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels_src = torch.zeros(2, 32, 32, dtype=torch.long)
    labels_src[:, :2] = 1  # class 1 rare on the source, class 2 absent
    with torch.no_grad():
        logits, logits_src = model(images).fused, model(images_src).fused
    plain = seg_loss(logits, labels, valid_pixels(labels))
    weights = class_weights(class_counts(labels_src, 3), 0.5)
    balanced = seg_loss(logits_src, labels_src, valid_pixels(labels_src), weights)
    assert not math.isclose(float(balanced), float(seg_loss(logits_src, labels_src, valid_pixels(labels_src))),
                            rel_tol=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = supervised.train_step(model, optimizer, images, labels, torch.autocast("cpu", enabled=False), scaler,
                                   (images_src, labels_src, 1.0, 0.5), class_balance=0.0)
    assert float(losses["loss_seg"]) == pytest.approx(float(plain), rel=1e-5)
    assert float(losses["loss_seg_src"]) == pytest.approx(float(balanced), rel=1e-5)
