"""Photometric augmentation of labelled training images (data.color_jitter): the scene and its labels unchanged,
its colours, light, sharpness and noise drawn anew each time it is read, so that a model trained on one look
relies less on it. Pure functions of an image and a numpy Generator: a seeded draw replays exactly on resume.
"""
import numpy as np
import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


def gaussian_blur(image, sigma):
    """(3, H, W) float -> the same blurred by a separable Gaussian of `sigma` pixels (reflected borders)."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = image.unsqueeze(0)  # (1, 3, H, W)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x.squeeze(0)


def color_jitter(image, rng, strength):
    """(3, H, W) float RGB 0-255 -> the same size, clipped to 0-255: brightness, contrast (about the image's mean
    grey), saturation (against its grey) and a gain per channel, each a factor drawn uniformly within
    1 +- strength; then, half the time, a Gaussian blur of sigma up to 2 * strength pixels, and Gaussian noise of a
    standard deviation up to 20 * strength grey levels. strength 0 returns the image unchanged."""
    if strength <= 0:
        return image
    factor = rng.uniform(1 - strength, 1 + strength, size=6)  # brightness, contrast, saturation, 3 channel gains
    gray = (image * image.new_tensor(GRAY).view(3, 1, 1)).sum(0, keepdim=True)  # (1, H, W)
    x = gray + factor[2] * (image - gray)
    x = gray.mean() + factor[1] * (x - gray.mean())
    x = x * factor[0] * x.new_tensor(factor[3:]).view(3, 1, 1)
    if rng.random() < 0.5:
        x = gaussian_blur(x, max(0.1, rng.uniform(0, 2 * strength)))
    noise_std = rng.uniform(0, 20 * strength)
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)).to(x.dtype)
    return (x + noise_std * noise).clamp(0, 255)
