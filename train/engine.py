"""Shared plumbing of every training stage, written once: seeding, devices, schedules, checkpoints, logging.

The stage modules (supervised.py, stage2.py, ...) each hold one explicit loop and call into this.
"""
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .config import from_dict, save_config, to_dict
from cirn.common.errors import CirnError
from .io import atomic_path, atomic_write_text, write_error

CHECKPOINT_FORMAT = "cirn-checkpoint"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------- seeding and devices
def seed_everything(seed):
    """Seed every RNG a run uses, and flush denormal floats to zero: a freshly initialised GAN or discriminator on
    CPU otherwise spends its first hundred iterations 2-3x slower on subnormal arithmetic."""
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """Every RNG a training step touches, in a form torch.load(weights_only=True) accepts."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(spec):
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CirnError(f"run.device={spec} but no CUDA GPU is visible; use run.device=cpu")
    if device.type == "cuda" and device.index is None and distributed.enabled():
        device = torch.device("cuda", distributed.local_rank())  # one GPU per torchrun process
    return device


def autocast(device, amp):
    """Mixed precision context: bf16 on CPU or CUDA, fp16 on CUDA only; 'none' runs in fp32."""
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise CirnError("run.amp=fp16 needs a CUDA device; on CPU use run.amp=bf16 or none")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device, amp):
    """Loss scaling for fp16 on CUDA; a pass-through (enabled=False) otherwise, so the loops need no branches."""
    return torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and device.type == "cuda"))


# ---------------------------------------------------------------- schedules and optimisers
def poly_lr(base_lr, iteration, max_iter, power=0.9, warmup=0):
    """base * (1 - i / max_iter) ** power, after an optional linear warm-up."""
    if warmup and iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    return base_lr * (1 - iteration / max_iter) ** power


def seg_optimizer(model, optim_cfg):
    """SGD over the backbone, heads at head_lr_mult x lr (param group 1), as DeepLab-v2 trains."""
    groups = [{"params": [p for p in model.backbone_parameters() if p.requires_grad], "lr_mult": 1.0},
              {"params": [p for p in model.head_parameters() if p.requires_grad],
               "lr_mult": optim_cfg.head_lr_mult}]
    return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


# ---------------------------------------------------------------- checkpoints
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


def has_checkpoint(run_dir):
    """Whether a run folder holds a training checkpoint to continue from (last.pt, or prev.pt alone)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return (ckpt_dir / "last.pt").exists() or (ckpt_dir / "prev.pt").exists()


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


def model_meta(model, cfg):
    """What a checkpoint needs to rebuild its network without the rest of the config."""
    m = cfg.model
    return {"name": m.name, "num_classes": m.num_classes, "num_attention": m.num_attention, "width": m.width,
            "normalization": model.normalization}


def check_model_meta(meta, model_cfg, path):
    """A checkpoint of another architecture or class count is a clear error, not a state-dict key dump."""
    for key in ("name", "num_classes", "num_attention", "width"):
        if key == "width" and meta.get("name") != "tiny":
            continue
        want = getattr(model_cfg, key)
        if meta.get(key) != want:
            raise CirnError(f"checkpoint {path} has model.{key}={meta.get(key)!r} but this run uses {want!r}; "
                            f"use a checkpoint of the same model or set model.{key}={meta.get(key)}")


def config_of_checkpoint(state):
    return from_dict(state["config"])


# ---------------------------------------------------------------- run folder and logging
class RunLogger:
    """metrics.jsonl (one JSON object per line), TensorBoard scalars and a tqdm bar with losses and ETA."""

    def __init__(self, run_dir, cfg, start_iteration, total, desc, quiet=False):
        self.run_dir = Path(run_dir)
        self.enabled = distributed.is_main()  # under torchrun, process 0 logs for all
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.writer = None
        if cfg.run.tensorboard and self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_iteration)
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=start_iteration, desc=desc, dynamic_ncols=True,
                        disable=quiet or not self.enabled,
                        file=sys.stderr, mininterval=1.0)
        self.last_time = time.perf_counter()

    def log(self, iteration, values, kind="train"):
        if not self.enabled:
            return
        record = {"kind": kind, "iteration": iteration, "time": round(time.time(), 3),
                  **{k: (round(float(v), 6) if isinstance(v, (int, float)) else v) for k, v in values.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, iteration)

    def step(self, losses):
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

    def message(self, text):
        self.bar.write(text, file=sys.stderr)

    def close(self):
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def prepare_run_dir(run_dir, resume):
    """Check that `run_dir` may take this run: refuse a finished or running one unless resuming. Nothing is written
    yet: open_run_dir creates the folder once the data is open, so a run that fails at start-up (a dataset root that
    does not exist, a missing checkpoint, bad --pretrained weights) leaves no run folder behind."""
    run_dir = Path(run_dir)
    if not resume and distributed.main_decides(has_checkpoint(run_dir)):
        raise CirnError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    return run_dir


def open_run_dir(run_dir, cfg):
    """Create the run folder (process 0) and save the resolved config in it; a resumed run's config is saved only
    once its checkpoint is known to fit (train_loop restores first)."""
    run_dir = Path(run_dir)
    if distributed.is_main():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        except OSError as err:
            raise CirnError(f"cannot write to the run folder {run_dir}: {err.strerror}") from None
    distributed.barrier()
    return run_dir


def check_finite(losses, iteration, run_dir):
    """Stop on NaN/inf with the iteration; the last good checkpoint stays untouched."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise CirnError(f"loss {', '.join(bad)} became {losses[bad[0]]} at iteration {iteration}; training "
                        f"stopped. The last good checkpoint is in {Path(run_dir) / 'checkpoints'}; lower the "
                        "learning rate or check the data, then --resume")


def config_digest(cfg):
    import hashlib
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- evaluation and training state
class BestKeeper:
    """Evaluate on target val periodically; keep the best model as a self-describing `best.pt`."""

    def __init__(self, run_dir, cfg, val_set, device):
        self.run_dir, self.cfg, self.val_set, self.device = Path(run_dir), cfg, val_set, device
        self.best = {"miou": -1.0, "iteration": 0}
        self.history = []

    def evaluate(self, model, iteration, logger=None):
        from .evaluate import evaluate_model
        was_training = model.training
        model.eval()
        result = evaluate_model(model.fused, self.val_set, num_classes=self.cfg.model.num_classes,
                                protocol=self.cfg.data.protocol, device=self.device)
        model.train(was_training)
        miou = result["miou"]
        self.history.append({"iteration": iteration, "miou": miou})
        if logger is not None:
            logger.log(iteration, {"miou": miou}, kind="val")
            logger.message(f"iteration {iteration}: target {self.cfg.data.val_split} mIoU {miou:.2f} "
                           f"(best {max(miou, self.best['miou']):.2f})")
        if miou > self.best["miou"]:
            self.best = {"miou": miou, "iteration": iteration, "per_class": result["per_class"]}
            save_model(self.run_dir / "best.pt", model, self.cfg, iteration=iteration, miou=miou,
                       per_class=result["per_class"])
        return result

    def state_dict(self):
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state):
        self.best, self.history = state["best"], state["history"]


def save_model(path, model, cfg, **info):
    """A model-only checkpoint (what export, the runtime and later stages load): weights, meta, config, scores."""
    save_checkpoint(path, {"kind": "model", "model": model.state_dict(), "model_meta": model_meta(model, cfg),
                           "config": to_dict(cfg), "config_digest": config_digest(cfg), **info})


def save_training_state(run_dir, iteration, cfg, modules, extras):
    """Everything needed to resume: module and optimiser states, RNGs, loader position, best score, config."""
    state = {"kind": "training", "iteration": iteration, "config": to_dict(cfg), "rng": rng_state(),
             "model_meta": model_meta(modules["model"], cfg),
             "states": {name: m.state_dict() for name, m in modules.items()},
             "extras": {name: e.state_dict() for name, e in extras.items()}}
    save_checkpoint(Path(run_dir) / "checkpoints" / "last.pt", state)


def restore_training_state(run_dir, cfg, modules, extras):
    """Load the newest checkpoint into `modules`/`extras` (objects with load_state_dict); return its iteration."""
    state = load_resume_state(run_dir)
    check_model_meta(state["model_meta"], cfg.model, Path(run_dir) / "checkpoints")
    missing = [n for n in modules if n not in state["states"]] + [n for n in extras if n not in state["extras"]]
    if missing:
        raise CirnError(f"checkpoint in {Path(run_dir) / 'checkpoints'} has no state for {', '.join(missing)}: it "
                        "was written by another stage or an older cirn; start a new run instead of --resume")
    for name, module in modules.items():
        module.load_state_dict(state["states"][name])
    for name, extra in extras.items():
        extra.load_state_dict(state["extras"][name])
    set_rng_state(state["rng"])
    return state["iteration"]


def train_loop(cfg, run_dir, modules, extras, step_fn, next_batch, keeper, resume, desc, quiet=False):
    """The iteration skeleton every stage shares: step, NaN check, logging, evaluation, checkpoints, resume.

    `step_fn(batch, iteration) -> dict of float losses` holds the stage's own work (its lr schedule and
    train_step); `modules` and `extras` are everything with a state_dict that a resumed run needs back.
    Under torchrun (distributed.py) every process runs the steps on its share of the batch and sees the losses
    averaged over all; process 0 alone logs, evaluates and writes checkpoints and the summary.
    """
    extras = {**extras, "keeper": keeper}
    main = distributed.is_main()
    start = restore_training_state(run_dir, cfg, modules, extras) if resume else 0
    if resume and main:
        print(f"resuming {run_dir} at iteration {start}", file=sys.stderr)
    run = cfg.run
    # The first batch is read before anything is written: a dataset that cannot be read leaves no run folder.
    first_batch = next_batch() if start < run.iterations else None
    open_run_dir(run_dir, cfg)
    logger = RunLogger(run_dir, cfg, start, run.iterations, desc, quiet=quiet)
    try:
        for i in range(start, run.iterations):
            batch = first_batch if i == start else next_batch()
            losses = distributed.mean_losses(step_fn(batch, i))
            check_finite(losses, i + 1, run_dir)
            logger.step(losses)
            done = i + 1
            if done % run.log_every == 0 or done == run.iterations:
                logger.log(done, losses)
            if main and (done % run.eval_every == 0 or done == run.iterations):
                keeper.evaluate(modules["model"], done, logger)
            if main and (done % run.checkpoint_every == 0 or done == run.iterations):
                save_training_state(run_dir, done, cfg, modules, extras)
    finally:
        logger.close()
    summary = {"run_dir": str(run_dir), "iterations": run.iterations, "best_miou": keeper.best["miou"],
               "best_iteration": keeper.best["iteration"], "history": keeper.history,
               "skipped_images": sorted(set().union(*(getattr(getattr(e, "dataset", None), "skipped", ())
                                                      for e in extras.values())))}
    return write_summary(Path(run_dir) / "summary.json", summary)


def write_summary(path, summary):
    """Process 0 writes a step's summary.json (the mark later steps and re-runs look for); every process returns
    it, the others once process 0 has written it."""
    def write():
        atomic_write_text(path, json.dumps(summary, indent=2))
        return summary
    return distributed.on_main(write, lambda: json.loads(Path(path).read_text()))


def load_model(path, device="cpu"):
    """Rebuild the network of a cirn checkpoint (best.pt or a training last.pt) in eval mode; returns (model, state).

    The state keeps `config` (the run's resolved config, as a dict) and `model_meta`.
    """
    from .config import ModelConfig
    from .models import build_model
    state = load_checkpoint(path)
    meta = state["model_meta"]
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
