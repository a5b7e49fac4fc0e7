"""Attention modules of the Ancillary Classifier Module (ACM), after the same group's SEANet (REFERENCE.md).

a_k(x) = sigmoid(conv1x1_{C_in -> 1}(upsample(avgpool_{s_k}(x)))): one weight in [0, 1] per feature pixel, from
the context of an s_k x s_k window. The ACM classifies (1 + a_k(x)) * x with its own copy of the classifier.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .heads import upsample


def default_attention_scales(num_attention):
    """s_k = 2, 4, 8, ... feature pixels.

    At output stride 8 on a 512x1024 frame (65x129 features), K=2 (the paper's best) pools 16- and 32-pixel image
    windows: part- to object-sized context. Larger K adds coarser windows; past the feature size a window is the
    whole map (global context), so any K works on any input size.
    """
    return tuple(2 ** k for k in range(1, num_attention + 1))


class AttentionModule(nn.Module):
    """(B, C_in, h, w) features -> (B, 1, h, w) attention in [0, 1]."""

    def __init__(self, in_channels, scale):
        super().__init__()
        self.scale = int(scale)
        self.conv = nn.Conv2d(in_channels, 1, 1)
        # Starts at a = sigmoid(0) = 0.5 everywhere: the ACM begins as a uniformly scaled classifier.
        nn.init.normal_(self.conv.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        # ceil_mode keeps the border pixels a full window would drop, and with count_include_pad=False a partial
        # window is the plain mean of its pixels (ONNX AveragePool means the same): works for s > feature size.
        pooled = F.avg_pool2d(x, self.scale, self.scale, ceil_mode=True, count_include_pad=False)
        # The 1x1 conv runs before the upsampling: both are linear and bilinear weights sum to 1, so the result
        # equals conv(upsample(pool(x))) while upsampling 1 channel instead of C_in.
        return torch.sigmoid(upsample(self.conv(pooled), x.shape[-2:]))
