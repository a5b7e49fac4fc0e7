"""The deployed graph: plain RGB frames in, a label map (or probabilities, or logits) out, all in one module.

    frames (B, 3, H, W) RGB 0-255, uint8 or float
      -> normalisation of the backbone's weights (model.normalization)
      -> SegNet.fused: C + ACM logits at feature resolution         (the module evaluation scores)
      -> bilinear upsampling to (H, W)                               (models.upsample, as evaluation)
      -> labels (B, H, W) uint8 | probs (B, C, H, W) | logits (B, C, H, W)

Everything a runtime would otherwise have to re-implement (and could get subtly wrong) lives in the graph.
"""
import torch
from torch import nn

from cirn.common.errors import CirnError
from cirn.train.datasets import normalize_tensor
from cirn.train.models import upsample

from .choices import OUTPUTS


class DeployModel(nn.Module):
    """(B, 3, H, W) RGB frames 0-255 (uint8 or float) -> `output` at the input resolution.

    segnet: the SegNet evaluation uses (its `fused` method and `normalization` are what is exported).
    output: 'labels' (B, H, W) uint8 trainIds (argmax in the graph: H x W bytes to copy back instead of
        C x H x W floats), 'probs' (B, C, H, W) float softmax, or 'logits' (B, C, H, W) float.
    """

    def __init__(self, segnet, output="labels"):
        super().__init__()
        if output not in OUTPUTS:
            raise CirnError(f"unknown output {output!r}: expected one of {', '.join(OUTPUTS)}")
        if output == "labels" and segnet.num_classes > 256:
            raise CirnError(f"a uint8 label map holds at most 256 classes, the model has {segnet.num_classes}; "
                            "export probs or logits instead")
        self.segnet = segnet
        self.output = output
        self.normalization = segnet.normalization
        self.num_classes = segnet.num_classes
        self.eval()

    def normalize(self, frames):
        """(B, 3, H, W) RGB 0-255 -> (B, 3, H, W) float in the convention of the backbone's weights: the tensor form
        training and evaluation use (datasets.normalize_tensor), its constants folded into the exported graph."""
        return normalize_tensor(frames.float(), self.normalization)

    def logits(self, frames):
        """(B, 3, H, W) frames -> (B, C, H, W) fused C + ACM logits, upsampled to the frame size."""
        logits = self.segnet.fused(self.normalize(frames))  # (B, C, h, w)
        return upsample(logits, frames.shape[-2:])  # (B, C, H, W)

    def forward(self, frames):
        logits = self.logits(frames)  # (B, C, H, W)
        if self.output == "labels":
            # ONNX ArgMax yields int64: cast in the graph so the runtime copies back 1 byte per pixel, not 8.
            return logits.argmax(dim=1).to(torch.uint8)  # (B, H, W)
        if self.output == "probs":
            return logits.softmax(dim=1)  # (B, C, H, W)
        return logits
