"""Segmentation networks, discriminator, weight loading and summaries. Big models are built on the meta device
(shapes only); real forwards use ResNet-50 on 65x65 crops and the tiny model on 32x64 images."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cirn.train.config import ModelConfig
from cirn.common.errors import CirnError
from cirn.train.models import (SegNet, TinyBackbone, build_discriminator, build_model, create_model,
                               describe, feature_size, load_pretrained, summarize)


def count(module):
    return sum(p.numel() for p in module.parameters())


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return create_model("deeplabv2-r50", num_classes=3)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("tiny", num_classes=3, base_width=4)


# ---------------------------------------------------------------- DeepLab-v2 ResNet
def test_r101_parameter_counts_match_the_reference():
    model = meta_model("deeplabv2-r101", num_classes=19, num_attention=0)
    assert count(model.backbone) == 42_500_160
    assert count(model.classifier_c) == 1_400_908
    assert count(model.backbone) + count(model.classifier_c) == 43_901_068
    assert count(model) == 45_301_976  # K=0: the fused network is CLAN's backbone + two classifiers
    with_attention = meta_model("deeplabv2-r101", num_classes=19, num_attention=2)
    # plus per attention module: its mask's 1x1 conv 2048 -> 1 and its depthwise 3x3 trunk
    assert count(with_attention) == 45_301_976 + 2 * (2048 + 1 + 2048 * 9 + 2048)


def test_torchvision_dilated_resnet101_has_the_same_count():
    with torch.device("meta"):
        reference = torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True])
    assert count(reference) - count(reference.fc) == 42_500_160


def test_r101_is_caffe_style_and_dilated():
    backbone = meta_model("deeplabv2-r101").backbone
    first = backbone.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # stride on the first 1x1
    assert backbone.maxpool.ceil_mode
    for layer, dilation in ((backbone.layer3, 2), (backbone.layer4, 4)):
        assert layer[0].downsample is not None
        for block in layer:  # every block dilated, the first included
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
            assert block.conv1.stride == (1, 1)
    assert [len(backbone.layer1), len(backbone.layer2), len(backbone.layer3), len(backbone.layer4)] == [3, 4, 23, 3]


@pytest.mark.parametrize("height, width, expected", [(512, 1024, (65, 129)), (720, 1280, (91, 161))])
def test_feature_size_rule_on_meta_device(height, width, expected):
    assert feature_size(height, width) == expected
    model = meta_model("deeplabv2-r101", num_classes=19)
    out = model(torch.empty(1, 3, height, width, device="meta"))
    assert out.logits_c.shape == (1, 19, *expected)


@pytest.mark.parametrize("size", [(33, 47), (64, 64), (97, 130)])
def test_feature_size_matches_the_network_on_odd_sizes(size):
    backbone = meta_model("deeplabv2-r50").backbone
    assert backbone(torch.empty(1, 3, *size, device="meta")).shape[-2:] == feature_size(*size)


def test_r50_forward_at_output_stride_8(r50):
    r50.eval()
    with torch.no_grad():
        out = r50(torch.randn(1, 3, 65, 65))
    assert out.logits_c.shape == out.logits_acm.shape == (1, 3, 9, 9) == (1, 3, *feature_size(65, 65))
    assert out.attention.shape == (1, 2, 9, 9)


def test_batchnorm_frozen_in_affine_and_statistics(r50):
    bns = [m for m in r50.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for bn in bns for p in bn.parameters())
    r50.train()
    assert r50.training and all(not bn.training for bn in bns)
    assert r50.classifier_c.training
    before = bns[0].running_mean.clone()
    with torch.no_grad():
        r50(torch.randn(1, 3, 33, 33) * 5)
    assert torch.equal(bns[0].running_mean, before)
    backbone_ids = {id(p) for p in r50.backbone_parameters()}
    assert not any(id(p) in backbone_ids for bn in bns for p in bn.parameters())
    assert len(r50.backbone_parameters()) == sum(1 for p in r50.backbone.parameters() if p.requires_grad)
    heads = r50.head_parameters()
    assert sum(p.numel() for p in heads) == count(r50.classifier_c) * 2 + count(r50.attention)
    assert not backbone_ids & {id(p) for p in heads}


# ---------------------------------------------------------------- SegNet and ACM
@pytest.mark.parametrize("num_attention", [0, 1, 2, 3])
def test_acm_structure_and_attention_maps(num_attention):
    model = create_model("tiny", num_classes=3, num_attention=num_attention, base_width=4).eval()
    assert len(model.attention) == num_attention
    assert [m.scale for m in model.attention] == [2, 4, 8][:num_attention]
    out = model(torch.randn(2, 3, 32, 64))
    assert out.logits_c.shape == out.logits_acm.shape == (2, 3, 4, 8)
    assert out.attention.shape == (2, num_attention, 4, 8)  # scale 8 > 4 feature rows: a global window
    if num_attention:
        assert out.attention.min() >= 0 and out.attention.max() <= 1


def test_acm_matches_the_formula(tiny):
    tiny.eval()
    with torch.no_grad():
        nn.init.normal_(tiny.attention[0].conv.weight, 0, 1.0)  # non-trivial maps
        nn.init.normal_(tiny.attention[1].conv.weight, 0, 1.0)
        x = torch.randn(2, 3, 48, 64)
        out = tiny(x)
        f = tiny.backbone(x)
        modules = 0
        for k, module in enumerate(tiny.attention):
            # The literal order: pool, upsample, 1x1 conv, sigmoid; then the module's own trunk.
            pooled = F.avg_pool2d(f, module.scale, module.scale, ceil_mode=True, count_include_pad=False)
            a = torch.sigmoid(module.conv(F.interpolate(pooled, size=f.shape[-2:], mode="bilinear")))
            assert torch.allclose(out.attention[:, k:k + 1], a, atol=1e-5)
            modules = modules + (1 + a) * F.relu(module.trunk(f))
        expected_acm = tiny.classifier_acm(modules / len(tiny.attention))
        assert torch.allclose(out.logits_acm, expected_acm, atol=1e-4)
        assert torch.allclose(out.logits_c, tiny.classifier_c(f), atol=1e-5)


def _mask_response_rank(model, x, pixel=(2, 3)):
    """Rank of the ACM logits' response at one feature pixel to each module's mask value there: (C, K) Jacobian."""
    features = model.backbone(x)
    maps = [module.mask(features).detach().requires_grad_(True) for module in model.attention]

    def acm(*masks):
        outputs = [(1 + m) * F.relu(module.trunk(features)) for m, module in zip(masks, model.attention)]
        return model.classifier_acm(sum(outputs) / len(outputs))[0, :, pixel[0], pixel[1]]  # (C,)

    jacobian = torch.autograd.functional.jacobian(acm, tuple(maps))  # K x (C, B, 1, h, w)
    columns = torch.stack([j[:, 0, 0, pixel[0], pixel[1]] for j in jacobian], dim=1)  # (C, K)
    return torch.linalg.matrix_rank(columns, rtol=1e-4).item()


def test_k_modules_do_not_fold_into_one():
    """REFERENCE.md's trap: masks on one shared linear classifier fold into one map, so the logits respond to all
    K masks along a single direction. With a trunk per module, K=2 responds along two: no single module (whose
    logits move along one direction per pixel as its one mask moves) can express it. Shown failing for the folded
    design: the same model with its two trunks made equal."""
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=5, num_attention=2, base_width=8).eval()
    with torch.no_grad():
        for module in model.attention:
            nn.init.normal_(module.trunk.weight, 0, 0.5)  # trained trunks differ; at init they are near-identity
    x = torch.randn(1, 3, 64, 96)
    assert _mask_response_rank(model, x) == 2
    with torch.no_grad():
        model.attention[1].trunk.load_state_dict(model.attention[0].trunk.state_dict())
    assert _mask_response_rank(model, x) == 1  # equal trunks: the folded design, one direction


def test_acm_parameters_per_k():
    from cirn.train.models import summarize
    counts = [summarize("deeplabv2-r101", num_attention=k)["params_acm"] for k in range(5)]
    per_module = 2048 * 9 + 2048 + 2048 + 1  # depthwise trunk (weights, bias) + the mask's 1x1 conv
    assert counts == [1_400_908 + k * per_module for k in range(5)]


def test_k0_acm_is_a_plain_second_classifier():
    model = create_model("tiny", num_classes=3, num_attention=0, base_width=4).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert torch.allclose(model(x).logits_acm, model.classifier_acm(model.backbone(x)))


def test_fused_is_c_plus_acm(tiny):
    tiny.eval()
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        out = tiny(x)
        fused = tiny.fused(x)
        assert torch.allclose(fused, out.logits_c + out.logits_acm, atol=1e-6)
        assert torch.equal(out.fused, fused)


def test_tiny_forward_backward(tiny):
    tiny.train()
    out = tiny(torch.randn(2, 3, 32, 64))
    loss = out.logits_c.square().mean() + out.logits_acm.square().mean()
    loss.backward()
    assert all(p.grad is not None for p in tiny.parameters())
    assert tiny.backbone.features[0][1].training  # the tiny model trains its BatchNorm


def test_normalization_travels_in_the_state_dict(tiny):
    tiny.normalization = "caffe"
    copy = create_model("tiny", num_classes=3, base_width=4)
    assert copy.normalization == "imagenet"
    copy.load_state_dict(tiny.state_dict())
    assert copy.normalization == "caffe"
    with pytest.raises(ValueError):
        copy.normalization = "bgr"


def test_mobilenetv3_builds_and_runs():
    model = create_model("mobilenetv3", num_classes=3).eval()
    assert model.output_stride == 16
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.logits_c.shape == (1, 3, 4, 6) and out.attention.shape == (1, 2, 4, 6)


def test_segnet_accepts_a_custom_backbone_and_scales():
    model = SegNet(TinyBackbone(4), num_classes=2, num_attention=2, attention_scales=(3, 5), head_dilations=(1, 2),
                   batchnorm="train")
    assert [m.scale for m in model.attention] == [3, 5] and len(model.classifier_c.branches) == 2
    with pytest.raises(ValueError):
        SegNet(TinyBackbone(4), num_classes=2, num_attention=2, attention_scales=(3,))


def test_build_model_from_config():
    tiny = build_model(ModelConfig(name="tiny", num_classes=5, num_attention=1, width=8))
    assert tiny.num_classes == 5 and tiny.num_attention == 1 and tiny.backbone.out_channels == 32
    assert tiny.batchnorm == "train" and tiny.normalization == "imagenet"
    assert build_model(ModelConfig(name="mobilenetv3", num_classes=3)).batchnorm == "train"
    with pytest.raises(CirnError):
        create_model("resnet9000")


def test_discriminator_matches_clan():
    discriminator = build_discriminator(19)
    assert count(discriminator) == 2_781_121
    assert discriminator(torch.randn(1, 19, 64, 128)).shape == (1, 1, 2, 4)


# ---------------------------------------------------------------- pretrained weights
def test_torchvision_state_dict_round_trip(tmp_path, r50):
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    r50.normalization = "caffe"
    report = load_pretrained(r50, str(path))
    assert "torchvision" in report and "fc.weight" in report
    assert r50.normalization == "imagenet"
    layout = r50.backbone.state_dict().pop("stride_on_3x3")
    for key, value in r50.backbone.state_dict().items():
        if key != "stride_on_3x3":
            assert torch.equal(value, reference.state_dict()[key]), key
    assert bool(layout)  # torchvision weights run in torchvision's stride layout
    assert not r50.backbone.bn1.weight.requires_grad  # loading keeps BN frozen


def test_deeplab_init_format(tmp_path, r50):
    torch.manual_seed(2)
    source = create_model("deeplabv2-r50", num_classes=3).backbone.state_dict()
    # The AdaptSegNet/CLAN file: every key under Scale., no BN batch counters, its own 21-class classifier.
    state = {f"Scale.{k}": v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    state["Scale.layer5.conv2d_list.0.weight"] = torch.zeros(21, 2048, 3, 3)
    state["Scale.layer5.conv2d_list.0.bias"] = torch.zeros(21)
    path = tmp_path / "DeepLab_resnet_pretrained_init.pth"
    torch.save(state, path)
    report = load_pretrained(r50, str(path))
    assert "deeplab-init" in report and "layer5" in report
    assert r50.normalization == "caffe" and not bool(r50.backbone.stride_on_3x3)  # the Caffe layout
    for key, value in r50.backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, source[key]), key


def test_wrong_architecture_file_is_a_cirn_error_naming_it(tmp_path, r50):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CirnError, match="resnet18.pth.*another architecture"):
        load_pretrained(r50, str(path))


def test_unreadable_or_missing_file(tmp_path, r50):
    with pytest.raises(CirnError, match="do not exist"):
        load_pretrained(r50, str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CirnError, match="garbage.pth"):
        load_pretrained(r50, str(garbage))


def test_imagenet_weights_from_the_torch_cache(tmp_path, monkeypatch, r50):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights = r50.backbone.imagenet_weights()
    cached = tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir()
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), cached)
    load_pretrained(r50, "imagenet")
    assert torch.equal(r50.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_imagenet_weights_offline_say_what_to_do(tmp_path, monkeypatch, r50, tiny):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CirnError, match="--pretrained PATH"):
        load_pretrained(r50, "imagenet")
    with pytest.raises(CirnError, match="no ImageNet weights"):
        load_pretrained(tiny, "imagenet")
    assert "random init" in load_pretrained(tiny, "")


# ---------------------------------------------------------------- summary
def test_summary_of_r101_at_cityscapes_size():
    s = summarize("deeplabv2-r101", num_classes=19, height=512, width=1024, num_attention=0)
    assert s["feature_size_hw"] == (65, 129)
    assert s["params_backbone_c"] == 43_901_068 and s["params_fused"] == 45_301_976
    assert s["params_discriminator"] == 2_781_121
    # REFERENCE: ~732 GFLOP with one classifier, measured with torchvision's 64x128 features; ceil-mode pooling
    # gives 65x129 (+2.4% pixels).
    assert 732 * 0.98 < s["gflops_backbone_c"] < 732 * 1.04
    assert s["gflops_fused"] == pytest.approx(s["gflops_backbone_c"] + s["gflops_acm"])
    text = describe("tiny", num_classes=3, height=128, width=256)
    assert "fused network" in text and "16x32" in text


def test_discriminator_width_is_configurable():
    narrow = build_discriminator(3, base_channels=16)
    assert narrow(torch.randn(2, 3, 32, 64)).shape == (2, 1, 1, 2)


def test_mobilenetv3_loads_a_torchvision_state_dict(tmp_path):
    model = create_model("mobilenetv3", num_classes=3)
    reference = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(reference.state_dict(), path)
    assert "classifier.0.weight" in load_pretrained(model, str(path))
    assert torch.equal(model.backbone.features[16][0].weight, reference.features[16][0].weight)


def test_a_cirn_checkpoint_initialises_the_backbone_only(tmp_path):
    """The toy's stand-in for ImageNet features: the backbone of a source-only run, with new classifiers."""
    trained = build_model(ModelConfig(name="tiny", num_classes=3, width=4))
    trained.normalization = "caffe"
    path = tmp_path / "best.pt"
    torch.save({"format": "cirn-checkpoint", "model": trained.state_dict()}, path)
    fresh = build_model(ModelConfig(name="tiny", num_classes=3, width=4))
    report = load_pretrained(fresh, str(path))
    assert "cirn checkpoint" in report and "skipped" in report
    new, old = fresh.state_dict(), trained.state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items() if k.startswith("backbone."))
    heads = [k for k in old if k.endswith("weight") and not k.startswith("backbone.")]
    assert heads and not any(torch.equal(new[k], old[k]) for k in heads)  # new classifiers and attention
    assert fresh.normalization == "caffe"
    with pytest.raises(CirnError, match="do not fit"):  # another architecture's checkpoint
        load_pretrained(build_model(ModelConfig(name="tiny", num_classes=3, width=8)), str(path))


def _through_layer2(backbone, x, ceil_pool):
    x = backbone.relu(backbone.bn1(backbone.conv1(x)))
    x = torch.nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=ceil_pool)
    return backbone.layer2(backbone.layer1(x))


def test_torchvision_weights_load_into_torchvisions_stride_layout(tmp_path):
    """torchvision's ResNet-101 puts layer2's stride on the 3x3 conv: its weights must run in that layout. Up to
    layer2 our backbone then computes torchvision's forward (rows and columns away from the extra border row that
    DeepLab's ceil-mode max-pool adds); in the Caffe layout the same weights give something else."""
    import torchvision

    from cirn.train.models.pretrained import load_pretrained
    torch.manual_seed(0)
    reference = torchvision.models.resnet101(weights=None).eval()
    weights = tmp_path / "resnet101.pth"
    torch.save(reference.state_dict(), weights)
    model = create_model("deeplabv2-r101", num_classes=3).eval()
    assert "torchvision format" in load_pretrained(model, str(weights))
    backbone = model.backbone
    assert backbone.layer2[0].conv2.stride == (2, 2) and bool(backbone.stride_on_3x3)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(
            reference.conv1(x))))))[..., :20, :20]  # (1, 512, 20, 20) of 28x28
        ours = _through_layer2(backbone, x, ceil_pool=True)[..., :20, :20]
        backbone.use_stride_layout(False)
        caffe = _through_layer2(backbone, x, ceil_pool=True)[..., :20, :20]
    scale = expected.abs().max()
    assert (ours - expected).abs().max() / scale < 1e-5
    assert (caffe - expected).abs().max() / scale > 0.05  # the bug this guards against


def test_the_stride_layout_travels_with_the_weights():
    """A cirn checkpoint's state dict restores the layout it was trained in; one without the key is Caffe's."""
    model = create_model("deeplabv2-r50", num_classes=3)
    model.backbone.use_stride_layout(True)
    state = model.state_dict()
    again = create_model("deeplabv2-r50", num_classes=3)
    again.load_state_dict(state)
    assert again.backbone.layer2[0].conv2.stride == (2, 2) and again.backbone.layer2[0].conv1.stride == (1, 1)
    del state["backbone.stride_on_3x3"]
    again.load_state_dict(state)
    assert again.backbone.layer2[0].conv1.stride == (2, 2) and not bool(again.backbone.stride_on_3x3)


@pytest.mark.parametrize("mode, affine_trains, running_stats_move", [
    ("frozen", False, False), ("batch-stats", False, True), ("train", True, True)])
def test_batchnorm_modes(mode, affine_trains, running_stats_move):
    """frozen: eval-mode BN with pretrained statistics; batch-stats (the reference code's): affine frozen, but each
    batch normalised with its own statistics, which the running ones then follow; train: everything learns."""
    model = build_model(ModelConfig(name="tiny", num_classes=3, width=4, batchnorm=mode)).train()
    bn = model._batchnorms()[0]
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 64) * 3 + 1)
    assert bn.training == running_stats_move
    assert bool((bn.running_mean != before).any()) == running_stats_move
    assert all(p.requires_grad == affine_trains for p in bn.parameters())
    assert any(p is q for p in model.backbone_parameters() for q in bn.parameters()) == affine_trains


def test_paper_presets_use_the_reference_batchnorm():
    from cirn.train.config import load_config
    for preset in ("paper", "paper-synthia"):
        assert load_config(preset).model.batchnorm == "batch-stats"
    assert load_config("toy").model.batchnorm == "auto"  # the tiny model trains its BatchNorm
