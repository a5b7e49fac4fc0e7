"""Model factories: names and config -> modules."""
import logging

from cirn.common.errors import CirnError
from ..config import MODEL_NAMES
from .deeplab import DeepLabResNet
from .discriminator import FCDiscriminator
from .heads import DEEPLAB_DILATIONS
from .mobilenet import MOBILENET_DILATIONS, MobileNetV3Backbone
from .pretrained import load_pretrained
from .segnet import SegNet
from .tiny import TINY_DILATIONS, TinyBackbone

log = logging.getLogger(__name__)


def create_model(name, num_classes=19, num_attention=2, base_width=16, attention_scales=None, batchnorm=None):
    """A randomly initialised SegNet by name; batchnorm=None: 'frozen' for all but the tiny model ('train')."""
    if name == "deeplabv2-r101":
        backbone, dilations = DeepLabResNet(101), DEEPLAB_DILATIONS
    elif name == "deeplabv2-r50":
        backbone, dilations = DeepLabResNet(50), DEEPLAB_DILATIONS
    elif name == "mobilenetv3":
        backbone, dilations = MobileNetV3Backbone(), MOBILENET_DILATIONS
    elif name == "tiny":
        backbone, dilations = TinyBackbone(base_width), TINY_DILATIONS
    else:
        raise CirnError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    if batchnorm is None:
        batchnorm = "train" if name == "tiny" else "frozen"
    return SegNet(backbone, num_classes, num_attention=num_attention, attention_scales=attention_scales,
                  head_dilations=dilations, batchnorm=batchnorm)


def build_model(model_cfg, load_weights=True):
    """SegNet from a ModelConfig; with load_weights, the backbone is initialised from model_cfg.pretrained.

    Pass load_weights=False when a checkpoint is loaded next (resume, export): its state dict restores the weights
    and model.normalization. BatchNorm is frozen where its statistics come from pretrained weights (batch-1
    training cannot re-estimate them): always for DeepLab-v2 (the reference protocol), for MobileNetV3 when
    pretrained; the tiny model trains its BatchNorm from scratch. model_cfg.batchnorm = frozen | batch-stats |
    train overrides (SegNet says what each is; the paper presets use the reference code's batch-stats).
    """
    name = model_cfg.name
    frozen = name.startswith("deeplabv2") or (name == "mobilenetv3" and bool(model_cfg.pretrained))
    batchnorm = ("frozen" if frozen else "train") if model_cfg.batchnorm == "auto" else model_cfg.batchnorm
    model = create_model(name, model_cfg.num_classes, model_cfg.num_attention, base_width=model_cfg.width,
                         batchnorm=batchnorm)
    if load_weights:
        log.info(load_pretrained(model, model_cfg.pretrained))
    return model


def build_discriminator(num_classes, base_channels=64):
    """CLAN's output-space discriminator; base_channels=64 is CLAN's (2,781,121 parameters at 19 classes).

    On the toy setting D, run on full-resolution probabilities, costs more than the tiny segmentation network;
    base_channels=16 cuts its FLOPs ~16x (wall time ~4x on 2 CPU cores).
    """
    return FCDiscriminator(num_classes, base_channels)
