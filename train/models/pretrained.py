"""Backbone initialisation: random, torchvision ImageNet weights, or a weights file.

A file may hold torchvision's keys (conv1.weight, layer1.0.conv1.weight, features.0.0.weight, ...) or those of the
DeepLab init file of AdaptSegNet/CLAN (DeepLab_resnet_pretrained_init-f81d91e8.pth: Scale.conv1.weight, ...,
Scale.layer5.* = its classifier), or a cirn training checkpoint of the same architecture (its backbone only: the
toy's stand-in for ImageNet features is the backbone of a source-only run). Classifier weights are skipped: their
class counts may differ from ours. The weights decide the input normalisation, recorded on the model: DeepLab init
(Caffe) -> 'caffe', a cirn checkpoint -> its own, else 'imagenet'.
"""
from pathlib import Path
from urllib.parse import urlparse

import torch

from cirn.common.errors import CirnError
from cirn.common.normalization import NORMALIZATIONS

# Top-level names of classification heads in the files we read: torchvision ResNet (fc), torchvision MobileNet
# (classifier), DeepLab init / CLAN (layer5, layer6), a cirn checkpoint (C, the ACM's classifier and attention).
HEAD_KEYS = ("fc", "classifier", "layer5", "layer6", "classifier_c", "classifier_acm", "attention")


def load_pretrained(model, spec):
    """Initialise `model.backbone` from `spec` ('' | 'imagenet' | a file path) and set `model.normalization`.

    Returns a one-line report of what was loaded and what was skipped. Raises CirnError when the weights cannot be
    had (offline, missing file) or do not fit the backbone (another architecture).
    """
    backbone = model.backbone
    if not spec:
        model.normalization = "imagenet"
        return f"{backbone.name}: random init"
    if spec == "imagenet":
        state, source, fmt = _imagenet_state_dict(backbone), f"torchvision {_imagenet_name(backbone)}", "torchvision"
    else:
        path = Path(spec).expanduser()
        state, fmt = _read_state_dict(path)
        source = str(path)
    normalization = {"deeplab-init": "caffe", "torchvision": "imagenet"}.get(fmt)
    if fmt == "cirn checkpoint":  # the checkpoint's own
        normalization = NORMALIZATIONS[int(state.pop("normalization_index", 0))]
    skipped = _load_backbone(backbone, state, source, fmt)
    if hasattr(backbone, "use_stride_layout") and fmt != "cirn checkpoint":  # a checkpoint restores its own
        backbone.use_stride_layout(fmt == "torchvision")  # torchvision ResNets stride on the 3x3 conv
    model.normalization = normalization
    report = f"{backbone.name}: {len(state) - len(skipped)} tensors from {source} ({fmt} format, " \
             f"{model.normalization} normalisation)"
    if skipped:
        report += f"; skipped {len(skipped)} classifier tensors ({_preview(skipped)})"
    return report


def _imagenet_name(backbone):
    weights = backbone.imagenet_weights()
    return f"{type(weights).__name__}.{weights.name}" if weights is not None else "none"


def _imagenet_state_dict(backbone):
    weights = backbone.imagenet_weights()
    if weights is None:
        raise CirnError(f"the {backbone.name} model has no ImageNet weights: use model.pretrained='' (random init) "
                        "or a weights file")
    try:
        return dict(weights.get_state_dict(progress=False, map_location="cpu", weights_only=True))
    except Exception as err:  # offline (URLError), a truncated cache file (RuntimeError), ...: all say the same
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise CirnError(f"cannot get torchvision's {_imagenet_name(backbone)} weights ({type(err).__name__}: {err}). "
                        f"Download {weights.url} on a machine with internet and pass --pretrained PATH "
                        f"(model.pretrained=PATH), or copy it to {cached}") from None


def _read_state_dict(path):
    """Tensors of a weights file, keys normalised to the backbone's; returns (state, 'torchvision' | 'deeplab-init')."""
    if not path.is_file():
        raise CirnError(f"pretrained weights {path} do not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CirnError(f"cannot read pretrained weights {path}: {type(err).__name__}: {err}") from None
    # Training checkpoints wrap the weights; take the wrapped dict.
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not state:
        raise CirnError(f"pretrained weights {path} hold no state dict of tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("Scale.") for k in state):
        return {k.removeprefix("Scale."): v for k, v in state.items()}, "deeplab-init"
    if any(k.startswith("backbone.") for k in state):  # a cirn checkpoint: SegNet keys, its heads get skipped
        return {k.removeprefix("backbone."): v for k, v in state.items()}, "cirn checkpoint"
    return state, "torchvision"


def _load_backbone(backbone, state, source, fmt):
    """Copy `state` into `backbone` after checking it is the same architecture; returns the skipped head keys."""
    expected = backbone.state_dict()
    skipped = sorted(k for k in state if k not in expected and k.split(".")[0] in HEAD_KEYS)
    # The Caffe-converted DeepLab init has no BN batch counters, and no weights file but ours records the stride
    # layout (load_pretrained sets it from the format): bookkeeping, not weights.
    missing = sorted(k for k in expected if k not in state and not k.endswith(("num_batches_tracked",
                                                                                "stride_on_3x3")))
    unexpected = sorted(k for k in state if k not in expected and k not in skipped)
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                         for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or wrong_shape:
        problems = [f"{len(items)} {what} ({_preview(items)})" for what, items in
                    (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong_shape)) if items]
        raise CirnError(f"pretrained weights {source} ({fmt} format) do not fit the {backbone.name} backbone: "
                        f"{'; '.join(problems)}. Are they weights of another architecture?")
    backbone.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return skipped


def _preview(keys, limit=3):
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
