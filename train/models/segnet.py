"""CIRN's segmentation network: backbone, classifier C and the Ancillary Classifier Module (ACM).

    logits_c   = C(f)                                  f = backbone(x), (B, C_in, h, w)
    logits_acm = ACM(f) = cls_acm(f)                                    when K = 0
                        = sum_k cls_acm((1 + a_k(f)) * f)               otherwise
    prediction = logits_c + logits_acm                 (`fuse`: what training, evaluation and export score)
"""
from typing import NamedTuple

import torch
from torch import nn

from cirn.common.normalization import NORMALIZATIONS

from .acm import AttentionModule, default_attention_scales
from .heads import DEEPLAB_DILATIONS, ASPPClassifier



def fuse(logits_c, logits_acm):
    """(B, C, h, w) x 2 -> (B, C, h, w) the network's prediction, C + ACM: the one definition of the fusion."""
    return logits_c + logits_acm


class SegOutput(NamedTuple):
    logits_c: torch.Tensor    # (B, C, h, w) classifier C, at feature resolution
    logits_acm: torch.Tensor  # (B, C, h, w) ancillary classifier module
    attention: torch.Tensor   # (B, K, h, w) attention maps in [0, 1]; K = 0 gives (B, 0, h, w)

    @property
    def fused(self):
        """(B, C, h, w) fuse(logits_c, logits_acm), the prediction the losses train."""
        return fuse(self.logits_c, self.logits_acm)


BATCHNORM_MODES = ("frozen", "batch-stats", "train")  # what SegNet takes; config adds auto

class SegNet(nn.Module):
    """(B, 3, H, W) -> SegOutput at the backbone's feature resolution; `fused(x)` -> (B, C, h, w).

    backbone: (B, 3, H, W) -> (B, out_channels, h, w), with attributes `out_channels`, `output_stride`, `name` and
        `imagenet_weights()` (torchvision weights enum or None; used by load_pretrained).
    head_dilations: the ASPP dilations of C and of the ACM classifier (DeepLab-v2's at output stride 8).
    attention_scales: pooling window s_k of each attention module, in feature pixels; default 2, 4, 8, ...
    batchnorm: the backbone's BatchNorm while training. 'frozen': pretrained statistics and affine parameters,
        modules in eval mode (detectron2's FrozenBatchNorm). 'batch-stats': the reference code's (AdaptSegNet, CLAN,
        ADVENT): affine parameters frozen, modules in train mode, so each batch is normalised with its own
        statistics and the running statistics keep moving with the source and target images. 'train': all trained.
    """

    def __init__(self, backbone, num_classes, num_attention=2, attention_scales=None,
                 head_dilations=DEEPLAB_DILATIONS, batchnorm="frozen", normalization="imagenet"):
        super().__init__()
        if attention_scales is None:
            attention_scales = default_attention_scales(num_attention)
        if len(attention_scales) != num_attention:
            raise ValueError(f"{num_attention} attention modules need {num_attention} scales, got {attention_scales}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier_c = ASPPClassifier(backbone.out_channels, num_classes, head_dilations)
        self.classifier_acm = ASPPClassifier(backbone.out_channels, num_classes, head_dilations)
        self.attention = nn.ModuleList(AttentionModule(backbone.out_channels, s) for s in attention_scales)
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")
        self.batchnorm = batchnorm
        self.register_buffer("normalization_index", torch.zeros((), dtype=torch.long))
        self.normalization = normalization
        if batchnorm != "train":
            for module in self._batchnorms():
                for p in module.parameters():
                    p.requires_grad_(False)

    @property
    def num_attention(self):
        return len(self.attention)

    @property
    def output_stride(self):
        return self.backbone.output_stride

    def _batchnorms(self):
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode=True):
        """As nn.Module.train, but 'frozen' BatchNorm layers stay in eval mode (running statistics untouched)."""
        super().train(mode)
        if self.batchnorm == "frozen":
            for module in self._batchnorms():
                module.eval()
        return self

    def backbone_parameters(self):
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self):
        """C, the ACM classifier and the attention convs: the new layers, trained at 10x the backbone lr."""
        heads = (self.classifier_c, self.classifier_acm, self.attention)
        return [p for head in heads for p in head.parameters() if p.requires_grad]

    def _heads(self, features):
        logits_c = self.classifier_c(features)
        if self.num_attention == 0:
            return logits_c, self.classifier_acm(features), []
        outputs, maps = zip(*(module(features) for module in self.attention))  # K x (B, C_in, h, w), (B, 1, h, w)
        logits_acm = self.classifier_acm(sum(outputs) / self.num_attention)  # acm.py says why the mean
        return logits_c, logits_acm, list(maps)

    def forward(self, x):
        features = self.backbone(x)
        logits_c, logits_acm, maps = self._heads(features)
        if maps:
            attention = torch.cat(maps, dim=1)
        else:
            attention = features.new_zeros(features.shape[0], 0, *features.shape[2:])
        return SegOutput(logits_c, logits_acm, attention)

    def fused(self, x):
        """(B, 3, H, W) -> (B, C, h, w) logits_c + logits_acm: the prediction evaluated and exported."""
        logits_c, logits_acm, _ = self._heads(self.backbone(x))
        return fuse(logits_c, logits_acm)

    # The input normalisation the backbone's weights expect (common.normalization: imagenet for torchvision
    # weights, caffe for the DeepLab init file); the data pipeline, checkpoints and export read it.
    # It is stored as an index into NORMALIZATIONS, a buffer, so that it travels inside state_dict(): every
    # checkpoint restores it with the weights. (A string in get_extra_state() would too, but breaks torch.jit.trace,
    # which the TorchScript ONNX exporter uses.)
    @property
    def normalization(self):
        return NORMALIZATIONS[int(self.normalization_index)]

    @normalization.setter
    def normalization(self, value):
        if value not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {value!r}")
        self.normalization_index.fill_(NORMALIZATIONS.index(value))

