"""CLAN's output-space discriminator (FCDiscriminator), with CLAN's parameter names."""
from torch import nn


class FCDiscriminator(nn.Module):
    """(B, C, h, w) class probabilities -> (B, 1, ~h/32, ~w/32) logits (no sigmoid: the losses use BCE-with-logits).

    conv4x4/2 C -> 64 -> 128 -> 256 -> 512 -> 1, padding 1, LeakyReLU(0.2) after the first four, no normalisation.
    """

    def __init__(self, num_classes, base_channels=64):
        super().__init__()
        ndf = base_channels
        self.conv1 = nn.Conv2d(num_classes, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, probs):
        x = self.leaky_relu(self.conv1(probs))
        x = self.leaky_relu(self.conv2(x))
        x = self.leaky_relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)
