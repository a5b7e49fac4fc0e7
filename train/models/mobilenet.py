"""MobileNetV3-Large backbone for deployment: torchvision's `features`, last stage dilated (output stride 16).

Output stride 16, not 8: it is torchvision's own setting for MobileNetV3 segmentation (LR-ASPP, DeepLabV3) and
keeps the ImageNet weights' receptive fields in all but the last stage; output stride 8 would dilate two stages
and run the widest blocks on 4x the pixels, for a network whose point is speed. 512x1024 -> 32x64 features.
"""
from torch import nn

# DeepLab-v2's 6/12/18/24 at output stride 8 cover the same image area at half the dilation here.
MOBILENET_DILATIONS = (3, 6, 9, 12)


class MobileNetV3Backbone(nn.Module):
    """(B, 3, H, W) -> (B, 960, ceil(H/16), ceil(W/16)); parameter names are torchvision's `features.*`."""

    name = "MobileNetV3-Large"
    out_channels = 960
    output_stride = 16

    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v3_large
        self.features = mobilenet_v3_large(weights=None, dilated=True).features

    def imagenet_weights(self):
        from torchvision.models import MobileNet_V3_Large_Weights
        return MobileNet_V3_Large_Weights.IMAGENET1K_V1

    def forward(self, x):
        return self.features(x)
