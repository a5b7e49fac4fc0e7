"""Every training loss, as pure functions (REFERENCE.md): segmentation CE and MR-KLD (all stages), CLAN's
adversarial, discriminator and weight-discrepancy losses (stage 2), the CycleGAN's GAN losses (stage 1).

Discriminator label convention of stage 2 (CLAN): source (and intermediate) = 0, target = 1. The segmentation
network's adversarial loss asks D to call target predictions source. Every D output is a logit: each BCE goes through
`weighted_bce`. Logits are upsampled with models.upsample (bilinear, align_corners=False), the resize evaluation and
export use. Nothing here communicates between processes: under torchrun the caller passes the global valid-pixel
count (distributed.global_count(valid_pixels(labels))), so every process divides by the same number.
"""
import torch
import torch.nn.functional as F

from cirn.common.errors import CirnError

from .labels import IGNORE_INDEX
from .models.heads import upsample

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0
COSINE_EPS = 1e-8  # as F.cosine_similarity


# ---------------------------------------------------------------- segmentation
def valid_pixels(labels):
    """(B, H, W) labels -> scalar int64 count of the pixels not marked ignore (255): seg_loss's divisor."""
    return (labels != IGNORE_INDEX).sum()


def class_counts(labels, num_classes):
    """(B, H, W) labels -> (num_classes,) float count of each class's labelled pixels (ignore and out-of-range ids
    left out)."""
    ids = labels[(labels != IGNORE_INDEX) & (labels < num_classes)]
    return torch.bincount(ids.flatten(), minlength=num_classes).float()


def class_weights(counts, power):
    """(C,) labelled-pixel counts of a batch -> (C,) CE weights share_c ** -power, scaled so that
    sum_c share_c * w_c = 1: the weighted CE keeps plain CE's scale while a class with 1% of the pixels counts
    10x one with 100% (power 0.5). A class absent from the batch gets 0 (it has no pixel to weigh)."""
    share = counts / counts.sum().clamp(min=1)
    present = share > 0
    weights = torch.zeros_like(share)
    weights[present] = share[present] ** -power
    return weights / (share * weights).sum().clamp(min=1e-12)


def seg_loss(logits, labels, num_valid, weight=None):
    """(B, C, h, w) logits, (B, H, W) int64 labels (255 = ignore), scalar valid-pixel count -> scalar CE;
    `weight`: optional (C,) per-class weights (class_weights).

    The summed CE over the valid pixels divided by `num_valid`: valid_pixels(labels) gives the mean; under torchrun
    the mean count of the processes makes the averaged gradients those of the mean over the whole global batch,
    however the ignored pixels fall between the processes."""
    assert logits.dim() == 4 and labels.dim() == 3, f"{tuple(logits.shape)} logits, {tuple(labels.shape)} labels"
    assert logits.shape[0] == labels.shape[0], f"batch {logits.shape[0]} logits vs {labels.shape[0]} labels"
    logits = upsample(logits, labels.shape[-2:])
    weight = None if weight is None else weight.to(logits.dtype)
    total = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    # A crop with no labelled pixel gives 0 (still attached to the graph) instead of mean CE's 0/0 = NaN.
    return total / torch.as_tensor(num_valid, dtype=total.dtype).clamp(min=1)


def kld_regularizer(logits, labels, num_valid):
    """(B, C, h, w) logits, (B, H, W) labels, scalar valid-pixel count -> scalar CRST's MR-KLD.

    KL(uniform || softmax) up to a constant, -mean over classes of log p_c, summed over the labelled pixels and
    divided by `num_valid` (as seg_loss). Added to the pseudo-label CE with a small weight, it keeps the model from
    growing as confident as the labels it learns from (Zou et al., ICCV 2019)."""
    assert logits.dim() == 4 and labels.dim() == 3, f"{tuple(logits.shape)} logits, {tuple(labels.shape)} labels"
    valid = labels != IGNORE_INDEX  # (B, H, W)
    per_pixel = -F.log_softmax(upsample(logits, labels.shape[-2:]), dim=1).mean(dim=1)  # (B, H, W)
    total = (per_pixel * valid).sum()
    return total / torch.as_tensor(num_valid, dtype=total.dtype).clamp(min=1)


# ---------------------------------------------------------------- the BCE of every discriminator output
def weighted_bce(d_logits, label, weights=None):
    """(B, 1, h, w) D logits, a label (0. or 1.), optional (B, 1, H, W) per-pixel weights -> scalar mean BCE.

    BCE-with-logits of every D output against `label`; with `weights`, D's logits are upsampled to the weights'
    size first and each pixel's BCE is multiplied by its weight (detached: the weights are no path for gradients).
    """
    assert d_logits.dim() == 4 and d_logits.shape[1] == 1, f"D logits {tuple(d_logits.shape)}"
    if weights is None:
        return F.binary_cross_entropy_with_logits(d_logits, torch.full_like(d_logits, label))
    assert weights.dim() == 4 and weights.shape[:2] == d_logits.shape[:2], \
        f"weights {tuple(weights.shape)} vs D logits {tuple(d_logits.shape)}"
    d_logits = upsample(d_logits, weights.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(d_logits, torch.full_like(d_logits, label), reduction="none")
    return (bce * weights.detach()).mean()


# ---------------------------------------------------------------- stage 2 (CLAN)
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
    return weighted_bce(d_logits_trg, SOURCE_LABEL, _pixel_weights(weight_map, lambda_cos, eps))


def discriminator_loss(d_logits_src, d_logits_trg, weight_map_trg=None, lambda_cos=40.0, eps=0.4):
    """(B, 1, h, w) D logits on source and target, optional (B, 1, H, W) map R -> (loss_src, loss_trg) scalars.

    Source BCE against label 0, target BCE against label 1; with R, the target term is weighted per pixel by
    eps + lambda_cos * R (detached) after upsampling D's logits to R's size, as CLAN. CLAN halves each term.
    """
    assert d_logits_src.dim() == 4 and d_logits_src.shape[1] == 1, f"D logits {tuple(d_logits_src.shape)}"
    return (weighted_bce(d_logits_src, SOURCE_LABEL),
            weighted_bce(d_logits_trg, TARGET_LABEL, _pixel_weights(weight_map_trg, lambda_cos, eps)))


def _pixel_weights(weight_map, lambda_cos, eps):
    """(B, 1, H, W) R -> eps + lambda_cos * R, CLAN's per-pixel weights; None (pre-heat) stays None."""
    return None if weight_map is None else eps + lambda_cos * weight_map


def weight_discrepancy(classifier_c, classifier_acm):
    """Two modules with parameters of equal total size -> scalar cos(W_C, W_ACM) + 1 in [0, 2].

    W = all parameters of a classifier (weights and biases) concatenated and flattened, as CLAN; the caller
    multiplies by lambda_weight. Minimising it pushes the two classifiers to different views of the features.
    """
    w_c = torch.cat([p.reshape(-1) for p in classifier_c.parameters()])
    w_acm = torch.cat([p.reshape(-1) for p in classifier_acm.parameters()])
    assert w_c.shape == w_acm.shape, f"{w_c.numel()} vs {w_acm.numel()} classifier parameters"
    return F.cosine_similarity(w_c, w_acm, dim=0) + 1


# ---------------------------------------------------------------- stage 1 (CycleGAN)
def gan_loss(d_logits, real, mode="lsgan"):
    """(B, 1, h, w) PatchGAN logits, target real (True) or fake (False) -> scalar.

    lsgan: mean (D - 1)^2 or D^2 (CycleGAN's default); vanilla: BCE-with-logits against 1 or 0 (the paper's log loss).
    """
    assert d_logits.dim() == 4 and d_logits.shape[1] == 1, f"D logits {tuple(d_logits.shape)}"
    if mode == "lsgan":
        return F.mse_loss(d_logits, torch.full_like(d_logits, 1.0 if real else 0.0))
    if mode == "vanilla":
        return weighted_bce(d_logits, 1.0 if real else 0.0)
    raise CirnError(f"unknown gan_mode {mode!r}: expected lsgan or vanilla")


def gan_discriminator_loss(d_logits_real, d_logits_fake, mode="lsgan"):
    """(B, 1, h, w) logits on real and on (pooled, detached) fake images -> scalar 0.5 * (real term + fake term)."""
    return 0.5 * (gan_loss(d_logits_real, True, mode) + gan_loss(d_logits_fake, False, mode))
