"""DeepLab-v2 ASPP classifier: the structure shared by C and the ACM classifier on every backbone."""
import torch.nn.functional as F
from torch import nn

DEEPLAB_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
    """(B, C_in, h, w) -> (B, C, h, w): parallel dilated 3x3 convs C_in -> C, outputs SUMMED.

    AdaptSegNet's copy returns after the first two branches (a bug); all branches are summed here, as DeepLab-v2.
    """

    def __init__(self, in_channels, num_classes, dilations=DEEPLAB_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def upsample(logits, size):
    """Bilinear resize of (B, C, h, w) to (B, C, *size) with align_corners=False.

    The one resize used by the losses, evaluation and export: align_corners=False is PyTorch's default and ONNX
    Resize's half_pixel mode, so training, PyTorch evaluation and TensorRT agree.
    """
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
