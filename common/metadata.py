"""The metadata of an exported model: what cirn-export writes into it and what the runtime reads back.

One dict of JSON values. In an .onnx file each key is one entry of the graph's metadata_props, its value the key's
JSON text; beside a TensorRT engine it is one JSON file, `model.engine.json`. Keys:

    format_version   METADATA_VERSION
    cirn_version     the cirn that exported it (its presence marks a cirn export)
    model            the network's name (tiny, deeplabv2-r101, ...)
    num_classes, class_names, palette (RGB per class; older exports may have null: colours are made up)
    normalization    imagenet | caffe: applied inside the graph, for information
    input            {name, dtype (uint8 | float32), layout NCHW, channels RGB, range [0, 255]}
    input_size_hw    [H, W] the graph was exported at (older exports: input_size)
    output_stride    the network's output stride (a dynamic size is best a multiple of it)
    dynamic          batch, height and width are symbolic
    output           labels (uint8 (B, H, W)) | probs | logits (float (B, C, H, W)); output_name, output_dtype
    precision        fp32 | fp16 | int8; quantization: how an INT8 graph was calibrated
    source_checkpoint, config_digest, exporter, opset
    tensorrt         engines only: how the engine was built, with its optimisation profile {min, opt, max}

This module needs numpy and the standard library only: the runtime reads metadata without torch or onnx.
"""
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cirn.common.errors import CirnError

METADATA_VERSION = 1
MARKER = "cirn_version"
INPUT_NAME = "frames"  # the graph's one input: (B, 3, H, W) RGB frames
OUTPUTS = ("labels", "probs", "logits")
REQUIRED = ("class_names", "output")


@dataclass(frozen=True)
class ModelMetadata:
    """What a runtime needs to know about a model, from the export's metadata (or a checkpoint's config)."""
    class_names: tuple
    palette: np.ndarray          # (C, 3) uint8 RGB per class
    input_size_hw: tuple         # (H, W) the model was exported (or trained) at
    dynamic: bool                # accepts any frame size (and batch)
    output: str                  # labels | probs | logits: what the graph returns
    max_batch: int = None        # largest batch the graph takes (None: any)
    min_size_hw: tuple = None    # (H, W) bounds of a TensorRT optimisation profile; None: unbounded
    max_size_hw: tuple = None
    output_stride: int = 8
    raw: dict = field(default_factory=dict, repr=False)  # the metadata as stored

    @property
    def num_classes(self):
        """How many classes the model predicts."""
        return len(self.class_names)

    def replace(self, **changes):
        """A copy with `changes` applied."""
        return replace(self, **changes)


def made_up_palette(num_classes, known=()):
    """(num_classes, 3) uint8 colours: those `known` (e.g. Cityscapes' 19), then deterministic pseudo-random ones."""
    known = np.asarray(known, np.uint8).reshape(-1, 3)[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(known), 3)).astype(np.uint8)
    return np.concatenate([known, extra])


def from_dict(meta, source="the model"):
    """ModelMetadata of a metadata dict; a CirnError naming `source` when keys are missing."""
    missing = [key for key in REQUIRED if key not in meta]
    size = meta.get("input_size_hw", meta.get("input_size"))
    if missing or size is None:
        raise CirnError(f"{source} has incomplete cirn metadata (missing {', '.join(missing or ['input_size_hw'])}): "
                        "re-export it with cirn-export")
    if meta["output"] not in OUTPUTS:
        raise CirnError(f"{source} declares output {meta['output']!r}: expected one of {', '.join(OUTPUTS)}")
    names = tuple(meta["class_names"])
    palette = np.asarray(meta["palette"], np.uint8) if meta.get("palette") else made_up_palette(len(names))
    max_batch, min_size_hw, max_size_hw = (None if meta.get("dynamic") else 1), None, None
    profile = (meta.get("tensorrt") or {}).get("profile")
    if profile:  # an engine accepts what its optimisation profile covers
        max_batch = int(profile["max"][0])
        min_size_hw, max_size_hw = tuple(profile["min"][2:]), tuple(profile["max"][2:])
    return ModelMetadata(names, palette, tuple(int(s) for s in size), bool(meta.get("dynamic")), meta["output"],
                         max_batch, min_size_hw, max_size_hw, int(meta.get("output_stride", 8)), dict(meta))


# ---------------------------------------------------------------- how the dict is stored
def encode_props(meta):
    """{key: JSON text}: the metadata as an ONNX graph's metadata_props."""
    return {key: json.dumps(value) for key, value in meta.items()}


def decode_props(props, source="the model"):
    """The metadata dict of an ONNX graph's metadata_props ({key: text}); a CirnError when it is no cirn export."""
    meta = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value  # a key some other tool wrote as plain text
    if MARKER not in meta:
        raise CirnError(f"{source} carries no cirn metadata: was it exported by cirn-export?")
    return meta


def sidecar_path(engine_path):
    """Where an engine's metadata lives: `model.engine` -> `model.engine.json`."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def read_sidecar(engine_path):
    """The metadata dict beside a TensorRT engine."""
    sidecar = sidecar_path(engine_path)
    if not sidecar.is_file():
        raise CirnError(f"{engine_path} has no metadata file {sidecar} beside it: keep the .json that cirn-export "
                        "wrote next to the engine")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CirnError(f"cannot read the engine metadata {sidecar}: {err}") from None
    if not isinstance(meta, dict) or MARKER not in meta:
        raise CirnError(f"{sidecar} carries no cirn metadata: was it written by cirn-export?")
    return meta
