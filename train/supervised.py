"""Supervised training: the source-only baseline (SO), the oracle (target labels) and CIR (SO on the intermediate
domain, when data.intermediate_root is set). One loop: segmentation CE on the fused C + ACM logits."""

from .distributed import average_gradients
from .datasets import build_train_dataset, build_val_dataset, infinite_loader
from .engine import (BestKeeper, autocast, grad_scaler, init_from_checkpoint, poly_lr, prepare_run_dir,
                     resolve_device, seed_everything, seg_optimizer, set_lr, train_loop)
from .losses import seg_loss
from .models import build_model


def train_step(model, optimizer, images, labels, amp_ctx, scaler):
    """One SGD step on a labelled batch; returns the named losses as floats."""
    with amp_ctx:
        out = model(images)
    logits = (out.logits_c + out.logits_acm).float()  # (B, C, h, w)
    loss_seg = seg_loss(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_seg).backward()
    average_gradients(model)  # under torchrun: the gradient of the global batch
    scaler.step(optimizer)
    scaler.update()
    return {"loss_seg": loss_seg.item()}


def run(cfg, run_dir, domain="source", resume=False, quiet=False, init=None):
    """Train on labelled `domain` ('source'; 'target' for the oracle; 'pseudo' for stage 3's pseudo labels),
    from `init` (an earlier stage's checkpoint) when given; returns the run summary."""
    run_dir = prepare_run_dir(run_dir, cfg, resume)
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, load_weights=init is None)
    if init is not None:
        init_from_checkpoint(model, init, cfg.model)
    model.to(device).train()
    optimizer = seg_optimizer(model, cfg.optim)
    train_set = build_train_dataset(cfg.data, domain, model.normalization)
    batches = infinite_loader(train_set, cfg.run.batch_size, seed=cfg.run.seed, num_workers=cfg.data.num_workers)
    keeper = BestKeeper(run_dir, cfg, build_val_dataset(cfg.data, model.normalization), device)
    amp_ctx, scaler = autocast(device, cfg.run.amp), grad_scaler(device, cfg.run.amp)

    def step(batch, i):
        set_lr(optimizer, poly_lr(cfg.optim.lr, i, cfg.run.iterations, cfg.optim.power, cfg.optim.warmup))
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W)
        labels = batch["label"].to(device, non_blocking=True)  # (B, H, W)
        return train_step(model, optimizer, images, labels, amp_ctx, scaler)

    desc = {"source": "source-only", "target": "oracle", "pseudo": "self-training"}[domain]
    if cfg.data.intermediate_root and domain == "source":
        desc = "cir (source-only on intermediate)"
    modules = {"model": model, "optimizer": optimizer, "scaler": scaler}
    return train_loop(cfg, run_dir, modules, {"batches": batches}, step, lambda: next(batches), keeper, resume, desc,
                      quiet=quiet)


