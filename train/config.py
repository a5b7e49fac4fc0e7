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

from cirn.common.errors import CirnError
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
    pseudo_root: str = ""
    """Pseudo labels of the target train split in the Cityscapes layout (gtFine/train/...), written by stage 3."""
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
    bad_images: str = "fail"
    """An unreadable training image or label: fail (an error naming the file) | skip (warn, leave it out, list it in
    the run's summary.json as skipped_images; with num_workers > 0 only the warnings name those the workers met)."""

    def __post_init__(self):
        _check_choice("data.source", self.source, ("toy", "gta5", "synthia"))
        _check_choice("data.target", self.target, ("toy", "cityscapes"))
        _check_choice("data.protocol", self.protocol, (19, 16, 13))
        _check_choice("data.bad_images", self.bad_images, ("fail", "skip"))
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
    """Backbone init: '' (random), 'imagenet' (torchvision weights, needs them cached) or a file path (torchvision
    or DeepLab-init weights, or a cirn checkpoint: its backbone). all-stages with '' starts the steps after SO from
    the SO step's backbone."""
    width: int = 16
    """Base channel width of the tiny model (ignored by the others)."""
    batchnorm: str = "auto"
    """auto (frozen for DeepLab-v2 and a pretrained MobileNetV3, training otherwise) | frozen | train. Frozen
    BatchNorm makes a torchrun run follow the single-process one exactly (no per-process batch statistics)."""

    def __post_init__(self):
        _check_choice("model.name", self.name, ("deeplabv2-r101", "deeplabv2-r50", "mobilenetv3", "tiny"))
        _check_choice("model.batchnorm", self.batchnorm, ("auto", "frozen", "train"))
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
class Stage1Config:
    """Stage 1: the intermediate domain (content-invariant representation), by CycleGAN or FDA."""
    cir: str = "cyclegan"
    """How the intermediate domain is built: cyclegan (trained S <-> T translation, the paper's) | fda (training-free
    Fourier amplitude swap)."""
    iterations: int = 0
    """CycleGAN training iterations; 0 = run.iterations. Non-zero replaces run.iterations in the stage-1 run (its
    saved config shows the value used), so one config file can size stage 1 and the segmentation stages apart."""
    crop_size: tuple = (1024, 512)
    """(width, height) random crop of the resized source and target images for training; multiples of 4 that fit
    in data.source_size and data.target_size. Translation runs on the whole resized source image."""
    ngf: int = 64
    """Generator base width (junyanz: 64)."""
    ndf: int = 64
    """PatchGAN base width (junyanz: 64)."""
    n_blocks: int = 9
    """Residual blocks of each generator (junyanz: 9)."""
    gan_mode: str = "lsgan"
    """GAN objective: lsgan (MSE, CycleGAN's default) | vanilla (log loss / BCE, the paper's formulation)."""
    lambda_cycle: float = 10.0
    """Weight of each cycle-consistency L1 term."""
    lambda_identity: float = 0.5
    """Identity L1 weight as a fraction of lambda_cycle (junyanz: 0.5); 0 disables the identity terms."""
    lambda_sem: float = 1.0
    """Weight of the semantic-consistency CE of the frozen source model on G(x_s); 0 trains a plain CycleGAN."""
    seg_checkpoint: str = ""
    """Source-only segmentation checkpoint (best.pt of `cirn-train source-only`): the frozen f_S of L_sem."""
    lr: float = 2e-4
    """Adam learning rate of the generators and the discriminators."""
    betas: tuple = (0.5, 0.999)
    """Adam betas."""
    decay_start: float = 0.5
    """Fraction of the iterations at constant lr; the lr then decays linearly to 0 (junyanz: half and half)."""
    pool_size: int = 50
    """Generated images kept in each discriminator's history pool; 0 = no pool."""
    beta: float = 0.01
    """FDA: half-width of the swapped low-frequency band as a fraction of min(h, w) (FDA: 0.01, 0.05, 0.09)."""

    def __post_init__(self):
        _check_choice("stage1.cir", self.cir, ("cyclegan", "fda"))
        _check_choice("stage1.gan_mode", self.gan_mode, ("lsgan", "vanilla"))
        crop = tuple(self.crop_size)
        if len(crop) != 2 or min(crop) < 16 or crop[0] % 4 or crop[1] % 4:
            raise CirnError(f"stage1.crop_size must be [width, height], multiples of 4 and at least 16, got "
                            f"{list(crop)}")
        self.crop_size = crop
        if self.iterations < 0 or self.pool_size < 0 or self.ngf < 1 or self.ndf < 1 or self.n_blocks < 0:
            raise CirnError("stage1.iterations, pool_size and n_blocks must be >= 0, ngf and ndf >= 1")
        if min(self.lambda_cycle, self.lambda_identity, self.lambda_sem, self.lr) < 0:
            raise CirnError("stage1.lambda_* and stage1.lr must be >= 0")
        if not 0 <= self.decay_start <= 1:
            raise CirnError(f"stage1.decay_start must be in [0, 1], got {self.decay_start}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2:
            raise CirnError(f"stage1.betas must be [beta1, beta2], got {list(self.betas)}")
        if not 0 <= self.beta < 0.5:
            raise CirnError(f"stage1.beta must be in [0, 0.5), got {self.beta}")


@dataclass
class Stage3Config:
    policy: str = "cbst"
    """Pseudo-label thresholds per class: 'cbst' (top-portion confidence, label = argmax(prob / threshold)) or
    'fda' (min(max_threshold, percentile of the confidences of pixels predicted as the class))."""
    rounds: int = 1
    """Self-training rounds: pseudo-label with the current model, fine-tune, repeat."""
    portion: float = 0.2
    """cbst: share of each class's most confident pixels kept in round 1."""
    portion_step: float = 0.05
    """cbst: the share grows by this much each round ..."""
    portion_max: float = 0.5
    """... up to this."""
    percentile: float = 66.0
    """fda: per-class confidence percentile used as threshold."""
    max_threshold: float = 0.9
    """fda: thresholds are capped at this."""
    iterations: int = 0
    """Fine-tuning iterations per round (0 = run.iterations)."""
    source_weight: float = 1.0
    """Weight of the CE on the labelled source (the intermediate domain when given) trained alongside the pseudo
    labels, as CBST; 0 = pseudo labels only."""
    easy_split: float = 1.0
    """Share of the target train images pseudo-labelled and trained on: those whose prediction has the lowest mean
    entropy (IntraDA's easy split, 0.67 there); 1 = all."""
    kld_weight: float = 0.0
    """Weight of CRST's MR-KLD confidence regulariser on the pseudo-labelled pixels (CRST uses 0.1); 0 = off."""

    def __post_init__(self):
        _check_choice("stage3.policy", self.policy, ("cbst", "fda"))
        if not 0 < self.portion <= 1 or not 0 < self.portion_max <= 1 or not 0 < self.easy_split <= 1:
            raise CirnError("stage3.portion, stage3.portion_max and stage3.easy_split must be in (0, 1]")
        if self.kld_weight < 0 or self.source_weight < 0:
            raise CirnError("stage3.kld_weight and stage3.source_weight must be >= 0")
        if self.rounds < 1:
            raise CirnError(f"stage3.rounds must be at least 1, got {self.rounds}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)


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
