"""The Ancillary Classifier Module (ACM): K residual attention modules embedded in a copy of the classifier.

The paper: "K attention modules embedded in a classifier, the output of ACM is the sum of the K modules"; its
references are the residual attention network (Wang et al. 2017: a trunk T(x) and a soft mask M(x) in [0, 1],
output (1 + M(x)) * T(x)) and the same group's SEANet. [ours] Module k here:

    a_k(x) = sigmoid(conv1x1_{C_in -> 1}(upsample(avgpool_{s_k}(x))))      mask: one weight in [0, 1] per pixel,
                                                                             from the context of an s_k window
    T_k(x) = relu(depthwise3x3_k(x))                                        its own trunk
    ACM(x) = W_ACM( (1/K) sum_k (1 + a_k(x)) * T_k(x) )                     one classifier copy W_ACM, as C

Why a trunk per module: K masks on one shared linear classifier fold into one, sum_k W((1 + a_k) x) =
W((K + sum_k a_k) x) (REFERENCE.md's "trap"): one effective map and logits K times C's, so K would change nothing
but a scale. With its own trunk (a non-linearity between mask and classifier) each module moves the logits in its
own direction: `tests/test_models.py` shows the K=2 ACM's response to its two masks spanning two directions per
pixel, where one module (or the folded design) spans one. The trunk is the cheapest that does it: a depthwise 3x3
conv (9 C_in + C_in parameters, 20,480 for DeepLab's 2048 channels, against 1.4 M for a classifier copy), started
near the identity, so at initialisation each module is about (1 + a_k) x. The mean (1/K) rather than the plain sum
keeps the ACM's logits on C's scale whatever K: the sum up to a constant factor, which the classifier absorbs, and
K no longer shifts the C/ACM balance of the fused prediction. The single classifier copy keeps the paper's "C and
the classifier in ACM are copies of the last classification module" and CLAN's weight discrepancy between two
classifiers of the same shape. K=0: the ACM is that plain classifier copy.
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
    """One residual attention module: (B, C_in, h, w) features -> ((1 + a(x)) * T(x), a(x) (B, 1, h, w) in [0, 1])."""

    def __init__(self, in_channels, scale):
        super().__init__()
        self.scale = int(scale)
        self.conv = nn.Conv2d(in_channels, 1, 1)
        # The mask starts at a = sigmoid(0) = 0.5 everywhere.
        nn.init.normal_(self.conv.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv.bias)
        self.trunk = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        # Near the identity (features are >= 0 after the backbone's ReLU, so relu(x) = x), each trunk a little
        # different from the others so that the modules can part from the first step.
        nn.init.normal_(self.trunk.weight, 0.0, 0.01)
        with torch.no_grad():
            self.trunk.weight[:, :, 1, 1] += 1.0
        nn.init.zeros_(self.trunk.bias)

    def mask(self, x):
        """(B, C_in, h, w) -> (B, 1, h, w) attention in [0, 1]."""
        # ceil_mode keeps the border pixels a full window would drop, and with count_include_pad=False a partial
        # window is the plain mean of its pixels (ONNX AveragePool means the same): works for s > feature size.
        pooled = F.avg_pool2d(x, self.scale, self.scale, ceil_mode=True, count_include_pad=False)
        # The 1x1 conv runs before the upsampling: both are linear and bilinear weights sum to 1, so the result
        # equals conv(upsample(pool(x))) while upsampling 1 channel instead of C_in.
        return torch.sigmoid(upsample(self.conv(pooled), x.shape[-2:]))

    def forward(self, x):
        attention = self.mask(x)  # (B, 1, h, w)
        return (1 + attention) * F.relu(self.trunk(x)), attention
