"""Shared plumbing of every training stage, written once: seeding, devices, schedules, logging, the loop.

The stage modules (supervised.py, stage2.py, ...) each hold one explicit loop and call into this; checkpoint.py
reads and writes the checkpoints.
"""
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from cirn.common.errors import CirnError

from . import distributed
from .checkpoint import has_checkpoint, restore_training_state, save_model, save_training_state
from .config import save_config
from .io import atomic_write_text


# ---------------------------------------------------------------- seeding and devices
def seed_everything(seed):
    """Seed every RNG a run uses, and flush denormal floats to zero: a freshly initialised GAN or discriminator on
    CPU otherwise spends its first hundred iterations 2-3x slower on subnormal arithmetic."""
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec):
    """The run's torch.device; on CUDA cuDNN times its convolution algorithms once per input shape and keeps the
    fastest (training sizes are fixed, so that is once per run; results are then not bit-reproducible on GPUs)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CirnError(f"run.device={spec} but no CUDA GPU is visible; use run.device=cpu")
    if device.type == "cuda" and device.index is None and distributed.enabled():
        device = torch.device("cuda", distributed.local_rank())  # one GPU per torchrun process
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def on_device(module, device):
    """`module` on `device`; on CUDA in channels-last memory, the layout cuDNN's tensor-core convolutions read
    without transposing (bf16 convolutions on recent GPUs run markedly faster so). Not on CPUs: with torch 2.14.1,
    oneDNN's channels-last backward of the width-4 tiny model (the smoke preset) aborts with "double free or
    corruption", although it made the width-16 model's training iteration faster (259 -> 152 ms at batch 8)."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), read from the kernel's CPU flags; False
    where they cannot be read. Without them oneDNN emulates bf16, slower than fp32."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path(cpuinfo).read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(device, amp):
    """run.amp with auto resolved: bf16 on a CUDA GPU that has it and on a CPU with bf16 instructions, else none
    (fp32)."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    return "bf16" if cpu_has_bf16() else "none"


def autocast(device, amp):
    """Mixed precision context: bf16 on CPU or CUDA, fp16 on CUDA only; 'none' runs in fp32; auto: resolve_amp."""
    amp = resolve_amp(device, amp)
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise CirnError("run.amp=fp16 needs a CUDA device; on CPU use run.amp=bf16 or none")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device, amp):
    """Loss scaling for fp16 on CUDA; a pass-through (enabled=False) otherwise, so the loops need no branches."""
    amp = resolve_amp(device, amp)
    return torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and device.type == "cuda"))


# ---------------------------------------------------------------- schedules and optimisers
def poly_lr(base_lr, iteration, max_iter, power=0.9, warmup=0):
    """base * (1 - i / max_iter) ** power, after an optional linear warm-up."""
    if warmup and iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    return base_lr * (1 - iteration / max_iter) ** power


def seg_optimizer(model, optim_cfg):
    """optim.optimizer (SGD as DeepLab-v2 trains, or AdamW) over the backbone, heads at head_lr_mult x lr (param
    group 1)."""
    groups = [{"params": [p for p in model.backbone_parameters() if p.requires_grad], "lr_mult": 1.0},
              {"params": [p for p in model.head_parameters() if p.requires_grad],
               "lr_mult": optim_cfg.head_lr_mult}]
    if optim_cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=(optim_cfg.momentum, 0.999),
                                 weight_decay=optim_cfg.weight_decay)
    return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


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
        """One iteration done, with its losses read (floats) for the bar."""
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

    def advance(self):
        """One iteration done whose losses were not read (no host sync)."""
        self.bar.update(1)

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


def loss_values(losses):
    """{name: float} of {name: 0-dim tensor or float}: one device-to-host copy for all of them."""
    tensors = [v for v in losses.values() if isinstance(v, torch.Tensor)]
    device = tensors[0].device if tensors else "cpu"
    stacked = torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(()) for v in losses.values()])
    return dict(zip(losses, stacked.tolist()))


def check_finite(losses, iteration, run_dir, every=1):
    """Stop on NaN/inf with the iteration (losses are read every `every` iterations); the last good checkpoint
    stays untouched."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        when = f"at iteration {iteration}" if every == 1 else (f"by iteration {iteration} (losses are read every "
                                                               f"run.log_every={every} iterations)")
        raise CirnError(f"loss {', '.join(bad)} became {losses[bad[0]]} {when}; training stopped. The last good "
                        f"checkpoint is in {Path(run_dir) / 'checkpoints'}; lower the learning rate or check the "
                        "data, then --resume")


# ---------------------------------------------------------------- evaluation and the loop
class BestKeeper:
    """Evaluate periodically; keep the best model as a self-describing `best.pt`.

    With labelled target images (`val_set`) the score is their mIoU. Label-free criteria (selection.py) are computed
    on `select_set` (unlabelled target train images) at every evaluation as well, and logged; without `val_set` one
    of them picks best.pt (run.select), and no target label is read anywhere.
    """

    def __init__(self, run_dir, cfg, val_set, device, select_set=None):
        from .labelmaps import class_set
        from .selection import LABEL_FREE_DEFAULT, selection_subset
        self.run_dir, self.cfg, self.val_set, self.device = Path(run_dir), cfg, val_set, device
        self.select = cfg.run.select if cfg.run.select != "auto" else (
            "miou" if val_set is not None else LABEL_FREE_DEFAULT)
        if self.select == "miou" and val_set is None:
            raise CirnError("run.select=miou needs labelled target images, and this target has none: give a few "
                            "labelled frames with --target-val DIR, or pick label-free (run.select=auto)")
        self.select_set = select_set
        self.select_indices = selection_subset(select_set, cfg.run.select_images) if select_set is not None else []
        self.class_names = class_set(cfg.model)[0]
        self.best = {"miou": None if val_set is None else -1.0, "iteration": 0, "score": -math.inf,
                     "select": self.select}
        self.history = []

    def evaluate(self, model, iteration, logger=None):
        from .evaluate import evaluate_model
        from .selection import criterion_value, label_free_scores
        was_training = model.training
        model.eval()
        record, result = {"iteration": iteration}, None
        if self.val_set is not None:
            result = evaluate_model(model.fused, self.val_set, num_classes=self.cfg.model.num_classes,
                                    protocol=self.cfg.data.protocol, device=self.device, class_names=self.class_names)
            record["miou"] = result["miou"]
        if self.select_indices:
            record.update(label_free_scores(model, self.select_set, self.select_indices, self.device))
        model.train(was_training)
        score = record["miou"] if self.select == "miou" else criterion_value(self.select, record, iteration)
        self.history.append(record)
        if score > self.best["score"]:
            self.best = {"miou": record.get("miou"), "iteration": iteration, "score": score, "select": self.select,
                         "per_class": result["per_class"] if result else None,
                         "label_free": {k: record[k] for k in ("entropy", "disagreement", "flip") if k in record}}
            save_model(self.run_dir / "best.pt", model, self.cfg, iteration=iteration, miou=record.get("miou"),
                       per_class=self.best["per_class"], select=self.select, label_free=self.best["label_free"])
        if logger is not None:
            logger.log(iteration, {k: v for k, v in record.items() if k != "iteration"}, kind="val")
            if result is not None:
                kept = self.best["miou"]
                logger.message(f"iteration {iteration}: target {self.cfg.data.val_split} mIoU {result['miou']:.2f} "
                               + (f"(kept: {kept:.2f}, iteration {self.best['iteration']}, by {self.select})"
                                  if kept is not None else f"(picking by {self.select})"))
            else:
                logger.message(f"iteration {iteration}: no target labels; " + ", ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if k != "iteration") + f" (picking by {self.select})")
        return record

    def state_dict(self):
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state):
        best, self.history = dict(state["best"]), state["history"]
        best.setdefault("score", best["miou"])  # a run from before label-free selection
        best.setdefault("select", "miou")
        if best["select"] == self.select:
            self.best = best
        else:  # resumed with another criterion (--target-val added, run.select changed): scores do not compare
            print(f"note: best.pt was picked by {best['select']}, this run picks by {self.select}: the next "
                  "evaluation replaces it", file=sys.stderr)


def make_keeper(run_dir, cfg, model, device):
    """The BestKeeper of a segmentation step: the target's labelled images when it has any (build_val_dataset),
    and unlabelled target train images for the label-free criteria."""
    from .datasets import build_target_dataset, build_val_dataset
    val_set = build_val_dataset(cfg.data, model.normalization, class_names=cfg.model.class_names)
    select_set = build_target_dataset(cfg.data, model.normalization, flip=False, quiet=True)
    return BestKeeper(run_dir, cfg, val_set, device, select_set)


def train_loop(cfg, run_dir, modules, extras, step_fn, next_batch, keeper, resume, desc, quiet=False):
    """The iteration skeleton every stage shares: step, NaN check, logging, evaluation, checkpoints, resume.

    `step_fn(batch, iteration) -> dict of 0-dim loss tensors` holds the stage's own work (its lr schedule and
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
            losses = step_fn(batch, i)  # 0-dim tensors, still on the device
            done = i + 1
            log_now = done % run.log_every == 0 or done == run.iterations
            eval_now = done % run.eval_every == 0 or done == run.iterations
            save_now = done % run.checkpoint_every == 0 or done == run.iterations
            if not (log_now or eval_now or save_now):
                logger.advance()
                continue
            # The one host sync of the loop, at these iterations only: reading a loss waits for the GPU to finish
            # the step, so between them the host queues steps ahead (nanoGPT syncs at its log steps alike). The
            # NaN check runs here, before any evaluation or checkpoint could keep a broken model.
            values = distributed.mean_losses(loss_values(losses))
            check_finite(values, done, run_dir, run.log_every)
            logger.step(values)
            if log_now:
                logger.log(done, values)
            if main and eval_now:
                keeper.evaluate(modules["model"], done, logger)
            if main and save_now:
                save_training_state(run_dir, done, cfg, modules, extras)
    finally:
        logger.close()
    summary = {"run_dir": str(run_dir), "iterations": run.iterations, "best_miou": keeper.best["miou"],
               "best_iteration": keeper.best["iteration"], "select": keeper.best.get("select", "miou"),
               "label_free": keeper.best.get("label_free"), "history": keeper.history,
               "uncovered_labels": _uncovered(extras),
               "skipped_images": sorted(set().union(*(getattr(getattr(e, "dataset", None), "skipped", ())
                                                      for e in extras.values())))}
    return write_summary(Path(run_dir) / "summary.json", summary)


def _uncovered(extras):
    """{label value: % of the pixels read} that the source label map does not cover, over the run's loaders."""
    shares = {}
    for extra in extras.values():
        dataset = getattr(getattr(extra, "dataset", None), "dataset", getattr(extra, "dataset", None))
        tally = getattr(dataset, "uncovered", None)
        if tally is not None:
            shares.update(tally.summary())
    return shares


def write_summary(path, summary):
    """Process 0 writes a step's summary.json (the mark later steps and re-runs look for); every process returns
    it, the others once process 0 has written it."""
    def write():
        atomic_write_text(path, json.dumps(summary, indent=2))
        return summary
    return distributed.on_main(write, lambda: json.loads(Path(path).read_text()))
