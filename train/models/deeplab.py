"""DeepLab-v2 ResNet backbone as in AdaptSegNet/ADVENT/CLAN (see ../shared/REFERENCE.md).

Differences from torchvision's ResNet, all deliberate to match the published DeepLab-v2 numbers:
- Caffe-style bottleneck: the stride sits on the first 1x1 conv, not on the 3x3 (the layout the DeepLab init file
  was trained in). torchvision's ImageNet weights were trained with it on the 3x3 (ResNet v1.5): the shapes are the
  same, so they would load silently and compute something else. The layout therefore follows the weights' origin:
  `use_stride_layout` moves it, load_pretrained calls it, and the `stride_on_3x3` buffer keeps the choice in every
  checkpoint (older checkpoints without it are the Caffe layout);
- the stem max-pool uses ceil_mode=True (512x1024 -> 65x129 features instead of 64x128);
- layer3/layer4 keep stride 1 and dilate *every* block by 2/4 (torchvision leaves the first block undilated).
Parameter names and shapes are torchvision's (conv1, bn1, layer1..4, downsample.0/.1), so both torchvision
ImageNet weights and the DeepLab init file load without renaming (see pretrained.py).
"""
import torch
from torch import nn

LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DeepLabResNet(nn.Module):
    """ResNet-50/101 feature extractor at output stride 8: (B, 3, H, W) -> (B, 2048, h, w)."""

    out_channels = 2048
    output_stride = 8

    def __init__(self, depth=101):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"DeepLab ResNet depth must be one of {sorted(LAYERS)}, got {depth}")
        self.depth = depth
        self.name = f"DeepLab-v2 ResNet-{depth}"
        blocks = LAYERS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.in_channels = 64
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], dilation=2)
        self.layer4 = self._make_layer(512, blocks[3], dilation=4)
        self.register_buffer("stride_on_3x3", torch.zeros((), dtype=torch.bool))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def use_stride_layout(self, on_3x3):
        """Put layer2's downsampling stride on its first block's 3x3 conv (torchvision weights) or on its 1x1 conv
        (Caffe layout: the DeepLab init file). The only strided bottleneck is layer2's first (layer3/4 dilate)."""
        block = self.layer2[0]
        block.conv1.stride, block.conv2.stride = ((1, 1), (2, 2)) if on_3x3 else ((2, 2), (1, 1))
        self.stride_on_3x3.fill_(bool(on_3x3))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint from before the layout was recorded holds the Caffe layout, the only one there was then.
        state_dict.setdefault(prefix + "stride_on_3x3", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.use_stride_layout(bool(self.stride_on_3x3))

    def _make_layer(self, planes, num_blocks, stride=1, dilation=1):
        downsample = None
        # DeepLab-v2 forces the projection where the layer is dilated; with these widths the channel count
        # changes there anyway, so the condition only documents the reference.
        if stride != 1 or self.in_channels != planes * 4 or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.in_channels, planes, stride, dilation, downsample)]
        self.in_channels = planes * 4
        layers += [Bottleneck(self.in_channels, planes, dilation=dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def imagenet_weights(self):
        """torchvision's ImageNet weights of the same depth (V1: the classic recipe the DeepLab-era papers used)."""
        from torchvision.models import ResNet50_Weights, ResNet101_Weights
        return {50: ResNet50_Weights.IMAGENET1K_V1, 101: ResNet101_Weights.IMAGENET1K_V1}[self.depth]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def feature_size(height, width):
    """Feature map size of DeepLabResNet for an H x W input: conv7x7/2, ceil-mode max-pool /2, 1x1 conv /2."""
    def one(n):
        n = (n - 1) // 2 + 1            # conv 7x7, stride 2, padding 3
        n = -(-(n - 1) // 2) + 1        # max-pool 3x3, stride 2, padding 1, ceil_mode=True
        return (n - 1) // 2 + 1         # layer2's strided 1x1 conv
    return one(height), one(width)
