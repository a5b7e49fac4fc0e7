"""Stage 2, adaptive semantic segmentation (ASS) from the intermediate domain (or the source) to the target.

Segmentation CE on labelled images, a pixel-level adversarial loss on the target whose weight map grows where
C and the ACM disagree, and a weight-discrepancy loss that keeps the two classifiers different (CLAN).
"""
import torch
import torch.nn.functional as F

from .datasets import build_train_dataset, infinite_loader
from .distributed import average_gradients, global_count
from .engine import (autocast, grad_scaler, on_device, poly_lr, prepare_run_dir, resolve_device,
                     seed_everything, seg_optimizer, set_lr, train_loop, make_keeper)
from .losses import adversarial_loss, disagreement_map, discriminator_loss, seg_loss, valid_pixels, weight_discrepancy
from .models import build_discriminator, build_model, upsample
from .supervised import seg_class_weights


def adversarial_schedule(iteration, iterations, damp, preheat):
    """CLAN's schedule at `iteration` of `iterations` -> (damping, preheating).

    damping: the factor of the adversarial and discrepancy terms, (1 - i/N) when `damp`, else 1; preheating: whether
    the adversarial terms are still plain BCE (the first `preheat` share of the iterations, no weight map).
    """
    damping = (1 - iteration / iterations) if damp else 1.0
    return damping, iteration < preheat * iterations


def train_step(model, disc, opt_seg, opt_disc, images_src, labels_src, images_trg, adapt, damping, preheat,
               amp_ctx, scaler, class_balance=0.0):
    """One ADVENT-ordered step: freeze D; seg + adversarial + discrepancy; unfreeze D; D on source and target."""
    for p in disc.parameters():
        p.requires_grad_(False)
    opt_seg.zero_grad(set_to_none=True)
    opt_disc.zero_grad(set_to_none=True)

    with amp_ctx:
        out_src = model(images_src)
    logits_src = out_src.fused.float()  # (B, C, h, w)
    loss_seg_src = seg_loss(logits_src, labels_src, global_count(valid_pixels(labels_src)),
                            seg_class_weights(labels_src, logits_src.shape[1], class_balance))
    loss_discrepancy = adapt.lambda_weight * damping * weight_discrepancy(model.classifier_c, model.classifier_acm)
    scaler.scale(loss_seg_src + loss_discrepancy).backward()

    size_trg = images_trg.shape[-2:]
    with amp_ctx:
        out_trg = model(images_trg)
    logits_trg = out_trg.fused.float()
    probs_trg = F.softmax(upsample(logits_trg, size_trg), dim=1)  # (B, C, H, W)
    weight_map = disagreement_map(out_trg.logits_c.float(), out_trg.logits_acm.float(), size_trg).detach()
    d_trg = disc(probs_trg)  # (B, 1, h', w')
    loss_adv_trg = adapt.lambda_adv * damping * adversarial_loss(
        d_trg, None if preheat else weight_map, lambda_cos=adapt.lambda_cos, eps=adapt.eps)
    scaler.scale(loss_adv_trg).backward()

    for p in disc.parameters():
        p.requires_grad_(True)
    size_src = images_src.shape[-2:]
    probs_src = F.softmax(upsample(logits_src.detach(), size_src), dim=1)
    loss_d_src, loss_d_trg = discriminator_loss(disc(probs_src), disc(probs_trg.detach()),
                                                None if preheat else weight_map,
                                                lambda_cos=adapt.lambda_cos, eps=adapt.eps)
    scaler.scale((loss_d_src + loss_d_trg) / 2).backward()  # each domain's term halved, as CLAN/AdaptSegNet
    average_gradients(model, disc)  # under torchrun: the gradients of the global batch
    scaler.step(opt_seg)
    scaler.step(opt_disc)
    scaler.update()
    losses = {"loss_seg_src": loss_seg_src, "loss_adv_trg": loss_adv_trg, "loss_discrepancy": loss_discrepancy,
              "loss_d_src": loss_d_src, "loss_d_trg": loss_d_trg, "disagreement": weight_map.mean()}
    return {key: value.detach() for key, value in losses.items()}  # 0-dim tensors: train_loop reads them


def run(cfg, run_dir, resume=False, quiet=False):
    """Adapt from the intermediate domain (data.intermediate_root) or the source to the target; returns the summary."""
    run_dir = prepare_run_dir(run_dir, resume)
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model)
    model = on_device(model, device).train()
    disc = on_device(build_discriminator(cfg.model.num_classes, cfg.adapt.disc_channels), device).train()
    opt_seg = seg_optimizer(model, cfg.optim)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.optim.d_lr, betas=tuple(cfg.optim.d_betas))

    labelled = build_train_dataset(cfg.data, "source", model.normalization)
    unlabelled = build_train_dataset(cfg.data, "target", model.normalization, with_labels=False)
    pin = device.type == "cuda"  # page-locked batches: the non_blocking copies overlap the GPU's work
    batches_src = infinite_loader(labelled, cfg.run.batch_size, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                                  pin_memory=pin)
    batches_trg = infinite_loader(unlabelled, cfg.run.batch_size, seed=cfg.run.seed + 1,
                                  num_workers=cfg.data.num_workers, pin_memory=pin)
    keeper = make_keeper(run_dir, cfg, model, device)
    amp_ctx, scaler = autocast(device, cfg.run.amp), grad_scaler(device, cfg.run.amp)

    def step(batches, i):
        batch_src, batch_trg = batches
        lr = poly_lr(cfg.optim.lr, i, cfg.run.iterations, cfg.optim.power, cfg.optim.warmup)
        set_lr(opt_seg, lr)
        set_lr(opt_disc, poly_lr(cfg.optim.d_lr, i, cfg.run.iterations, cfg.optim.power, cfg.optim.warmup))
        damping, preheat = adversarial_schedule(i, cfg.run.iterations, cfg.adapt.damp, cfg.adapt.preheat)
        return train_step(model, disc, opt_seg, opt_disc,
                          batch_src["image"].to(device, non_blocking=True),
                          batch_src["label"].to(device, non_blocking=True),
                          batch_trg["image"].to(device, non_blocking=True), cfg.adapt, damping, preheat, amp_ctx,
                          scaler, cfg.optim.class_balance)

    modules = {"model": model, "disc": disc, "opt_seg": opt_seg, "opt_disc": opt_disc, "scaler": scaler}
    extras = {"batches_src": batches_src, "batches_trg": batches_trg}
    desc = "stage2 (CIR+ASS)" if cfg.data.intermediate_root else "stage2 (ASS from source)"
    return train_loop(cfg, run_dir, modules, extras, step, lambda: (next(batches_src), next(batches_trg)),
                      keeper, resume, desc, quiet=quiet)
