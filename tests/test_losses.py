"""Losses against values computed by hand on 2-class, 1x2-pixel tensors."""
import math

import pytest
import torch
from torch import nn

from cirn.common.errors import CirnError
from cirn.train.losses import (adversarial_loss, class_counts, class_weights, disagreement_map, discriminator_loss,
                               gan_discriminator_loss, gan_loss, kld_regularizer, seg_loss, valid_pixels,
                               weight_discrepancy, weighted_bce)


def softplus(x):
    """BCE-with-logits against label 0 is log(1 + e^x); against label 1 it is log(1 + e^-x)."""
    return math.log1p(math.exp(x))


def test_seg_loss_is_mean_ce_over_valid_pixels():
    logits = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 2.0, 0.0]]]])  # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])                              # (1, 1, 3)
    assert valid_pixels(labels).item() == 2
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert seg_loss(logits, labels, valid_pixels(labels)).item() == pytest.approx(expected, rel=1e-6)
    # Under torchrun the divisor is the global count (the processes' mean), not this process's 2 pixels.
    assert seg_loss(logits, labels, torch.tensor(4.0)).item() == pytest.approx(expected / 2, rel=1e-6)


def test_seg_loss_upsamples_logits_to_labels():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])   # (1, 2, 1, 1): the same prediction at every label pixel
    labels = torch.tensor([[[0, 1], [1, 255]]])   # (1, 2, 2): 3 valid pixels
    expected = (math.log(1 + math.exp(-2)) + 2 * math.log(1 + math.exp(2))) / 3
    assert seg_loss(logits, labels, valid_pixels(labels)).item() == pytest.approx(expected, rel=1e-6)


def test_seg_loss_without_valid_pixels_is_zero_with_grad():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    labels = torch.full((2, 4, 4), 255)
    loss = seg_loss(logits, labels, valid_pixels(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_class_weights_by_hand():
    labels = torch.tensor([[[0, 0, 255], [0, 1, 7]]])  # 3 pixels of class 0, 1 of class 1, none of 2; 7 is out of range
    counts = class_counts(labels, 3)
    assert counts.tolist() == [3.0, 1.0, 0.0]
    # share 3/4 and 1/4 -> share ** -0.5 = 2/sqrt(3) and 2, scaled so that 3/4 * w0 + 1/4 * w1 = 1.
    raw = [2 / math.sqrt(3), 2.0]
    norm = 0.75 * raw[0] + 0.25 * raw[1]
    assert class_weights(counts, 0.5).tolist() == pytest.approx([raw[0] / norm, raw[1] / norm, 0.0], rel=1e-6)
    assert class_weights(counts, 0.0).tolist() == pytest.approx([1.0, 1.0, 0.0])  # power 0: plain CE's weights
    assert class_weights(torch.zeros(3), 0.5).tolist() == [0.0, 0.0, 0.0]  # no labelled pixel: no weight, no NaN


def test_weighted_seg_loss_sums_each_pixels_weighted_ce_over_the_valid_count():
    logits = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 2.0, 0.0]]]])  # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    weight = torch.tensor([0.5, 1.5])
    expected = (0.5 * math.log(1 + math.exp(-1)) + 1.5 * math.log(1 + math.exp(-2))) / 2
    assert seg_loss(logits, labels, valid_pixels(labels), weight).item() == pytest.approx(expected, rel=1e-6)
    # Weights that all equal 1 are plain CE.
    assert seg_loss(logits, labels, valid_pixels(labels), torch.ones(2)).item() == pytest.approx(
        seg_loss(logits, labels, valid_pixels(labels)).item(), rel=1e-6)


def test_seg_loss_rejects_wrong_shapes():
    with pytest.raises(AssertionError):
        seg_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), 4)


def test_kld_regularizer_is_mean_negative_log_prob_over_classes_on_labelled_pixels():
    logits = torch.tensor([[[[0.0, 2.0, 5.0]], [[0.0, 0.0, 0.0]]]])  # (1, 2, 1, 3); the third pixel is ignored
    labels = torch.tensor([[[0, 1, 255]]])
    second = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(2)))) / 2  # p = sigmoid(+-2)
    expected = (math.log(2) + second) / 2  # a uniform pixel gives log C, the minimum
    assert kld_regularizer(logits, labels, valid_pixels(labels)).item() == pytest.approx(expected, rel=1e-6)
    assert kld_regularizer(logits, labels, 4).item() == pytest.approx(expected / 2, rel=1e-6)


def test_kld_regularizer_pulls_confident_pixels_towards_uniform():
    logits = torch.tensor([[[[3.0]], [[-1.0]]]], requires_grad=True)  # (1, 2, 1, 1), confident in class 0
    kld_regularizer(logits, torch.tensor([[[0]]]), 1).backward()
    assert logits.grad[0, 0].item() > 0 > logits.grad[0, 1].item()  # descent lowers class 0, raises class 1
    assert kld_regularizer(torch.zeros(1, 2, 1, 1), torch.full((1, 1, 1), 255), 0).item() == 0.0


def test_disagreement_map_is_one_minus_cosine_per_pixel_and_sample():
    # Sample 0: p_c = (1/2, 1/2), p_acm = (3/4, 1/4); sample 1: identical predictions.
    logits_c = torch.tensor([[[[0.0]], [[0.0]]], [[[1.0]], [[-1.0]]]])           # (2, 2, 1, 1)
    logits_acm = torch.tensor([[[[math.log(3)]], [[0.0]]], [[[1.0]], [[-1.0]]]])
    r = disagreement_map(logits_c, logits_acm, (2, 3))
    assert r.shape == (2, 1, 2, 3)
    cos = (0.5 * 0.75 + 0.5 * 0.25) / (math.sqrt(0.5) * math.sqrt(0.75 ** 2 + 0.25 ** 2))
    assert torch.allclose(r[0], torch.full((1, 2, 3), 1 - cos), atol=1e-6)
    assert torch.allclose(r[1], torch.zeros(1, 2, 3), atol=1e-6)


def test_weighted_bce_by_hand():
    d_logits = torch.tensor([[[[1.0, -2.0]]]], requires_grad=True)  # (1, 1, 1, 2)
    assert weighted_bce(d_logits, 0.0).item() == pytest.approx((softplus(1.0) + softplus(-2.0)) / 2, rel=1e-6)
    assert weighted_bce(d_logits, 1.0).item() == pytest.approx((softplus(-1.0) + softplus(2.0)) / 2, rel=1e-6)
    weights = torch.tensor([[[[3.0, 0.5]]]], requires_grad=True)
    loss = weighted_bce(d_logits, 1.0, weights)
    assert loss.item() == pytest.approx((3.0 * softplus(-1.0) + 0.5 * softplus(2.0)) / 2, rel=1e-6)
    loss.backward()
    assert weights.grad is None and d_logits.grad is not None
    with pytest.raises(AssertionError):
        weighted_bce(torch.zeros(1, 2, 1, 1), 0.0)  # two channels: not a discriminator's output


def test_adversarial_loss_weights_bce_towards_source_by_the_map():
    d_logits = torch.tensor([[[[0.5]]]], requires_grad=True)     # (1, 1, 1, 1), upsampled to the map's 1x2
    r = torch.tensor([[[[0.1, 0.5]]]], requires_grad=True)       # (1, 1, 1, 2)
    loss = adversarial_loss(d_logits, r, lambda_cos=40.0, eps=0.4)
    expected = softplus(0.5) * ((0.4 + 40 * 0.1) + (0.4 + 40 * 0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert r.grad is None, "the weight map must be detached"
    assert d_logits.grad is not None


def test_adversarial_loss_plain_bce_for_preheat():
    d_logits = torch.tensor([[[[0.5, -1.0]]]])
    expected = (softplus(0.5) + softplus(-1.0)) / 2
    assert adversarial_loss(d_logits).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_labels_source_0_target_1():
    d_src = torch.tensor([[[[0.5, -1.0]]]])
    d_trg = torch.tensor([[[[2.0]]]])
    loss_src, loss_trg = discriminator_loss(d_src, d_trg)
    assert loss_src.item() == pytest.approx((softplus(0.5) + softplus(-1.0)) / 2, rel=1e-6)
    assert loss_trg.item() == pytest.approx(softplus(-2.0), rel=1e-6)

    r = torch.tensor([[[[0.0, 0.25]]]], requires_grad=True)
    d_trg.requires_grad_(True)
    _, loss_trg = discriminator_loss(d_src, d_trg, r, lambda_cos=40.0, eps=0.4)
    assert loss_trg.item() == pytest.approx(softplus(-2.0) * (0.4 + (0.4 + 40 * 0.25)) / 2, rel=1e-6)
    loss_trg.backward()
    assert r.grad is None


def _linear(weight, bias):
    layer = nn.Linear(len(weight), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.copy_(torch.tensor([bias]))
    return layer


def test_weight_discrepancy_is_cosine_of_all_parameters_plus_one():
    # W = (weights, bias) flattened: (1, 2, 2) and (2, 1, 2) -> cos = 8 / 9.
    c, acm = _linear([1.0, 2.0], 2.0), _linear([2.0, 1.0], 2.0)
    loss = weight_discrepancy(c, acm)
    assert loss.item() == pytest.approx(1 + 8 / 9, rel=1e-6)
    loss.backward()
    assert c.weight.grad is not None and acm.bias.grad is not None
    orthogonal = weight_discrepancy(_linear([1.0, 0.0], 0.0), _linear([0.0, 1.0], 0.0))
    opposite = weight_discrepancy(_linear([1.0, 2.0], 3.0), _linear([-1.0, -2.0], -3.0))
    assert orthogonal.item() == pytest.approx(1.0)
    assert opposite.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- stage 1 (CycleGAN)
def test_gan_losses_by_hand():
    half = torch.full((2, 1, 3, 3), 0.5)
    assert gan_loss(half, True, "lsgan").item() == pytest.approx(0.25)  # (0.5 - 1)^2
    assert gan_loss(half, False, "lsgan").item() == pytest.approx(0.25)
    zero = torch.zeros(1, 1, 2, 2)
    assert gan_loss(zero, True, "vanilla").item() == pytest.approx(math.log(2))
    with pytest.raises(AssertionError):
        gan_loss(torch.zeros(1, 2, 3, 3), True)
    with pytest.raises(CirnError, match="lsgan or vanilla"):
        gan_loss(zero, True, "hinge")


def test_gan_discriminator_loss_halves_real_plus_fake():
    real, fake = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    assert gan_discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5 * (0 + 4))
    # vanilla: BCE of real logits 1 against 1 (softplus(-1)) and of fake logits 2 against 0 (softplus(2)).
    assert gan_discriminator_loss(real, fake, "vanilla").item() == pytest.approx(
        0.5 * (softplus(-1.0) + softplus(2.0)), rel=1e-6)
