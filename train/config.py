"""Configuration: nested dataclasses, loaded from YAML, overridden with `key.sub=value`.

Unknown keys and wrong types are errors that name the key and list the valid ones. Models never read this:
`build_*` functions translate a config into plain arguments.
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import CirnError
from .io import atomic_write_text

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    source: str = "toy"
    """Labelled source domain: toy | gta5 | synthia."""
    source_root: str = ""
    """Source dataset root; empty = the built-in toy source (generated into $CIRN_DATA on first use)."""
    target: str = "toy"
    """Unlabelled target domain: toy | cityscapes."""
    target_root: str = ""
    """Target dataset root (Cityscapes layout); empty = the built-in toy target."""
    intermediate_root: str = ""
    """Intermediate domain (translated source, source layout); replaces the source images when set."""
    source_list: str = ""
    """Optional text file of source image names (one per line); default: every pair found, sorted."""
    target_list: str = ""
    """Optional text file of target image names for the train split."""
    source_size: tuple = (320, 180)
    """Source images are resized to (width, height); labels with nearest neighbour."""
    target_size: tuple = (256, 128)
    """Target images are resized to (width, height) for training; evaluation upsamples to label size."""
    val_split: str = "val"
    """Target split used for evaluation."""
    max_val_images: int = 0
    """Evaluate on at most this many target val images (0 = all)."""
    protocol: int = 19
    """Classes averaged into the mIoU: 19, 16 or 13."""
    flip: bool = True
    """Random horizontal flip of training images."""
    num_workers: int = 0
    """DataLoader worker processes."""

    def __post_init__(self):
        _check_choice("data.source", self.source, ("toy", "gta5", "synthia"))
        _check_choice("data.target", self.target, ("toy", "cityscapes"))
        _check_choice("data.protocol", self.protocol, (19, 16, 13))
        for name in ("source_size", "target_size"):
            size = tuple(getattr(self, name))
            if len(size) != 2 or min(size) < 8:
                raise CirnError(f"data.{name} must be [width, height] of at least 8 pixels, got {list(size)}")
            setattr(self, name, size)


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Segmentation network: deeplabv2-r101 | deeplabv2-r50 | mobilenetv3 | tiny."""
    num_classes: int = 19
    """Output classes (trainIds 0..num_classes-1)."""
    num_attention: int = 2
    """K, attention modules in the ACM (0 = ACM is a plain second classifier)."""
    pretrained: str = ""
    """Backbone init: '' (random), 'imagenet' (torchvision weights, needs them cached) or a file path."""
    width: int = 16
    """Base channel width of the tiny model (ignored by the others)."""

    def __post_init__(self):
        _check_choice("model.name", self.name, ("deeplabv2-r101", "deeplabv2-r50", "mobilenetv3", "tiny"))
        if not 0 <= self.num_attention <= 8:
            raise CirnError(f"model.num_attention (K) must be in 0..8, got {self.num_attention}")


@dataclass
class OptimConfig:
    lr: float = 2.5e-4
    """SGD learning rate of the backbone; poly-decayed."""
    head_lr_mult: float = 10.0
    """Classifier heads train with this multiple of lr."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    """Poly decay: lr * (1 - i / iterations) ** power."""
    warmup: int = 0
    """Linear warm-up iterations before the poly decay."""
    d_lr: float = 1e-4
    """Adam learning rate of the output-space discriminator."""
    d_betas: tuple = (0.9, 0.99)


@dataclass
class AdaptConfig:
    lambda_adv: float = 0.001
    """Weight of the pixel-level adversarial loss."""
    lambda_cos: float = 40.0
    """Scale of the C/ACM disagreement R in the adversarial weight map."""
    eps: float = 0.4
    """Floor of the adversarial weight map."""
    lambda_weight: float = 0.01
    """Weight-discrepancy loss between the C and ACM classifiers."""
    preheat: float = 0.05
    """Fraction of iterations with a plain (unweighted) adversarial loss, as CLAN."""
    damp: bool = True
    """Damp the adversarial and discrepancy weights by (1 - i / iterations), as CLAN."""
    disc_channels: int = 64
    """Base width of the output-space discriminator (64 = CLAN's; the toy preset uses 16 for speed)."""


@dataclass
class RunConfig:
    iterations: int = 2000
    batch_size: int = 4
    eval_every: int = 500
    """Evaluate on target val every this many iterations (and at the end); the best checkpoint is kept."""
    checkpoint_every: int = 500
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    amp: str = "none"
    """Mixed precision: none | bf16 | fp16 (fp16 on CUDA only)."""
    tensorboard: bool = True

    def __post_init__(self):
        _check_choice("run.amp", self.amp, ("none", "bf16", "fp16"))
        if self.iterations < 1 or self.batch_size < 1:
            raise CirnError("run.iterations and run.batch_size must be at least 1")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _check_choice(key, value, choices):
    if value not in choices:
        raise CirnError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _coerce(key, value, annotation):
    """Check `value` against a field annotation; ints widen to floats, lists to tuples."""
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if value is None and option is type(None):
                return None
            try:
                return _coerce(key, value, option)
            except CirnError:
                pass
        raise CirnError(f"{key}: {value!r} is not a {annotation}")
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CirnError(f"{key}: expected a list like [a, b], got {value!r}")
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise CirnError(f"{key}: expected true or false, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation) or (
            annotation is int and isinstance(value, bool)):
        raise CirnError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def merge(cfg, updates, prefix=""):
    """Return a copy of dataclass `cfg` with the nested dict `updates` applied; strict about keys and types."""
    if not isinstance(updates, dict):
        raise CirnError(f"{prefix or 'config'}: expected a mapping of keys, got {updates!r}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise CirnError(f"unknown config key '{full}': valid keys here are {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(full, value, hints[key])
    try:
        return dataclasses.replace(cfg, **changes)
    except TypeError as err:
        raise CirnError(f"{prefix or 'config'}: {err}") from None


def parse_overrides(items):
    """['run.iterations=10', 'data.source_size=[64,32]'] -> nested dict; values parsed as YAML."""
    updates = {}
    for item in items:
        if "=" not in item:
            raise CirnError(f"override {item!r} must look like key.sub=value (e.g. run.iterations=100)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = updates
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return updates


def preset_names():
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise CirnError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise CirnError(f"config file {path} is not valid YAML: {err}") from None
    return data


def load_config(preset="toy", config_file=None, overrides=(), base=None):
    """Defaults <- preset <- YAML file <- `key.sub=value` overrides, each layer checked strictly."""
    cfg = base if base is not None else Config()
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise CirnError(f"unknown preset '{preset}': choose one of {', '.join(preset_names())}")
        cfg = merge(cfg, read_yaml(path))
    if config_file:
        cfg = merge(cfg, read_yaml(config_file))
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg):
    """Plain nested dict (tuples as lists) for YAML, JSON and checkpoints."""
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(cfg))


def from_dict(data):
    return merge(Config(), data)


def save_config(cfg, path):
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
