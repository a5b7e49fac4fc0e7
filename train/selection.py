"""Picking checkpoints without target labels: label-free criteria computed on unlabelled target train images.

At every evaluation the keeper (engine.BestKeeper) computes, on a fixed, evenly spaced subset of the target train
images (run.select_images):
    entropy       mean over pixels of the fused prediction's entropy (lower is better)
    disagreement  mean over pixels of R = 1 - cos(softmax C, softmax ACM), the map stage 2 weights by (lower)
    flip          share of pixels whose label is the same when the image is mirrored, prediction mirrored back
                  (higher)
and `last` is the iteration itself (the last checkpoint wins). With target labels these are logged beside the mIoU,
which is how benchmarks/selection.py measured which one tracks the mIoU best (rank correlation over each step's
checkpoints on the toy pair); without them, run.select picks by one of them.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .losses import disagreement_map
from .models import upsample

CRITERIA = ("last", "entropy", "disagreement", "flip")
HIGHER_IS_BETTER = {"last": True, "entropy": False, "disagreement": False, "flip": True}
# What run.select=auto uses without target labels: the criterion of the highest mean rank correlation with the
# mIoU over the checkpoints of every step, measured on the toy pair (benchmarks/selection.py, README).
LABEL_FREE_DEFAULT = "last"


def selection_subset(dataset, count):
    """`count` evenly spaced indices of `dataset` (all of them when it is smaller): the same images every time."""
    return np.unique(np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)).tolist()


@torch.inference_mode()
def label_free_scores(model, dataset, indices, device):
    """{entropy, disagreement, flip} of `model` (a CIRN segmentation network) over dataset[indices]; no label is
    read (the dataset may have none)."""
    entropy, disagreement, flip, pixels = 0.0, 0.0, 0.0, 0
    for index in indices:
        image = dataset[index]["image"][None].to(device)  # (1, 3, H, W)
        out = model(torch.cat([image, image.flip(-1)]))
        size = image.shape[-2:]
        probs = F.softmax(upsample(out.fused.float(), size), dim=1)  # (2, C, H, W)
        entropy += float(-(probs[0] * probs[0].clamp_min(1e-12).log()).sum(0).sum())
        disagreement += float(disagreement_map(out.logits_c[:1].float(), out.logits_acm[:1].float(), size).sum())
        labels = probs.argmax(1)  # (2, H, W)
        flip += float((labels[0] == labels[1].flip(-1)).sum())
        pixels += size[0] * size[1]
    return {"entropy": entropy / pixels, "disagreement": disagreement / pixels, "flip": flip / pixels}


def criterion_value(criterion, scores, iteration):
    """The number run.select compares (higher wins) for an evaluation's label-free `scores`."""
    value = iteration if criterion == "last" else scores[criterion]
    return value if HIGHER_IS_BETTER[criterion] else -value


def rank_correlation(x, y):
    """Spearman's rho of two equal-length sequences (ties get their mean rank); NaN when either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    assert x.shape == y.shape and x.ndim == 1
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values):
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties: the mean of their ranks
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
