"""Checkpoints, written and read in one place: the file format, what a checkpoint says about its network, the
model-only `best.pt` and the training state a resumed run needs back.

Every file is a dict loaded with torch.load(weights_only=True) and marked {"format": "cirn-checkpoint", "version"}:
    kind "model"     best.pt: model (state dict), model_meta, config, config_digest, iteration, miou, per_class
    kind "training"  checkpoints/last.pt (prev.pt the one before): iteration, config, rng, model_meta, states
                     (model, optimisers, scaler, ...), extras (loaders, keeper, pools)
model_meta describes the network, so that it can be rebuilt without the rest of the config:
    network "segnet"    name, num_classes, num_attention, width, normalization       (source-only, stage 2, 3)
    network "cyclegan"  ngf, ndf, n_blocks, upsample, disc_layers, normalization ('tanh')     (stage 1)
"""
import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from cirn.common.errors import CirnError

from .config import from_dict, to_dict
from .io import atomic_path, write_error
from .models.cyclegan import CycleGAN

CHECKPOINT_FORMAT = "cirn-checkpoint"
CHECKPOINT_VERSION = 1
SEGNET_KEYS = ("name", "num_classes", "num_attention", "width")  # what a run's model.* must match
CYCLEGAN_KEYS = ("ngf", "ndf", "n_blocks", "upsample")  # what a resumed stage 1's stage1.* must match


# ---------------------------------------------------------------- the file
def save_checkpoint(path, state):
    """Atomic torch.save; the previous file at `path` is kept as `prev.pt` so a bad write can fall back."""
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:
            if "write" not in str(err).lower():
                raise
            raise write_error(path, err) from None  # torch's zip writer reports a full disk as a RuntimeError
        if path.exists() and path.name == "last.pt":
            _keep_as_previous(path)


def _keep_as_previous(path):
    """prev.pt := last.pt, with last.pt in place all the while (a hard link renamed over prev.pt, else a copy),
    so a kill at any moment leaves a last.pt that --resume and the 'already holds a run' check both see."""
    prev, link = path.with_name("prev.pt"), path.with_name(".prev.pt.link")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links
        shutil.copy2(path, link)
    os.replace(link, prev)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of ours with weights_only=True: a file carrying pickled code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CirnError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CirnError(f"checkpoint {path} holds pickled Python objects, not just tensors; refusing to load "
                            "it (weights-only loading). Re-save it as a plain state dict.") from None
        raise CirnError(f"checkpoint {path} is unreadable or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CirnError(f"{path} is not a cirn checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return state


def has_checkpoint(run_dir):
    """Whether a run folder holds a training checkpoint to continue from (last.pt, or prev.pt alone)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return (ckpt_dir / "last.pt").exists() or (ckpt_dir / "prev.pt").exists()


def load_resume_state(run_dir):
    """The newest readable checkpoint of a run: last.pt, else prev.pt (saying so), else an error."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    if not last.exists() and not prev.exists():
        raise CirnError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start this run")
    try:
        return load_checkpoint(last)
    except CirnError as err:
        if not prev.exists():
            raise
        print(f"warning: {err}; resuming from the previous checkpoint {prev}", file=sys.stderr)
        return load_checkpoint(prev)


def config_of_checkpoint(state):
    return from_dict(state["config"])


def config_digest(cfg):
    """First 16 hex digits of a sha256 over the resolved config: which config made a model."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- what a checkpoint says about its network
def model_meta(model, cfg):
    """What a checkpoint needs to rebuild its network without the rest of the config (the module docstring)."""
    if isinstance(model, CycleGAN):
        return {"network": "cyclegan", "ngf": model.ngf, "ndf": model.ndf, "n_blocks": model.n_blocks,
                "upsample": model.upsample, "disc_layers": model.disc_layers, "normalization": model.normalization}
    m = cfg.model
    return {"network": "segnet", "name": m.name, "num_classes": m.num_classes, "num_attention": m.num_attention,
            "width": m.width, "normalization": model.normalization}


def network_of(meta):
    """'segnet' or 'cyclegan'. Checkpoints written before model_meta named its network: a stage-1 one was stamped
    with the generators' 'tanh' normalisation, which no segmentation model has."""
    return meta.get("network") or ("cyclegan" if meta.get("normalization") == "tanh" else "segnet")


def check_model_meta(meta, model_cfg, path):
    """A checkpoint of another network, architecture or class count is a clear error, not a state-dict key dump."""
    _require_segnet(meta, path)
    for key in SEGNET_KEYS:
        if key == "width" and meta.get("name") != "tiny":
            continue
        want = getattr(model_cfg, key)
        if meta.get(key) != want:
            raise CirnError(f"checkpoint {path} has model.{key}={meta.get(key)!r} but this run uses {want!r}; "
                            f"use a checkpoint of the same model or set model.{key}={meta.get(key)}")


def _require_segnet(meta, path):
    if network_of(meta) == "cyclegan":
        raise CirnError(f"{path} is a stage-1 CycleGAN checkpoint, not a segmentation model; use (or export) a "
                        "best.pt of source-only, stage2 or stage3")


def _check_resume_meta(meta, model, cfg, path):
    """The network a resumed run builds must be the one its checkpoint holds (stage 1's CycleGAN or a SegNet)."""
    want = model_meta(model, cfg)
    if network_of(meta) != want["network"]:
        raise CirnError(f"checkpoint in {path} holds a {network_of(meta)} network but this stage trains a "
                        f"{want['network']}: it was written by another stage; start a new run instead of --resume")
    if want["network"] == "segnet":
        return check_model_meta(meta, cfg.model, path)
    for key in CYCLEGAN_KEYS:
        if key in meta and meta[key] != want[key]:
            raise CirnError(f"checkpoint in {path} has stage1.{key}={meta[key]!r} but this run uses {want[key]!r}; "
                            f"set stage1.{key}={meta[key]} to resume it")


# ---------------------------------------------------------------- model-only checkpoints (best.pt)
def save_model(path, model, cfg, **info):
    """A model-only checkpoint (what export, the runtime and later stages load): weights, meta, config, scores."""
    save_checkpoint(path, {"kind": "model", "model": model.state_dict(), "model_meta": model_meta(model, cfg),
                           "config": to_dict(cfg), "config_digest": config_digest(cfg), **info})


def load_model(path, device="cpu"):
    """Rebuild the segmentation network of a cirn checkpoint (best.pt or a training last.pt) in eval mode; returns
    (model, state). The state keeps `config` (the run's resolved config, as a dict) and `model_meta`."""
    from .config import ModelConfig
    from .models import build_model
    state = load_checkpoint(path)
    meta = state["model_meta"]
    _require_segnet(meta, path)
    model_cfg = ModelConfig(name=meta["name"], num_classes=meta["num_classes"],
                            num_attention=meta["num_attention"], width=meta.get("width", 16))
    model = build_model(model_cfg, load_weights=False)
    _load_weights(model, state, path)
    return model.to(device).eval(), state


def init_from_checkpoint(model, path, model_cfg):
    """Start a run from the weights of an earlier stage's checkpoint (same architecture and classes)."""
    state = load_checkpoint(path)
    check_model_meta(state["model_meta"], model_cfg, path)
    _load_weights(model, state, path)
    return state


def _load_weights(model, state, path):
    weights = state["model"] if state.get("kind") == "model" else state["states"]["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CirnError(f"checkpoint {path} does not fit the model it describes: {err}") from None


# ---------------------------------------------------------------- training state (last.pt)
def rng_state(device):
    """Every RNG a training step touches, in a form torch.load(weights_only=True) accepts.

    On CUDA only the run device's generator: a state per visible GPU would not fit a resume that sees fewer GPUs,
    and under torchrun each process trains on its own GPU (every process starts from the same seed, so process 0's
    state is every process's).
    """
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    """Restore rng_state(...) onto this run's `device`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    cuda = state.get("cuda")
    if torch.device(device).type == "cuda" and isinstance(cuda, torch.Tensor):  # older files: a list per GPU
        torch.cuda.set_rng_state(cuda, device)


def save_training_state(run_dir, iteration, cfg, modules, extras):
    """Everything needed to resume: module and optimiser states, RNGs, loader position, best score, config."""
    device = next(modules["model"].parameters()).device
    state = {"kind": "training", "iteration": iteration, "config": to_dict(cfg), "rng": rng_state(device),
             "model_meta": model_meta(modules["model"], cfg),
             "states": {name: m.state_dict() for name, m in modules.items()},
             "extras": {name: e.state_dict() for name, e in extras.items()}}
    save_checkpoint(Path(run_dir) / "checkpoints" / "last.pt", state)


def restore_training_state(run_dir, cfg, modules, extras):
    """Load the newest checkpoint into `modules`/`extras` (objects with load_state_dict); return its iteration."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    state = load_resume_state(run_dir)
    _check_resume_meta(state["model_meta"], modules["model"], cfg, ckpt_dir)
    missing = [n for n in modules if n not in state["states"]] + [n for n in extras if n not in state["extras"]]
    if missing:
        raise CirnError(f"checkpoint in {ckpt_dir} has no state for {', '.join(missing)}: it was written by another "
                        "stage or an older cirn; start a new run instead of --resume")
    for name, module in modules.items():
        module.load_state_dict(state["states"][name])
    for name, extra in extras.items():
        extra.load_state_dict(state["extras"][name])
    set_rng_state(state["rng"], next(modules["model"].parameters()).device)
    return state["iteration"]
