"""Segmentation networks (backbone + C + ACM), the output-space discriminator, weight loading and summaries.

Models take plain arguments; `build_model(model_cfg)` and `build_discriminator(num_classes)` translate config.
"""
from .acm import AttentionModule, default_attention_scales
from .build import MODEL_NAMES, build_discriminator, build_model, create_model
from .deeplab import DeepLabResNet, feature_size
from .discriminator import FCDiscriminator
from .heads import DEEPLAB_DILATIONS, ASPPClassifier, upsample
from .mobilenet import MOBILENET_DILATIONS, MobileNetV3Backbone
from .pretrained import load_pretrained
from .segnet import SegNet, SegOutput, fuse
from .summary import describe, summarize
from .tiny import TINY_DILATIONS, TinyBackbone

__all__ = [
    "ASPPClassifier", "AttentionModule", "DEEPLAB_DILATIONS", "DeepLabResNet", "FCDiscriminator",
    "MOBILENET_DILATIONS", "MODEL_NAMES", "MobileNetV3Backbone", "SegNet", "SegOutput",
    "TINY_DILATIONS", "TinyBackbone", "build_discriminator", "build_model", "create_model",
    "default_attention_scales", "describe", "feature_size", "fuse", "load_pretrained", "summarize", "upsample",
]
