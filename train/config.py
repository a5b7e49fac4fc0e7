"""Configuration: nested dataclasses, loaded from YAML, overridden with `key.sub=value`.

Unknown keys and wrong types are errors that name the key and list the valid ones; each section checks its counts,
periods and rates in __post_init__ (an error names the key and the valid range). Sections are frozen: a changed
config is a new one, made by merge() or dataclasses.replace(), both of which check again. Models never read this:
`build_*` functions translate a config into plain arguments.
"""
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from cirn.common.errors import CirnError
from cirn.common.files import atomic_write_text
from cirn.common.sources import BAD_FRAME_POLICIES  # the runtime's policies, for a video target

PRESET_DIR = Path(__file__).parent / "presets"

# The choices of the config, defined here only: the CLI's click.Choice lists and the model factory read them.
# (This module imports neither torch nor, at module level, yaml: cirn.cli reads these lists when it starts, and the
# deploy-only install runs cirn-run from the same module.)
SOURCES = ("toy", "gta5", "synthia", "folder")
TARGETS = ("toy", "cityscapes", "folder", "video")
SELECTIONS = ("auto", "miou", "last", "entropy", "disagreement", "flip")
TOY_LOOKS = ("camera", "dusk")
PROTOCOLS = (19, 16, 13)
BAD_IMAGE_POLICIES = ("fail", "skip")
MODEL_NAMES = ("deeplabv2-r101", "deeplabv2-r50", "mobilenetv3", "tiny")
BATCHNORM_MODES = ("auto", "frozen", "batch-stats", "train")
AMP_MODES = ("auto", "none", "bf16", "fp16")
CIR_METHODS = ("cyclegan", "fda")
GAN_MODES = ("lsgan", "vanilla")
UPSAMPLE_MODES = ("deconv", "resize")
FDA_SPACES = ("linear", "log")
PSEUDO_LABEL_POLICIES = ("cbst", "fda")
OPTIMIZERS = ("sgd", "adamw")
MAX_ATTENTION = 8

# Keys renamed since older runs: a saved config or checkpoint that uses the old name still loads (from_dict), while
# an override or config file with it is an error that gives the new name.
RENAMED_KEYS = {("data", "source_size"): "source_size_wh", ("data", "target_size"): "target_size_wh",
                ("stage1", "crop_size"): "crop_size_wh"}


@dataclass(frozen=True)
class DataConfig:
    source: str = "toy"
    """Labelled source domain: toy | gta5 | synthia | folder (your simulator's frames: source_images/ and
    source_labels/ under source_root, paired by relative path and stem; label_map says what the labels hold)."""
    source_root: str = ""
    """Source dataset root; empty = the built-in toy source (generated into $CIRN_DATA on first use)."""
    source_images: str = "images"
    """source=folder: the folder of images under source_root."""
    source_labels: str = "labels"
    """source=folder: the folder of label PNGs under source_root."""
    label_map: str = ""
    """What the source's label files hold (labelmaps.py): cityscapes | trainids | gta5 | synthia | carla |
    carla-legacy | palette, or a YAML file (which may define its own class set: the model, the evaluation and the
    export follow it); empty = the source's own format (gta5 for toy and gta5, synthia for synthia)."""
    target: str = "toy"
    """Unlabelled target domain: toy | cityscapes | folder (every image under target_root) | video (a video file,
    or every video in the folder target_root, sampled every frame_stride frames)."""
    target_root: str = ""
    """Target dataset root (Cityscapes layout, a folder of images, a video or a folder of videos); empty = the
    built-in toy target."""
    target_val: str = ""
    """A few labelled frames of the target domain to score and pick checkpoints with: a folder with images/ and
    labels/ (read with target_val_label_map) or a Cityscapes root (its val_split). Empty with a folder or video
    target: no target label is read, checkpoints are picked by run.select and the rows report label-free
    diagnostics instead of mIoU."""
    target_val_label_map: str = ""
    """What the target_val labels hold (as label_map); empty = label_map."""
    frame_stride: int = 10
    """target=video: every frame_stride-th frame is a training image (decoded once into $CIRN_DATA/frames)."""
    bad_frames: str = "skip"
    """target=video: an undecodable frame is left out (skip, warned), ends the video there (stop), or is an error
    (fail): the runtime's --bad-frames policies."""
    toy_look: str = "camera"
    """Look of the built-in toy target: camera (the original) | dusk (the same scenes and labels painted by a camera
    at dusk, in $CIRN_DATA/toy-dusk): for checking that a recipe tuned on the toy pair is not tuned to one pair. Used
    only where the toy data is (an empty source_root or target_root)."""
    intermediate_root: str = ""
    """Intermediate domain (translated source, source layout); replaces the source images when set."""
    pseudo_root: str = ""
    """Pseudo labels of the target train split in the Cityscapes layout (gtFine/train/...), written by stage 3."""
    source_list: str = ""
    """Optional text file of source image names (one per line); default: every pair found, sorted."""
    target_list: str = ""
    """Optional text file of target image names for the train split."""
    source_size_wh: tuple = (320, 180)
    """Source images are resized to [width, height]; labels with nearest neighbour."""
    target_size_wh: tuple = (256, 128)
    """Target images are resized to [width, height] for training; evaluation upsamples to label size."""
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
    crop_size_wh: tuple = ()
    """[width, height] random crop of the resized training images and labels (each side at most the image's); []
    trains on whole images (the paper's protocol). Evaluation always sees whole images."""
    color_jitter: float = 0.0
    """Photometric augmentation of the labelled training images of the adaptation (source, intermediate domain,
    stage 3's pseudo-labelled target; not stage 2's unlabelled target, not the oracle's labelled one): brightness,
    contrast, saturation and channel gains within 1 +- this, blur and noise (augment.color_jitter); 0 = off (the
    paper)."""
    cache_images: bool = False
    """Keep every decoded, resized image and label in memory after its first read (each DataLoader worker holds its
    own copy): the toy preset's 1,100 images take about 200 MB and then load without PNG decoding or resizing."""
    bad_images: str = "fail"
    """An unreadable training image or label: fail (an error naming the file) | skip (warn, leave it out, list it in
    the run's summary.json as skipped_images; with num_workers > 0 only the warnings name those the workers met)."""

    def __post_init__(self):
        _check_choice("data.source", self.source, SOURCES)
        _check_choice("data.target", self.target, TARGETS)
        _check_choice("data.toy_look", self.toy_look, TOY_LOOKS)
        _check_choice("data.protocol", self.protocol, PROTOCOLS)
        _check_number("data.color_jitter", self.color_jitter, 0, 0.9)
        _check_choice("data.bad_images", self.bad_images, BAD_IMAGE_POLICIES)
        _check_choice("data.bad_frames", self.bad_frames, BAD_FRAME_POLICIES)
        _check_int("data.frame_stride", self.frame_stride, 1)
        _check_text("data.source_images", self.source_images)
        _check_text("data.source_labels", self.source_labels)
        for name in ("source_size_wh", "target_size_wh"):
            _set(self, name, _check_pair(f"data.{name}", getattr(self, name), "[width, height] of integers >= 8",
                                         lambda s: _is_int(s) and s >= 8))
        if self.crop_size_wh not in ((), []):
            _set(self, "crop_size_wh", _check_pair("data.crop_size_wh", self.crop_size_wh,
                                                   "[width, height] of integers >= 8, or [] for none",
                                                   lambda s: _is_int(s) and s >= 8))
        else:
            _set(self, "crop_size_wh", ())
        _check_text("data.val_split", self.val_split)
        _check_int("data.max_val_images", self.max_val_images, 0)
        _check_int("data.num_workers", self.num_workers, 0)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    """Segmentation network: deeplabv2-r101 | deeplabv2-r50 | mobilenetv3 | tiny."""
    num_classes: int = 19
    """Output classes (trainIds 0..num_classes-1); follows data.label_map when that defines its own class set."""
    class_names: tuple = ()
    """The classes' names in trainId order; empty = Cityscapes' 19 (set from data.label_map's own class set)."""
    class_colors: tuple = ()
    """[R, G, B] per class, for overlays and legends; with class_names."""
    num_attention: int = 2
    """K, attention modules in the ACM (0 = ACM is a plain second classifier)."""
    pretrained: str = ""
    """Backbone init: '' (random), 'imagenet' (torchvision weights, needs them cached) or a file path (torchvision
    or DeepLab-init weights, or a cirn checkpoint: its backbone). all-stages with '' first runs a pretrain step on
    the source and starts SO, CIR, ASS and CIR+ASS from its backbone."""
    width: int = 16
    """Base channel width of the tiny model (ignored by the others)."""
    batchnorm: str = "auto"
    """auto (frozen for DeepLab-v2 and a pretrained MobileNetV3, training otherwise) | frozen (eval-mode BN,
    pretrained statistics) | batch-stats (the reference code's: affine frozen, each batch normalised with its own
    statistics, the running ones following; the paper presets) | train. Frozen BatchNorm makes a torchrun run follow
    the single-process one exactly (no per-process batch statistics)."""

    def __post_init__(self):
        _check_choice("model.name", self.name, MODEL_NAMES)
        _check_choice("model.batchnorm", self.batchnorm, BATCHNORM_MODES)
        _check_int("model.num_classes", self.num_classes, 2, 255)  # trainIds are uint8 and 255 means ignore
        _check_int("model.num_attention", self.num_attention, 0, MAX_ATTENTION)
        _check_int("model.width", self.width, 1)
        counts = (len(self.class_names), len(self.class_colors))
        if self.class_names and counts != (self.num_classes, self.num_classes):
            raise CirnError(f"model.class_names and model.class_colors must list model.num_classes={self.num_classes} "
                            f"entries each, got {len(self.class_names)} and {len(self.class_colors)}")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "sgd"
    """The segmentation network's optimizer: sgd (with momentum, as DeepLab-v2 and the paper) | adamw (decoupled
    weight decay; the toy preset's, training from random weights)."""
    lr: float = 2.5e-4
    """Learning rate of the backbone; poly-decayed."""
    head_lr_mult: float = 10.0
    """Classifier heads train with this multiple of lr."""
    momentum: float = 0.9
    """SGD momentum, in [0, 1) (adamw: its first beta)."""
    weight_decay: float = 5e-4
    class_balance: float = 0.0
    """Segmentation CE weighted per class by (the class's share of the batch's labelled pixels) ** -class_balance,
    normalised to plain CE's scale (losses.class_weights); 0 = plain CE, as the paper. 0.5 lifts rare classes.
    Stage 3 trains with plain CE: its pseudo labels are class-balanced by their per-class thresholds."""
    power: float = 0.9
    """Poly decay: lr * (1 - i / iterations) ** power."""
    warmup: int = 0
    """Linear warm-up iterations before the poly decay."""
    d_lr: float = 1e-4
    """Adam learning rate of the output-space discriminator."""
    d_betas: tuple = (0.9, 0.99)
    """Adam betas of the discriminator, each in [0, 1)."""

    def __post_init__(self):
        _check_choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        _check_number("optim.lr", self.lr, low=0, low_open=True)
        _check_number("optim.head_lr_mult", self.head_lr_mult, low=0, low_open=True)
        _check_number("optim.momentum", self.momentum, 0, 1, high_open=True)
        _check_number("optim.weight_decay", self.weight_decay, low=0)
        _check_number("optim.class_balance", self.class_balance, 0, 1)
        _check_number("optim.power", self.power, low=0)
        _check_int("optim.warmup", self.warmup, 0)
        _check_number("optim.d_lr", self.d_lr, low=0, low_open=True)
        _set(self, "d_betas", _check_betas("optim.d_betas", self.d_betas))


@dataclass(frozen=True)
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

    def __post_init__(self):
        for name in ("lambda_adv", "lambda_cos", "eps", "lambda_weight"):
            _check_number(f"adapt.{name}", getattr(self, name), low=0)
        _check_number("adapt.preheat", self.preheat, 0, 1)
        _check_int("adapt.disc_channels", self.disc_channels, 1)


@dataclass(frozen=True)
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
    amp: str = "auto"
    """Mixed precision: auto (bf16 on a CUDA GPU that has it and on a CPU with bf16 instructions, AVX512-BF16 or AMX;
    else none) | none (fp32) | bf16 | fp16 (CUDA only)."""
    tensorboard: bool = True
    select: str = "auto"
    """Which evaluation keeps best.pt: miou (target val labels), or without target labels a label-free criterion
    on target train images: last (the last checkpoint), entropy (lowest mean prediction entropy), disagreement
    (lowest C/ACM disagreement), flip (highest agreement with the prediction of the mirrored image); auto = miou
    where target labels exist, else the criterion measured best on the toy pair (README, "Picking checkpoints
    without target labels")."""
    select_images: int = 50
    """Target train images (evenly spaced) that the label-free criteria are computed on at every evaluation."""

    def __post_init__(self):
        _check_choice("run.amp", self.amp, AMP_MODES)
        _check_choice("run.select", self.select, SELECTIONS)
        _check_int("run.select_images", self.select_images, 1)
        for name in ("iterations", "batch_size", "eval_every", "checkpoint_every", "log_every"):
            _check_int(f"run.{name}", getattr(self, name), 1)
        _check_int("run.seed", self.seed, 0)
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise CirnError(f"run.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1: the intermediate domain (content-invariant representation), by CycleGAN or FDA."""
    cir: str = "cyclegan"
    """How the intermediate domain is built: cyclegan (trained S <-> T translation, the paper's) | fda (training-free
    Fourier amplitude swap)."""
    iterations: int = 0
    """CycleGAN training iterations; 0 = run.iterations. Non-zero replaces run.iterations in the stage-1 run (its
    saved config shows the value used), so one config file can size stage 1 and the segmentation stages apart."""
    batch_size: int = 0
    """CycleGAN batch (source and target images each); 0 = run.batch_size. Non-zero replaces run.batch_size in the
    stage-1 run, as stage1.iterations does run.iterations."""
    crop_size_wh: tuple = (1024, 512)
    """[width, height] random crop of the resized source and target images for training; multiples of 4 that fit
    in data.source_size_wh and data.target_size_wh. Translation runs on the whole resized source image."""
    ngf: int = 64
    """Generator base width (junyanz: 64)."""
    ndf: int = 64
    """PatchGAN base width (junyanz: 64)."""
    n_blocks: int = 9
    """Residual blocks of each generator (junyanz: 9)."""
    upsample: str = "deconv"
    """The generators' two x2 upsamplings: deconv (transposed conv, junyanz's) | resize (nearest x2 then conv3x3:
    no checkerboard artefacts, the same parameters)."""
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
    """Adam betas, each in [0, 1)."""
    decay_start: float = 0.5
    """Fraction of the iterations at constant lr; the lr then decays linearly to 0 (junyanz: half and half)."""
    pool_size: int = 50
    """Generated images kept in each discriminator's history pool; 0 = no pool."""
    beta: float = 0.01
    """FDA: half-width of the swapped low-frequency band as a fraction of min(h, w) (FDA: 0.01, 0.05, 0.09)."""
    fda_space: str = "linear"
    """FDA: swap the spectra of the pixels (linear, FDA's) or of log(1 + pixel) (log: the swap scales instead of
    shifting, so darkening toward a dim target keeps dark detail; fda.py)."""

    def __post_init__(self):
        _check_choice("stage1.cir", self.cir, CIR_METHODS)
        _check_choice("stage1.gan_mode", self.gan_mode, GAN_MODES)
        _check_choice("stage1.upsample", self.upsample, UPSAMPLE_MODES)
        _check_choice("stage1.fda_space", self.fda_space, FDA_SPACES)
        _set(self, "crop_size_wh", _check_pair("stage1.crop_size_wh", self.crop_size_wh,
                                               "[width, height] of multiples of 4, at least 16",
                                               lambda s: _is_int(s) and s >= 16 and s % 4 == 0))
        _check_int("stage1.iterations", self.iterations, 0)
        _check_int("stage1.batch_size", self.batch_size, 0)
        _check_int("stage1.ngf", self.ngf, 1)
        _check_int("stage1.ndf", self.ndf, 1)
        _check_int("stage1.n_blocks", self.n_blocks, 0)
        _check_int("stage1.pool_size", self.pool_size, 0)
        for name in ("lambda_cycle", "lambda_identity", "lambda_sem"):
            _check_number(f"stage1.{name}", getattr(self, name), low=0)
        _check_number("stage1.lr", self.lr, low=0, low_open=True)
        _set(self, "betas", _check_betas("stage1.betas", self.betas))
        _check_number("stage1.decay_start", self.decay_start, 0, 1)
        _check_number("stage1.beta", self.beta, 0, 0.5, high_open=True)


@dataclass(frozen=True)
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
    lr: float = 0.0
    """Learning rate of the fine-tuning (poly-decayed, after optim.warmup); 0 = optim.lr."""
    source_weight: float = 1.0
    """Weight of the CE on the labelled source (the intermediate domain when given) trained alongside the pseudo
    labels, as CBST; 0 = pseudo labels only."""
    easy_split: float = 1.0
    """Share of the target train images pseudo-labelled and trained on: those whose prediction has the lowest mean
    entropy (IntraDA's easy split, 0.67 there); 1 = all."""
    kld_weight: float = 0.0
    """Weight of CRST's MR-KLD confidence regulariser on the pseudo-labelled pixels (CRST uses 0.1); 0 = off."""
    min_confidence: float = 0.0
    """A pseudo label also needs this softmax probability for its class, whatever the class's threshold (BDL's 0.9
    for every class); 0 = the per-class thresholds alone."""

    def __post_init__(self):
        _check_choice("stage3.policy", self.policy, PSEUDO_LABEL_POLICIES)
        _check_int("stage3.rounds", self.rounds, 1)
        _check_int("stage3.iterations", self.iterations, 0)
        _check_number("stage3.lr", self.lr, low=0)
        _check_number("stage3.portion", self.portion, 0, 1, low_open=True)
        _check_number("stage3.portion_step", self.portion_step, 0, 1)
        _check_number("stage3.portion_max", self.portion_max, self.portion, 1)
        _check_number("stage3.percentile", self.percentile, 0, 100, low_open=True)
        _check_number("stage3.max_threshold", self.max_threshold, 0, 1, low_open=True)
        _check_number("stage3.easy_split", self.easy_split, 0, 1, low_open=True)
        _check_number("stage3.source_weight", self.source_weight, low=0)
        _check_number("stage3.kld_weight", self.kld_weight, low=0)
        _check_number("stage3.min_confidence", self.min_confidence, 0, 1, high_open=True)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)


# ---------------------------------------------------------------- checks of single fields
def _check_choice(key, value, choices):
    if value not in choices:
        raise CirnError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(key, value, low, high=None):
    """A count or period: an integer in [low, high] (no upper bound when high is None)."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        valid = f">= {low}" if high is None else f"in {low}..{high}"
        raise CirnError(f"{key} must be an integer {valid}, got {value!r}")


def _check_number(key, value, low=None, high=None, low_open=False, high_open=False):
    """A rate or weight: a finite number in the interval from low to high, each end closed unless *_open."""
    ok = _is_number(value) and (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            valid = f"a number {'>' if low_open else '>='} {low:g}"
        else:
            valid = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise CirnError(f"{key} must be {valid}, got {value!r}")


def _check_pair(key, value, valid, ok):
    """A two-element list whose elements pass `ok`, as a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(ok(v) for v in value):
        raise CirnError(f"{key} must be {valid}, got {list(value) if isinstance(value, tuple) else value!r}")
    return tuple(value)


def _check_betas(key, value):
    return _check_pair(key, value, "[beta1, beta2], each in [0, 1)", lambda b: _is_number(b) and 0 <= b < 1)


def _check_text(key, value):
    if not isinstance(value, str) or not value:
        raise CirnError(f"{key} must be a non-empty string, got {value!r}")


def _set(section, name, value):
    """Store a normalised value (a list as a tuple) in a frozen section while it is being validated."""
    object.__setattr__(section, name, value)


# ---------------------------------------------------------------- merging, loading, saving
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
    """Return a copy of dataclass `cfg` with the nested dict `updates` applied; strict about keys and types, and
    validated again (each section's __post_init__)."""
    if not isinstance(updates, dict):
        raise CirnError(f"{prefix or 'config'}: expected a mapping of keys, got {updates!r}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in fields:
            renamed = RENAMED_KEYS.get((prefix.rstrip("."), key))
            if renamed:
                raise CirnError(f"config key '{full}' is now '{prefix}{renamed}' (the name says the order)")
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
    """['run.iterations=10', 'data.source_size_wh=[64,32]'] -> nested dict; values parsed as YAML."""
    import yaml
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
    import yaml
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


def resolve_run(run_dir, preset="toy", config_file=None, overrides=(), updates=None, resume=False):
    """The config of a training run in `run_dir`: preset <- config file <- `updates` <- overrides. A resumed run
    (resume=True and a saved run_dir/config.yaml) keeps its saved config instead: saved <- `updates` <- config
    file <- overrides, so only what is given explicitly changes. `updates`: a nested dict such as the CLI's options
    ({"data": {"source_root": ...}, "model": {"pretrained": ...}}); None values count as not given. The model's
    class set follows data.label_map (labelmaps.resolve_classes)."""
    updates = {section: {k: v for k, v in values.items() if v is not None}
               for section, values in (updates or {}).items()}
    from .labelmaps import resolve_classes
    saved = Path(run_dir) / "config.yaml"
    if resume and saved.exists():
        base = merge(from_dict(read_yaml(saved)), updates)
        return resolve_classes(_absolute_paths(load_config(None, config_file, overrides, base=base)))
    cfg = load_config(preset, config_file)
    return resolve_classes(_absolute_paths(load_config(None, None, overrides, base=merge(cfg, updates))))


DATA_PATHS = ("source_root", "target_root", "target_val", "source_list", "target_list", "label_map",
              "target_val_label_map")


def _absolute_paths(cfg):
    """cfg with its data paths made absolute, so that the saved config (and export, resume, eval from another
    directory) finds them; a label map stays as given unless it names a file (a built-in name, or a typo its error
    should show as typed)."""
    absolute = {key: str(Path(value).expanduser().resolve()) for key in DATA_PATHS
                if (value := getattr(cfg.data, key))
                and (not key.endswith("label_map") or Path(value).expanduser().is_file())}
    return merge(cfg, {"data": absolute}) if absolute else cfg


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
    """A Config from to_dict's form, as saved in a run folder or a checkpoint; the keys of older runs
    (RENAMED_KEYS) are read under their new names."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for (section, old), new in RENAMED_KEYS.items():
        values = data.get(section)
        if isinstance(values, dict) and old in values:
            values.setdefault(new, values.pop(old))
    return merge(Config(), data)


def save_config(cfg, path):
    import yaml
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
