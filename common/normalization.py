"""The input normalisations of the backbones' weights, defined once for training (tensors), export (the graph) and
numpy callers.

Every mode is one per-channel affine map on RGB values 0-255, after an optional RGB -> BGR flip:

    normalized = (x[BGR] if bgr else x) * scale + shift        x: (..., 3, H, W), 0-255

imagenet (torchvision weights): (x / 255 - mean) / std; caffe (the DeepLab-v2 init file): BGR, minus the caffe mean,
no std; tanh (CycleGAN generators): x / 127.5 - 1.
"""
import numpy as np

from cirn.common.errors import CirnError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on 0-1 values (torchvision weights)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # BGR, on 0-255 values (DeepLab-v2 caffe weights)
NORMALIZATIONS = ("imagenet", "caffe", "tanh")  # tanh: [-1, 1] RGB, as CycleGAN generators expect


def affine(mode):
    """(bgr, scale, shift) of `mode`: normalized = (x[BGR] if bgr else x) * scale + shift for x in 0-255.

    imagenet: (x / 255 - m) / s = x / (255 s) - m / s; caffe: x - mean, BGR; tanh: x / 127.5 - 1.
    """
    check(mode)
    if mode == "imagenet":
        return False, tuple(1.0 / (255.0 * s) for s in IMAGENET_STD), tuple(-m / s for m, s in
                                                                           zip(IMAGENET_MEAN, IMAGENET_STD))
    if mode == "caffe":
        return True, (1.0, 1.0, 1.0), tuple(-m for m in CAFFE_MEAN_BGR)
    return False, (1.0 / 127.5,) * 3, (-1.0,) * 3


def check(mode):
    """A CirnError for an unknown normalisation name."""
    if mode not in NORMALIZATIONS:
        raise CirnError(f"unknown normalization {mode!r}: expected one of {', '.join(NORMALIZATIONS)}")


def normalize_array(frames, mode):
    """(B, H, W, 3) or (H, W, 3) uint8 RGB numpy -> (B, 3, H, W) or (3, H, W) float32, the numpy form."""
    bgr, scale, shift = affine(mode)
    x = np.moveaxis(np.asarray(frames, np.float32), -1, -3)  # (..., 3, H, W) RGB 0-255
    if bgr:
        x = x[..., ::-1, :, :]
    return (x * np.float32(scale).reshape(3, 1, 1) + np.float32(shift).reshape(3, 1, 1)).astype(np.float32)
