"""Supervised training: the source-only baseline (SO), the oracle (target labels), CIR (SO on the intermediate
domain, when data.intermediate_root is set) and stage 3's fine-tuning on pseudo labels (with the labelled source or
intermediate domain alongside, as CBST). One loop: segmentation CE on the fused C + ACM logits."""

from .distributed import average_gradients, global_count
from .datasets import build_train_dataset, infinite_loader
from .checkpoint import init_from_checkpoint
from .engine import (autocast, grad_scaler, on_device, poly_lr, prepare_run_dir, resolve_device,
                     seed_everything, seg_optimizer, set_lr, train_loop, make_keeper)
from .labelmaps import class_set
from .losses import class_counts, class_weights, kld_regularizer, seg_loss, valid_pixels
from .models import build_model


def seg_class_weights(labels, num_classes, class_balance):
    """optim.class_balance's (num_classes,) CE weights of a labelled batch (of the global batch under torchrun), or
    None at 0 (plain CE)."""
    if class_balance <= 0:
        return None
    return class_weights(global_count(class_counts(labels, num_classes)), class_balance)


def train_step(model, optimizer, images, labels, amp_ctx, scaler, batch_src=None, kld_weight=0.0,
               class_balance=0.0):
    """One optimizer step on a labelled batch; returns the named losses as 0-dim tensors. batch_src: (images,
    labels, weight, class_balance) of a batch of the labelled source (the intermediate domain when set) whose CE,
    weighted per class by its own class_balance, is added with that weight (loss_seg_src: stage 3's CBST-style source
    term beside the pseudo labels). kld_weight > 0 adds CRST's MR-KLD regulariser on the first batch's labelled pixels
    (loss_kld). class_balance > 0 weighs the first batch's CE per class (seg_class_weights)."""
    def fused_logits(batch_images):
        with amp_ctx:
            out = model(batch_images)
        return out.fused.float()  # (B, C, h, w)

    def ce(batch_logits, batch_labels, num_valid, balance):
        weight = seg_class_weights(batch_labels, batch_logits.shape[1], balance)
        return seg_loss(batch_logits, batch_labels, num_valid, weight)

    logits = fused_logits(images)
    num_valid = global_count(valid_pixels(labels))  # under torchrun, the mean over the processes
    loss_seg = ce(logits, labels, num_valid, class_balance)
    losses, total = {"loss_seg": loss_seg}, loss_seg
    if kld_weight > 0:
        losses["loss_kld"] = kld_regularizer(logits, labels, num_valid)
        total = total + kld_weight * losses["loss_kld"]
    if batch_src is not None:
        images_src, labels_src, weight_src, balance_src = batch_src
        losses["loss_seg_src"] = ce(fused_logits(images_src), labels_src, global_count(valid_pixels(labels_src)),
                                    balance_src)
        total = total + weight_src * losses["loss_seg_src"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    average_gradients(model)  # under torchrun: the gradient of the global batch
    scaler.step(optimizer)
    scaler.update()
    return {key: value.detach() for key, value in losses.items()}  # read by train_loop at its log steps


def run(cfg, run_dir, domain="source", resume=False, quiet=False, init=None, source_weight=0.0, kld_weight=0.0,
        source_class_balance=0.0):
    """Train on labelled `domain` ('source'; 'target' for the oracle; 'pseudo' for stage 3's pseudo labels),
    from `init` (an earlier stage's checkpoint) when given, adding the labelled source (intermediate domain when
    set) CE with `source_weight` when > 0 (weighted per class by `source_class_balance`; `domain`'s CE by
    optim.class_balance) and MR-KLD on `domain`'s labelled pixels with `kld_weight`; returns the run summary."""
    run_dir = prepare_run_dir(run_dir, resume)
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, load_weights=init is None)
    if init is not None:
        init_from_checkpoint(model, init, cfg.model)
    model = on_device(model, device).train()
    optimizer = seg_optimizer(model, cfg.optim)
    train_set = build_train_dataset(cfg.data, domain, model.normalization, class_names=class_set(cfg.model)[0])
    pin = device.type == "cuda"  # page-locked batches: the non_blocking copies below then overlap the GPU's work
    batches = infinite_loader(train_set, cfg.run.batch_size, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                              pin_memory=pin)
    extras = {"batches": batches}
    if source_weight > 0:
        extras["batches_source"] = infinite_loader(build_train_dataset(cfg.data, "source", model.normalization),
                                                   cfg.run.batch_size, seed=cfg.run.seed + 1,
                                                   num_workers=cfg.data.num_workers, pin_memory=pin)
    keeper = make_keeper(run_dir, cfg, model, device)
    amp_ctx, scaler = autocast(device, cfg.run.amp), grad_scaler(device, cfg.run.amp)

    def step(batches, i):
        set_lr(optimizer, poly_lr(cfg.optim.lr, i, cfg.run.iterations, cfg.optim.power, cfg.optim.warmup))
        batch, source = batches
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W)
        labels = batch["label"].to(device, non_blocking=True)  # (B, H, W)
        batch_src = None
        if source is not None:
            batch_src = (source["image"].to(device, non_blocking=True),
                         source["label"].to(device, non_blocking=True), source_weight, source_class_balance)
        return train_step(model, optimizer, images, labels, amp_ctx, scaler, batch_src, kld_weight,
                          cfg.optim.class_balance)

    def next_batches():
        return next(batches), (next(extras["batches_source"]) if source_weight > 0 else None)

    desc = {"source": "source-only", "target": "oracle", "pseudo": "self-training"}[domain]
    if cfg.data.intermediate_root and domain == "source":
        desc = "cir (source-only on intermediate)"
    modules = {"model": model, "optimizer": optimizer, "scaler": scaler}
    return train_loop(cfg, run_dir, modules, extras, step, next_batches, keeper, resume, desc, quiet=quiet)


