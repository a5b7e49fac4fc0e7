"""Losses of CIRN's adaptive segmentation stage, as pure functions (CLAN's formulation, REFERENCE.md).

Discriminator label convention (CLAN): source (and intermediate) = 0, target = 1. The segmentation network's
adversarial loss asks D to call target predictions source. Every D output is a logit: BCE-with-logits throughout.
Logits are upsampled with models.upsample (bilinear, align_corners=False), the resize evaluation and export use.
"""
import torch
import torch.nn.functional as F

from . import distributed
from .labels import IGNORE_INDEX
from .models.heads import upsample

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0
COSINE_EPS = 1e-8  # as F.cosine_similarity


def seg_loss(logits, labels):
    """(B, C, h, w) logits, (B, H, W) int64 labels (255 = ignore) -> scalar mean CE over the valid pixels.

    Under torchrun the divisor is the mean valid-pixel count of the processes, so the averaged gradients are those of
    the mean over the whole global batch however the ignored pixels fall between the processes."""
    assert logits.dim() == 4 and labels.dim() == 3, f"{tuple(logits.shape)} logits, {tuple(labels.shape)} labels"
    assert logits.shape[0] == labels.shape[0], f"batch {logits.shape[0]} logits vs {labels.shape[0]} labels"
    logits = upsample(logits, labels.shape[-2:])
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    # A crop with no labelled pixel gives 0 (still attached to the graph) instead of mean CE's 0/0 = NaN.
    return total / distributed.global_count((labels != IGNORE_INDEX).sum()).clamp(min=1)


def kld_regularizer(logits, labels):
    """(B, C, h, w) logits, (B, H, W) labels -> scalar CRST's MR-KLD: KL(uniform || softmax) up to a constant,
    -mean over classes of log p_c, averaged over the labelled pixels. Added to the pseudo-label CE with a small
    weight, it keeps the model from growing as confident as the labels it learns from (Zou et al., ICCV 2019)."""
    assert logits.dim() == 4 and labels.dim() == 3, f"{tuple(logits.shape)} logits, {tuple(labels.shape)} labels"
    valid = labels != IGNORE_INDEX  # (B, H, W)
    per_pixel = -F.log_softmax(upsample(logits, labels.shape[-2:]), dim=1).mean(dim=1)  # (B, H, W)
    return (per_pixel * valid).sum() / distributed.global_count(valid.sum()).clamp(min=1)


def disagreement_map(logits_c, logits_acm, size):
    """(B, C, h, w) x 2 -> (B, 1, *size) R = 1 - cos(softmax C, softmax ACM) per pixel, after upsampling to size."""
    assert logits_c.dim() == 4 and logits_c.shape == logits_acm.shape, \
        f"{tuple(logits_c.shape)} vs {tuple(logits_acm.shape)}"
    probs_c = F.softmax(upsample(logits_c, size), dim=1)
    probs_acm = F.softmax(upsample(logits_acm, size), dim=1)
    # Over the class axis of each pixel of each sample (CLAN's version assumed batch 1). Written out: on CPU
    # F.cosine_similarity over dim 1 of a (B, C, H, W) tensor is several times slower than these three sums.
    dot = (probs_c * probs_acm).sum(1, keepdim=True)
    norms = ((probs_c * probs_c).sum(1, keepdim=True) * (probs_acm * probs_acm).sum(1, keepdim=True)).sqrt()
    return 1 - dot / norms.clamp_min(COSINE_EPS)


def adversarial_loss(d_logits_trg, weight_map=None, lambda_cos=40.0, eps=0.4):
    """(B, 1, h, w) D logits on target, (B, 1, H, W) map R or None -> scalar; generator side of eq. 7.

    mean(BCE(D(P_T), source) * (eps + lambda_cos * R)) with D's logits upsampled to R's size, R detached;
    weight_map=None is the plain BCE at D's resolution (CLAN's pre-heat). The caller multiplies by lambda_adv.
    """
    assert d_logits_trg.dim() == 4 and d_logits_trg.shape[1] == 1, f"D logits {tuple(d_logits_trg.shape)}"
    if weight_map is None:
        return F.binary_cross_entropy_with_logits(d_logits_trg, torch.full_like(d_logits_trg, SOURCE_LABEL))
    assert weight_map.dim() == 4 and weight_map.shape[:2] == d_logits_trg.shape[:2], \
        f"weight map {tuple(weight_map.shape)} vs D logits {tuple(d_logits_trg.shape)}"
    d_logits_trg = upsample(d_logits_trg, weight_map.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(d_logits_trg, torch.full_like(d_logits_trg, SOURCE_LABEL),
                                             reduction="none")
    return (bce * (eps + lambda_cos * weight_map.detach())).mean()


def discriminator_loss(d_logits_src, d_logits_trg, weight_map_trg=None, lambda_cos=40.0, eps=0.4):
    """(B, 1, h, w) D logits on source and target, optional (B, 1, H, W) map R -> (loss_src, loss_trg) scalars.

    Source BCE against label 0, target BCE against label 1; with R, the target term is weighted per pixel by
    eps + lambda_cos * R (detached) after upsampling D's logits to R's size, as CLAN. CLAN halves each term.
    """
    assert d_logits_src.dim() == 4 and d_logits_src.shape[1] == 1, f"D logits {tuple(d_logits_src.shape)}"
    assert d_logits_trg.dim() == 4 and d_logits_trg.shape[1] == 1, f"D logits {tuple(d_logits_trg.shape)}"
    loss_src = F.binary_cross_entropy_with_logits(d_logits_src, torch.full_like(d_logits_src, SOURCE_LABEL))
    if weight_map_trg is None:
        loss_trg = F.binary_cross_entropy_with_logits(d_logits_trg, torch.full_like(d_logits_trg, TARGET_LABEL))
        return loss_src, loss_trg
    assert weight_map_trg.dim() == 4 and weight_map_trg.shape[:2] == d_logits_trg.shape[:2], \
        f"weight map {tuple(weight_map_trg.shape)} vs D logits {tuple(d_logits_trg.shape)}"
    d_logits_trg = upsample(d_logits_trg, weight_map_trg.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(d_logits_trg, torch.full_like(d_logits_trg, TARGET_LABEL),
                                             reduction="none")
    return loss_src, (bce * (eps + lambda_cos * weight_map_trg.detach())).mean()


def weight_discrepancy(classifier_c, classifier_acm):
    """Two modules with parameters of equal total size -> scalar cos(W_C, W_ACM) + 1 in [0, 2].

    W = all parameters of a classifier (weights and biases) concatenated and flattened, as CLAN; the caller
    multiplies by lambda_weight. Minimising it pushes the two classifiers to different views of the features.
    """
    w_c = torch.cat([p.reshape(-1) for p in classifier_c.parameters()])
    w_acm = torch.cat([p.reshape(-1) for p in classifier_acm.parameters()])
    assert w_c.shape == w_acm.shape, f"{w_c.numel()} vs {w_acm.numel()} classifier parameters"
    return F.cosine_similarity(w_c, w_acm, dim=0) + 1
