"""Stage 1: CycleGAN networks, the stage-1 losses, FDA, and the intermediate-domain writer. Big networks are built on
the meta device (shapes only); runs use the smoke preset (ngf 4, one block, 32x32 crops) on the small toy pair."""
import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cirn.cli import export_main, train_main
from cirn.train import checkpoint, engine, stage1
from cirn.train.config import ModelConfig, load_config
from cirn.train.datasets import GTA5Dataset, normalize
from cirn.common.errors import CirnError
from cirn.train.fda import band_half_width, fda_transfer, swap_low_amplitude, translate_fda
from cirn.train.io import read_image, write_png
from cirn.train.losses import seg_loss, valid_pixels
from cirn.train.models import build_model
from cirn.train.models import cyclegan as stage1_models
from cirn.train.models.cyclegan import CycleGAN, ImagePool, PatchDiscriminator, ResnetGenerator


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """An (untrained) tiny source-only model saved as best.pt would be: f_S of the smoke runs."""
    torch.manual_seed(0)
    cfg = load_config("smoke")
    path = tmp_path_factory.mktemp("seg") / "best.pt"
    checkpoint.save_model(path, build_model(cfg.model), cfg)
    return path


def smoke_cfg(toy_data, seg_checkpoint, *overrides):
    return load_config("smoke", overrides=[
        f"data.source_root={toy_data / 'gta5'}", f"data.target_root={toy_data / 'cityscapes'}",
        f"stage1.seg_checkpoint={seg_checkpoint}", *overrides])


def run_cli(args):
    return CliRunner().invoke(train_main, args, catch_exceptions=False)


# ---------------------------------------------------------------- networks
def test_parameter_counts_match_junyanz():
    with torch.device("meta"):
        assert count(ResnetGenerator(ngf=64, n_blocks=9)) == 11_378_179
        assert count(ResnetGenerator(ngf=64, n_blocks=6)) == 7_837_699
        assert count(PatchDiscriminator(ndf=64, n_layers=3)) == 2_764_737
        assert count(ResnetGenerator(ngf=64, n_blocks=9, upsample="resize")) == 11_378_179


def test_resize_upsampling_has_no_checkerboard():
    """A transposed conv of stride 2 and kernel 3 overlaps its kernel unevenly: from a constant input its output
    alternates between even and odd pixels. Resize then conv gives a constant output away from the border."""
    torch.manual_seed(0)
    x = torch.ones(1, 8, 8, 8)
    for mode, uneven in (("deconv", True), ("resize", False)):
        layer = torch.nn.Sequential(*stage1_models._upsample(8, 4, mode))
        inner = layer(x)[0, :, 2:-2, 2:-2].detach()  # (4, 12, 12), away from the border
        spread = (inner - inner.mean(dim=(1, 2), keepdim=True)).abs().max().item()
        assert (spread > 1e-3) == uneven, mode
    with pytest.raises(ValueError, match="deconv or resize"):
        stage1_models._upsample(8, 4, "bilinear")


def test_generator_keeps_size_and_range_and_translate_pads_odd_sizes():
    torch.manual_seed(0)
    gen = ResnetGenerator(ngf=4, n_blocks=1)
    assert gen(torch.zeros(2, 3, 32, 48)).shape == (2, 3, 32, 48)
    out = stage1.translate_image(gen, torch.rand(1, 3, 30, 42) * 2 - 1)  # not multiples of 4
    assert out.shape == (1, 3, 30, 42) and out.abs().max() <= 1
    assert PatchDiscriminator(ndf=4)(torch.zeros(1, 3, 64, 128)).shape == (1, 1, 6, 14)


def test_init_is_normal_002_with_zero_bias():
    torch.manual_seed(0)
    conv = ResnetGenerator(ngf=64, n_blocks=1).model[1]
    assert abs(conv.weight.std().item() - 0.02) < 0.002 and conv.bias.abs().max() == 0


def test_image_pool_fills_then_swaps_and_resumes_exactly():
    assert ImagePool(0).query(torch.ones(2, 3, 4, 4)).equal(torch.ones(2, 3, 4, 4))
    pool = ImagePool(2, seed=0)
    first = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(2)])
    assert pool.query(first).equal(first)  # filling: returned as given, and stored
    copy = ImagePool(2, seed=5)
    copy.load_state_dict(pool.state_dict())
    new = torch.full((6, 3, 4, 4), 9.0)
    out, out_copy = pool.query(new), copy.query(new)
    assert out.equal(out_copy)
    values = {float(img[0, 0, 0]) for img in out}
    assert values <= {0.0, 1.0, 9.0} and len(values) > 1  # some swapped for stored images, some passed through


# ---------------------------------------------------------------- schedule and L_sem (the losses: test_losses.py)
def test_linear_decay_lr():
    lrs = [stage1.linear_decay_lr(1.0, i, 10, 0.5) for i in range(10)]
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert stage1.linear_decay_lr(1.0, 0, 10, 0.0) == 1.0 and stage1.linear_decay_lr(1.0, 9, 10, 1.0) == 1.0


@pytest.mark.parametrize("mode", ["imagenet", "caffe"])
def test_generator_output_reaches_seg_model_in_its_own_normalization(mode):
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    tanh = normalize(image, "tanh")[None]  # (1, 3, 6, 8) in [-1, 1]
    assert torch.allclose(stage1.to_seg_input(tanh, mode), normalize(image, mode)[None], atol=1e-3)


def test_semantic_loss_trains_g_through_a_frozen_seg_model(seg_checkpoint):
    torch.manual_seed(0)
    s1 = load_config("smoke").stage1
    seg_model = stage1.load_frozen_seg_model(seg_checkpoint, 19, "cpu")
    seg_before = {k: v.clone() for k, v in seg_model.state_dict().items()}
    nets = CycleGAN(ngf=4, ndf=4, n_blocks=1)
    images_src, images_trg = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    labels_src = torch.randint(0, 19, (2, 32, 32))

    loss_sem = seg_loss(stage1.seg_model_logits(seg_model, nets.gen_s2t(images_src)), labels_src,
                        valid_pixels(labels_src))
    loss_sem.backward()
    grads = [p.grad for p in nets.gen_s2t.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in seg_model.parameters())

    gen_before = {k: v.clone() for k, v in nets.gen_s2t.state_dict().items()}
    opt_gen = torch.optim.Adam(nets.generator_parameters(), lr=s1.lr, betas=s1.betas)
    opt_disc = torch.optim.Adam(nets.discriminator_parameters(), lr=s1.lr, betas=s1.betas)
    losses = stage1.train_step(nets, seg_model, opt_gen, opt_disc, ImagePool(2), ImagePool(2), images_src,
                               labels_src, images_trg, s1, nullcontext())
    assert set(losses) == {"loss_gan_s2t", "loss_gan_t2s", "loss_cycle_src", "loss_cycle_trg", "loss_idt_src",
                           "loss_idt_trg", "loss_sem", "loss_d_src", "loss_d_trg"}
    assert not seg_model.training
    assert all(torch.equal(v, seg_model.state_dict()[k]) for k, v in seg_before.items())
    assert any(not torch.equal(v, nets.gen_s2t.state_dict()[k]) for k, v in gen_before.items())


# ---------------------------------------------------------------- FDA
def test_fda_beta_zero_is_the_identity():
    rng = np.random.default_rng(0)
    src, trg = rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    assert np.array_equal(fda_transfer(src, trg, 0.0), src)
    assert band_half_width(16, 24, 0.05) == 0 and band_half_width(720, 1280, 0.01) == 7


def test_fda_dc_only_swap_takes_the_target_mean_colour():
    src = np.full((8, 8, 3), 10, np.uint8)
    trg = np.zeros((8, 8, 3), np.uint8)
    trg[::2] = (100, 200, 250)  # mean (50, 100, 125)
    out = fda_transfer(src, trg, 1 / 8)  # b = 1: only the zero frequency
    assert out.dtype == np.uint8 and np.array_equal(out, np.broadcast_to([50, 100, 125], (8, 8, 3)))


def test_fda_in_log_space_scales_the_channels_and_keeps_dark_detail():
    src = np.zeros((8, 8, 3), np.uint8)
    src[:, :4], src[:, 4:] = 20, 200  # dark and bright halves
    trg = np.full((8, 8, 3), 40, np.uint8)  # a dim target
    linear = fda_transfer(src, trg, 1 / 8)  # b = 1: the mean moves from 110 to 40 by a shift ...
    assert (linear[:, :4] == 0).all()  # ... which clips the dark half to black
    log = fda_transfer(src, trg, 1 / 8, space="log").astype(float)
    # log(1 + pixel) takes the target's mean: (1 + pixel) is scaled by one factor per channel
    assert np.allclose(np.log1p(log).mean(), np.log1p(40.0), atol=0.02)
    assert (log[:, :4] > 0).all() and np.allclose((1 + log[:, 4:]) / (1 + log[:, :4]), 201 / 21, rtol=0.05)


def test_fda_swaps_the_low_band_amplitude_and_keeps_the_phase():
    rng = np.random.default_rng(1)
    src, trg = rng.uniform(0, 255, (2, 12, 16, 3))
    out = swap_low_amplitude(src, trg, 2)  # band |k_y| < 2 and |k_x| < 2: 3 x 3 frequencies
    f_src, f_trg, f_out = (np.fft.fft2(x, axes=(0, 1)) for x in (src, trg, out))
    band = np.zeros((12, 16), bool)
    band[np.ix_([0, 1, 11], [0, 1, 15])] = True
    assert np.allclose(np.abs(f_out)[band], np.abs(f_trg)[band])
    assert np.allclose(np.abs(f_out)[~band], np.abs(f_src)[~band])
    assert np.allclose(np.exp(1j * np.angle(f_out)), np.exp(1j * np.angle(f_src)))
    assert not np.allclose(out, src)


def test_fda_clips_and_rejects_mismatched_images():
    src = np.full((8, 8, 3), 250, np.uint8)
    trg = np.full((8, 8, 3), 250, np.uint8)
    trg[0, 0] = 0
    assert fda_transfer(src, trg, 0.25).max() <= 255
    with pytest.raises(CirnError, match="one size"):
        fda_transfer(src, np.zeros((8, 9, 3), np.uint8), 0.1)


# ---------------------------------------------------------------- runs and the intermediate domain
def assert_intermediate_mirrors_source(intermediate, toy_data, size_wh):
    source = GTA5Dataset(toy_data / "gta5", size_wh=size_wh)
    domain = GTA5Dataset(intermediate, size_wh=size_wh)
    assert len(domain) == len(source) == 8
    for a, b in zip(source, domain, strict=True):
        assert a["name"] == b["name"] and torch.equal(a["label"], b["label"])
    for name, _, label_path in source.samples:
        assert (intermediate / "labels" / f"{name}.png").read_bytes() == label_path.read_bytes()
        assert read_image(intermediate / "images" / f"{name}.png").shape == (size_wh[1], size_wh[0], 3)
    assert not list(intermediate.rglob(".*"))  # no temporary or marker files left


def test_stage1_cli_trains_and_writes_a_loadable_intermediate_domain(toy_data, toy_args, seg_checkpoint, tmp_path):
    out = tmp_path / "stage1"
    result = run_cli(["stage1", "--preset", "smoke", "--out", str(out), "--quiet", "--seg-model", str(seg_checkpoint),
                      *toy_args])
    assert result.exit_code == 0, result.output
    assert f"-> {out / 'intermediate'}" in result.output
    assert_intermediate_mirrors_source(out / "intermediate", toy_data, (64, 36))
    manifest = json.loads((out / "intermediate" / "intermediate.json").read_text())
    assert manifest["method"] == "cyclegan" and manifest["count"] == 8 and not (out / "intermediate.partial").exists()
    last = checkpoint.load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["iteration"] == 2 and {"model", "opt_gen", "opt_disc"} <= set(last["states"])
    assert {"pool_src", "pool_trg", "keeper"} <= set(last["extras"])
    assert manifest["generator_digest"] == stage1.weights_digest(_gen_of(last))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2]
    assert {"loss_sem", "loss_cycle_src", "loss_d_trg"} <= set(records[0])
    assert any(r["kind"] == "mean" for r in records)

    # The checkpoint describes the CycleGAN it holds; export and later stages refuse it in one line.
    assert last["model_meta"] == {"network": "cyclegan", "ngf": 4, "ndf": 4, "n_blocks": 1, "upsample": "deconv",
                                  "disc_layers": 3, "normalization": "tanh"}
    exported = CliRunner().invoke(export_main, [str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "x")])
    assert exported.exit_code == 2 and "Traceback" not in exported.output, exported.output
    assert exported.output.strip().splitlines() == [
        f"error: {out / 'checkpoints' / 'last.pt'} is a stage-1 CycleGAN checkpoint, not a segmentation model; "
        "use (or export) a best.pt of source-only, stage2 or stage3"]
    assert not (tmp_path / "x").exists()
    with pytest.raises(CirnError, match="stage-1 CycleGAN checkpoint"):
        checkpoint.init_from_checkpoint(build_model(load_config("smoke").model), out / "checkpoints" / "last.pt",
                                        load_config("smoke").model)


def _gen_of(state):
    nets = CycleGAN(ngf=4, ndf=4, n_blocks=1)
    nets.load_state_dict(state["states"]["model"])
    return nets.gen_s2t


def test_stage1_cli_fda_translates_without_training(toy_data, toy_args, tmp_path):
    out, intermediate = tmp_path / "fda", tmp_path / "elsewhere"
    result = run_cli(["stage1", "--preset", "smoke", "--cir", "fda", "--beta", "0.09", "--out", str(out), "--quiet",
                      "--intermediate-out", str(intermediate), *toy_args])
    assert result.exit_code == 0, result.output
    assert_intermediate_mirrors_source(intermediate, toy_data, (64, 36))
    assert json.loads((intermediate / "intermediate.json").read_text())["beta"] == 0.09
    assert not (out / "checkpoints").exists()
    src = read_image(toy_data / "gta5" / "images" / "00001.png")
    assert not np.array_equal(read_image(intermediate / "images" / "00001.png"), src[:36, :64])


def test_fda_log_space_is_recorded_and_a_folder_of_the_other_space_is_refused(toy_data, seg_checkpoint, tmp_path):
    linear = translate_fda(smoke_cfg(toy_data, seg_checkpoint, "stage1.beta=0.09"), tmp_path / "linear", quiet=True)
    log_cfg = smoke_cfg(toy_data, seg_checkpoint, "stage1.beta=0.09", "stage1.fda_space=log")
    log = translate_fda(log_cfg, tmp_path / "log", quiet=True)
    assert linear["space"] == "linear" and log["space"] == "log"
    assert not np.array_equal(read_image(tmp_path / "log" / "images" / "00001.png"),
                              read_image(tmp_path / "linear" / "images" / "00001.png"))
    with pytest.raises(CirnError, match="space: 'linear' there, 'log' now"):
        translate_fda(log_cfg, tmp_path / "linear", quiet=True)
    manifest = tmp_path / "linear" / "intermediate.json"  # a folder written before the key existed is linear
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "space"}))
    with pytest.raises(CirnError, match="space: 'linear' there, 'log' now"):
        translate_fda(log_cfg, tmp_path / "linear", quiet=True)
    assert translate_fda(smoke_cfg(toy_data, seg_checkpoint, "stage1.beta=0.09"), tmp_path / "linear",
                         quiet=True)["count"] == 8


def test_translation_resumes_skipping_written_files(toy_data, seg_checkpoint, tmp_path, monkeypatch):
    cfg = smoke_cfg(toy_data, seg_checkpoint, "stage1.cir=fda", "stage1.beta=0.09")
    translate_fda(cfg, tmp_path / "uninterrupted", quiet=True)
    out = tmp_path / "intermediate"
    images = out / "images"
    real_write, written = stage1.write_png, []

    def write_then_die(path, array):
        if len(written) == 4:
            raise KeyboardInterrupt  # killed after four images
        real_write(path, array)
        written.append(path)

    monkeypatch.setattr(stage1, "write_png", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        translate_fda(cfg, out, quiet=True)
    monkeypatch.setattr(stage1, "write_png", real_write)
    assert len(list(images.glob("*.png"))) == 4 and not (out / "intermediate.json").exists()
    write_png(images / "00001.png", np.zeros((36, 64, 3), np.uint8))  # marks a file written before the crash
    (images / ".00005.png.abc.tmp.png").write_bytes(b"partial")  # what a SIGKILL mid-write leaves
    with pytest.raises(CirnError, match="beta"):
        translate_fda(smoke_cfg(toy_data, seg_checkpoint, "stage1.beta=0.05"), out, quiet=True)

    manifest = translate_fda(cfg, out, quiet=True)
    assert manifest["count"] == 8 and not (out / "intermediate.partial").exists()
    assert read_image(images / "00001.png").max() == 0  # existing file skipped, not rewritten
    for name in ("00002", "00005", "00008"):  # the same images as an uninterrupted run, pairing included
        assert np.array_equal(read_image(images / f"{name}.png"),
                              read_image(tmp_path / "uninterrupted" / "images" / f"{name}.png"))
    assert not list(images.glob(".*"))


def test_stage1_training_resumes_exactly(toy_data, seg_checkpoint, tmp_path, monkeypatch):
    cfg = smoke_cfg(toy_data, seg_checkpoint, "run.iterations=4", "run.checkpoint_every=2", "run.eval_every=2",
                    "run.batch_size=1")
    stage1.run(cfg, tmp_path / "full", quiet=True)
    real_save = engine.save_training_state

    def save_then_die(run_dir, iteration, *args):
        real_save(run_dir, iteration, *args)
        if iteration == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stage1.run(cfg, tmp_path / "killed", quiet=True)
    monkeypatch.setattr(engine, "save_training_state", real_save)
    stage1.run(cfg, tmp_path / "killed", resume=True, quiet=True)
    full = checkpoint.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    resumed = checkpoint.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    for key, value in full["states"]["model"].items():
        assert torch.equal(value, resumed["states"]["model"][key]), key
    assert torch.equal(full["extras"]["pool_trg"]["images"], resumed["extras"]["pool_trg"]["images"])
    assert (tmp_path / "killed" / "intermediate" / "intermediate.json").exists()
    wider = smoke_cfg(toy_data, seg_checkpoint, "run.iterations=4", "run.batch_size=1", "stage1.ngf=8")
    with pytest.raises(CirnError, match="has stage1.ngf=4 but this run uses 8"):
        stage1.run(wider, tmp_path / "killed", resume=True, quiet=True)


def test_stage1_errors_are_clear(toy_data, toy_args, seg_checkpoint, tmp_path):
    result = CliRunner().invoke(train_main, ["stage1", "--preset", "smoke", "--out", str(tmp_path / "a"), *toy_args])
    assert result.exit_code == 2 and "--seg-model" in result.output
    too_big = smoke_cfg(toy_data, seg_checkpoint, "stage1.crop_size_wh=[128, 64]")
    with pytest.raises(CirnError, match="does not fit in data.source_size_wh"):
        stage1.run(too_big, tmp_path / "b", quiet=True)
    with pytest.raises(CirnError, match="multiples of 4"):
        load_config("smoke", overrides=["stage1.crop_size_wh=[30, 32]"])
    other = load_config("smoke", overrides=["model.num_classes=7"])
    checkpoint.save_model(tmp_path / "seg7.pt", build_model(ModelConfig(name="tiny", width=4, num_classes=7)), other)
    with pytest.raises(CirnError, match="7 classes"):
        stage1.run(smoke_cfg(toy_data, tmp_path / "seg7.pt"), tmp_path / "c", quiet=True)
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "images" / "x.png").write_bytes(b"")
    with pytest.raises(CirnError, match="not an intermediate domain of ours"):
        translate_fda(smoke_cfg(toy_data, seg_checkpoint), tmp_path / "d", quiet=True)


def test_stage1_sizes_its_own_run():
    cfg = load_config("toy", overrides=["run.iterations=400", "run.batch_size=8", "stage1.iterations=150",
                                        "stage1.batch_size=4"])
    run = stage1.stage1_config(cfg).run
    assert (run.iterations, run.batch_size) == (150, 4)
    plain = load_config("toy", overrides=["stage1.iterations=0", "stage1.batch_size=0"])
    assert stage1.stage1_config(plain).run == plain.run  # 0: the segmentation stages' values
