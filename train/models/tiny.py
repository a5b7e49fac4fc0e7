"""A few-channel backbone that trains on 256x128 toy images in minutes on a 2-core CPU (no pretrained weights)."""
from torch import nn

# DeepLab-v2's 6/12/18/24 are ~0.09-0.37 of the 65 feature rows of a 512x1024 frame; the same fractions of the
# 16 feature rows of a 256x128 toy image, rounded.
TINY_DILATIONS = (2, 3, 4, 6)


def conv_bn_relu(in_channels, out_channels, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """(B, 3, H, W) -> (B, 4 * width, ceil(H/8), ceil(W/8)): three stride-2 stages of two 3x3 convs each."""

    output_stride = 8

    def __init__(self, width=16):
        super().__init__()
        self.name = f"tiny (width {width})"
        self.out_channels = 4 * width
        self.features = nn.Sequential(
            conv_bn_relu(3, width, stride=2),
            conv_bn_relu(width, width),
            conv_bn_relu(width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 2 * width),
            conv_bn_relu(2 * width, 4 * width, stride=2),
            conv_bn_relu(4 * width, 4 * width, dilation=2),  # a wider view before the ASPP, as layer4 of ResNet
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def imagenet_weights(self):
        return None

    def forward(self, x):
        return self.features(x)
