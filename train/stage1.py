"""Stage 1, the content-invariant representation (CIR): translate the labelled source into an intermediate domain I
that looks like the target and keeps the source's content, hence its labels.

cir=cyclegan (the paper's): G: S -> T, F: T -> S, PatchGAN D_T (real target vs G's output) and D_S; the generators
minimise
    GAN(G, D_T) + GAN(F, D_S)                      LSGAN by default, the paper's log loss with gan_mode=vanilla
  + lambda_cycle * (|F(G(x_s)) - x_s|_1 + |G(F(x_t)) - x_t|_1)
  + lambda_cycle * lambda_identity * (|G(x_t) - x_t|_1 + |F(x_s) - x_s|_1)              (0 switches it off)
  + lambda_sem * CE(f_S(G(x_s)), y_s)              f_S: the frozen source-only segmentation model
and then X_I = {G(x_s)} on the whole resized source images, Y_I = {y_s}.
cir=fda: no training; fda.py swaps each source image's low frequencies with a target image's.
Either way write_intermediate puts I on disk in the source layout: resumable, one atomic file at a time.
"""
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from . import distributed, fda
from .checkpoint import load_model
from .datasets import (RandomCrop, build_source_dataset, build_target_dataset, denormalize, infinite_loader,
                       normalize_tensor)
from .distributed import average_gradients, global_count
from .engine import (autocast, grad_scaler, on_device, open_run_dir, prepare_run_dir, resolve_device, seed_everything,
                     set_lr, train_loop)
from cirn.common.errors import CirnError
from .io import atomic_write_bytes, atomic_write_text, write_png
from .losses import gan_discriminator_loss, gan_loss, seg_loss, valid_pixels
from .models.cyclegan import ImagePool, build_cyclegan

MANIFEST = "intermediate.json"   # written last: a complete intermediate domain
PARTIAL = "intermediate.partial"  # present while writing: whose folder it is, so a resume cannot mix translators


# ---------------------------------------------------------------- the frozen f_S of L_sem
def to_seg_input(images, normalization):
    """(B, 3, H, W) RGB in [-1, 1] (a generator's output) -> the same pixels in f_S's input convention.

    Differentiable (no rounding), so L_sem reaches G; it is datasets.normalize on the 0-255 image.
    """
    return normalize_tensor((images + 1.0) * 127.5, normalization)  # from (B, 3, H, W) RGB 0-255


def seg_model_logits(seg_model, images_fake_trg):
    """(B, 3, H, W) G(x_s) in [-1, 1] -> (B, C, h, w) float logits of the frozen f_S, whose CE is L_sem.

    f_S is in eval mode with requires_grad False: it is not trained, but the gradient flows through it into G.
    """
    assert images_fake_trg.dim() == 4, f"{tuple(images_fake_trg.shape)} images"
    return seg_model.fused(to_seg_input(images_fake_trg, seg_model.normalization)).float()


# ---------------------------------------------------------------- schedule, data, bookkeeping
def linear_decay_lr(base_lr, iteration, iterations, decay_start=0.5):
    """CycleGAN's schedule: base_lr for the first decay_start * iterations, then linearly down to 0 at the end."""
    start = int(decay_start * iterations)
    if iteration < start:
        return base_lr
    return base_lr * (1 - (iteration - start) / max(1, iterations - start))


class LossMeans:
    """Takes engine.BestKeeper's place in train_loop: stage 1 has no target mIoU to keep a best model by.

    evaluate() logs the mean of each training loss since the previous evaluation (metrics kind 'mean') and saves
    nothing; the run's model is checkpoints/last.pt. The summary's best_miou and best_iteration are None.
    """

    def __init__(self):
        self.best = {"miou": None, "iteration": None}
        self.history = []
        self.sums, self.count = {}, 0

    def add(self, losses):
        """Add one step's losses (0-dim tensors: summed on the device, read at evaluate)."""
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def evaluate(self, model, iteration, logger=None):
        means = {key: float(total) / max(1, self.count) for key, total in self.sums.items()}
        self.history.append({"iteration": iteration, **means})
        if logger is not None:
            logger.log(iteration, means, kind="mean")
            logger.message(f"iteration {iteration}: mean " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
        self.sums, self.count = {}, 0
        return means

    def state_dict(self):
        return {"history": self.history, "sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state):
        self.history, self.sums, self.count = state["history"], state["sums"], state["count"]


def _requires_grad(modules, flag):
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag)


def load_frozen_seg_model(path, num_classes, device):
    """f_S of L_sem: a trained segmentation checkpoint, in eval mode, with no parameter requiring a gradient."""
    if not path:
        raise CirnError("stage 1 needs a source-only segmentation model for the semantic-consistency loss: pass "
                        "--seg-model PATH (best.pt of `cirn-train source-only`), or set stage1.lambda_sem=0 for a "
                        "plain CycleGAN")
    model, _ = load_model(path, device)
    if model.num_classes != num_classes:
        raise CirnError(f"segmentation model {path} predicts {model.num_classes} classes but the labels have "
                        f"model.num_classes={num_classes}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------- training
def train_step(nets, seg_model, opt_gen, opt_disc, pool_src, pool_trg, images_src, labels_src, images_trg, s1,
               amp_ctx, scaler=None):
    """One step in junyanz's order: freeze D; generator losses, G and F step; unfreeze D; D_T and D_S step.

    nets: models.cyclegan.CycleGAN; seg_model: frozen f_S or None; s1: Stage1Config (loss weights, gan_mode).
    Returns the weighted loss terms as floats. scaler: engine.grad_scaler (fp16 loss scaling; None = fp32/bf16).
    """
    scaler = scaler or grad_scaler(torch.device("cpu"), "none")
    discs = (nets.disc_src, nets.disc_trg)
    _requires_grad(discs, False)
    opt_gen.zero_grad(set_to_none=True)
    mode = s1.gan_mode
    with amp_ctx:
        fake_trg = nets.gen_s2t(images_src)  # (B, 3, H, W) G(x_s): source content, target look
        fake_src = nets.gen_t2s(images_trg)  # (B, 3, H, W) F(x_t)
        losses = {
            "loss_gan_s2t": gan_loss(nets.disc_trg(fake_trg), True, mode),
            "loss_gan_t2s": gan_loss(nets.disc_src(fake_src), True, mode),
            "loss_cycle_src": s1.lambda_cycle * F.l1_loss(nets.gen_t2s(fake_trg), images_src),
            "loss_cycle_trg": s1.lambda_cycle * F.l1_loss(nets.gen_s2t(fake_src), images_trg),
        }
        if s1.lambda_identity > 0:
            # A generator fed an image already in its output domain should leave it alone (keeps colours stable).
            weight = s1.lambda_cycle * s1.lambda_identity
            losses["loss_idt_trg"] = weight * F.l1_loss(nets.gen_s2t(images_trg), images_trg)
            losses["loss_idt_src"] = weight * F.l1_loss(nets.gen_t2s(images_src), images_src)
        if seg_model is not None:
            # L_sem: the CE of f_S on G(x_s) against the source labels, divided by the global valid-pixel count.
            losses["loss_sem"] = s1.lambda_sem * seg_loss(seg_model_logits(seg_model, fake_trg), labels_src,
                                                          global_count(valid_pixels(labels_src)))
    scaler.scale(sum(losses.values())).backward()
    average_gradients(nets.gen_s2t, nets.gen_t2s)  # under torchrun: the gradients of the global batch
    scaler.step(opt_gen)

    _requires_grad(discs, True)
    opt_disc.zero_grad(set_to_none=True)
    with amp_ctx:
        # D learns on fakes from the history pool, not only the newest ones (pool.query detaches).
        losses["loss_d_trg"] = gan_discriminator_loss(nets.disc_trg(images_trg),
                                                      nets.disc_trg(pool_trg.query(fake_trg)), mode)
        losses["loss_d_src"] = gan_discriminator_loss(nets.disc_src(images_src),
                                                      nets.disc_src(pool_src.query(fake_src)), mode)
    scaler.scale(losses["loss_d_trg"] + losses["loss_d_src"]).backward()
    average_gradients(*discs)
    scaler.step(opt_disc)
    scaler.update()
    return {key: value.detach() for key, value in losses.items()}  # 0-dim tensors: train_loop reads them


def stage1_config(cfg):
    """The run's config with stage1.iterations and stage1.batch_size (when set) as run.iterations and
    run.batch_size, the counts train_loop and the loaders read."""
    run = {key: getattr(cfg.stage1, key) for key in ("iterations", "batch_size") if getattr(cfg.stage1, key)}
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run)) if run else cfg


def check_crop(cfg):
    crop = cfg.stage1.crop_size_wh
    for key in ("source_size_wh", "target_size_wh"):
        size = getattr(cfg.data, key)
        if crop[0] > size[0] or crop[1] > size[1]:
            raise CirnError(f"stage1.crop_size_wh {list(crop)} does not fit in data.{key} {list(size)}: choose a "
                            f"crop of at most {list(size)} (multiples of 4)")


def run(cfg, run_dir, resume=False, quiet=False, intermediate_out=None):
    """Build the intermediate domain: train the CycleGAN and translate the source (cir=cyclegan), or translate
    with FDA (cir=fda, no training). Returns {run_dir, method, intermediate, count, training (train_loop's summary
    or None)}. `intermediate_out` defaults to <run_dir>/intermediate."""
    cfg, s1 = stage1_config(cfg), cfg.stage1
    out = Path(intermediate_out) if intermediate_out else Path(run_dir) / "intermediate"
    if s1.cir == "fda":
        run_dir = prepare_run_dir(run_dir, resume)
        opened = fda.open_fda(cfg)  # a dataset root that does not exist fails before the run folder is created
        run_dir = open_run_dir(run_dir, cfg)
        manifest = distributed.on_main(lambda: fda.translate_fda(cfg, out, quiet=quiet, opened=opened),
                                       lambda: read_manifest(out))
        return {"run_dir": str(run_dir), "method": "fda", "intermediate": str(out), "count": manifest["count"],
                "training": None}

    check_crop(cfg)
    device = resolve_device(cfg.run.device)
    seg_model = None
    if s1.lambda_sem > 0:
        seg_model = load_frozen_seg_model(s1.seg_checkpoint, cfg.model.num_classes, device)
    run_dir = prepare_run_dir(run_dir, resume)
    seed_everything(cfg.run.seed)
    nets = on_device(build_cyclegan(s1), device).train()
    opt_gen = torch.optim.Adam(nets.generator_parameters(), lr=s1.lr, betas=tuple(s1.betas))
    opt_disc = torch.optim.Adam(nets.discriminator_parameters(), lr=s1.lr, betas=tuple(s1.betas))
    pool_src, pool_trg = ImagePool(s1.pool_size, seed=cfg.run.seed), ImagePool(s1.pool_size, seed=cfg.run.seed + 1)

    source_set = RandomCrop(build_source_dataset(cfg.data, "tanh", intermediate=False), s1.crop_size_wh)
    target_set = RandomCrop(build_target_dataset(cfg.data, "tanh", with_labels=False), s1.crop_size_wh)
    source_set.dataset.bad_images = target_set.dataset.bad_images = cfg.data.bad_images
    pin = device.type == "cuda"  # page-locked batches: the non_blocking copies overlap the GPU's work
    batches_src = infinite_loader(source_set, cfg.run.batch_size, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                                  pin_memory=pin)
    batches_trg = infinite_loader(target_set, cfg.run.batch_size, seed=cfg.run.seed + 1,
                                  num_workers=cfg.data.num_workers, pin_memory=pin)
    keeper = LossMeans()
    amp_ctx, scaler = autocast(device, cfg.run.amp), grad_scaler(device, cfg.run.amp)

    def step(batches, i):
        batch_src, batch_trg = batches
        lr = linear_decay_lr(s1.lr, i, cfg.run.iterations, s1.decay_start)
        set_lr(opt_gen, lr)
        set_lr(opt_disc, lr)
        losses = train_step(nets, seg_model, opt_gen, opt_disc, pool_src, pool_trg,
                            batch_src["image"].to(device, non_blocking=True),
                            batch_src["label"].to(device, non_blocking=True),
                            batch_trg["image"].to(device, non_blocking=True), s1, amp_ctx, scaler)
        losses = distributed.mean_losses(losses)  # the logged means are those of the global batch
        keeper.add(losses)
        return losses

    # "model" is the key train_loop checkpoints and evaluates; checkpoint.model_meta describes the CycleGAN.
    modules = {"model": nets, "opt_gen": opt_gen, "opt_disc": opt_disc, "scaler": scaler}
    extras = {"batches_src": batches_src, "batches_trg": batches_trg, "pool_src": pool_src, "pool_trg": pool_trg}
    desc = "stage1 (cyclegan" + (" + semantic consistency)" if seg_model is not None else ")")
    summary = train_loop(cfg, run_dir, modules, extras, step, lambda: (next(batches_src), next(batches_trg)),
                         keeper, resume, desc, quiet=quiet)
    manifest = distributed.on_main(
        lambda: translate_cyclegan(nets.gen_s2t, cfg, out, device, quiet=quiet,
                                   checkpoint=Path(run_dir) / "checkpoints" / "last.pt"),
        lambda: read_manifest(out))
    return {"run_dir": str(run_dir), "method": "cyclegan", "intermediate": str(out), "count": manifest["count"],
            "training": summary}


# ---------------------------------------------------------------- translation to disk
@torch.no_grad()
def translate_image(gen_s2t, images):
    """(B, 3, H, W) in [-1, 1] -> G(images) (B, 3, H, W); reflect-padded to multiples of 4 and cropped back, as
    G's two stride-2 stages need."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % 4, -width % 4
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
    return gen_s2t(images)[..., :height, :width]


def weights_digest(module):
    """First 16 hex digits of a sha256 over a module's state dict: which weights made an intermediate domain."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def translate_cyclegan(gen_s2t, cfg, out_dir, device, quiet=False, checkpoint=""):
    """Write G(x_s) of every source image (whole, at data.source_size_wh) to `out_dir` in the source layout."""
    gen_s2t.eval()
    source_set = build_source_dataset(cfg.data, "tanh", intermediate=False, flip=False)

    def translate(image, name):
        return denormalize(translate_image(gen_s2t, image.to(device))[0], "tanh")  # (H, W, 3) uint8

    identity = {"method": "cyclegan", "generator_digest": weights_digest(gen_s2t)}
    return write_intermediate(out_dir, cfg.data, source_set, translate, identity, quiet=quiet,
                              info={"checkpoint": str(checkpoint)})


def read_manifest(out_dir):
    return json.loads((Path(out_dir) / MANIFEST).read_text())


def _claim(out_dir, identity):
    """Refuse a folder holding another translator's (partial or complete) domain, or files not ours."""
    for marker in (out_dir / MANIFEST, out_dir / PARTIAL):
        if marker.exists():
            found = json.loads(marker.read_text())
            if found.get("method") == "fda":
                found.setdefault("space", "linear")  # written before stage1.fda_space existed
            diff = [f"{k}: {found.get(k)!r} there, {v!r} now" for k, v in identity.items() if found.get(k) != v]
            if diff:
                raise CirnError(f"{out_dir} holds an intermediate domain made otherwise ({'; '.join(diff)}); "
                                "choose another --intermediate-out or delete that folder")
            return
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise CirnError(f"{out_dir} is not empty and has no {MANIFEST}: it is not an intermediate domain of ours; "
                        "choose an empty or new folder")


def write_intermediate(out_dir, cfg_data, source_set, translate, identity, quiet=False, info=None):
    """Write translate(image, name) -> (H, W, 3) uint8 for every image of `source_set` to `out_dir`, in the source
    layout (GTA5: images/NAME.png + labels/NAME.png; SYNTHIA: RGB/ + GT/LABELS/), labels copied byte for byte.

    source_set: GTA5Dataset/SynthiaDataset with labels, 'tanh' normalisation and no flip; `image` reaches
    `translate` as a (1, 3, H, W) tensor. identity: what determines the images (method and parameters); the folder
    remembers it and refuses another one. Resumable: files already there are skipped; each file is written
    atomically; intermediate.json (identity, count) comes last and marks a complete domain. Returns that manifest.
    """
    from tqdm import tqdm
    out_dir = Path(out_dir)
    source_root = cfg_data.source_root
    identity = {"source": cfg_data.source, "source_root": str(Path(source_root).resolve()) if source_root else "toy",
                "source_list": cfg_data.source_list, "source_size": list(cfg_data.source_size_wh), **identity}
    _claim(out_dir, identity)
    image_dir, label_dir = out_dir / source_set.image_dir, out_dir / source_set.label_dir
    atomic_write_text(out_dir / PARTIAL, json.dumps(identity, indent=2))
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for folder in (out_dir, image_dir, label_dir):
        # A killed process (SIGKILL) can leave atomic_path's temporary file; the dataset would list it as an image.
        for stale in folder.glob(".*.tmp*") if folder.is_dir() else ():
            stale.unlink()

    todo = []
    for index, (name, _, label_path) in enumerate(source_set.samples):
        if not (label_dir / f"{name}.png").exists():
            atomic_write_bytes(label_dir / f"{name}.png", Path(label_path).read_bytes())
        if not (image_dir / f"{name}.png").exists():
            todo.append(index)
    if len(todo) < len(source_set):
        print(f"{out_dir}: {len(source_set) - len(todo)} of {len(source_set)} images already written, skipped",
              file=sys.stderr)
    loader = DataLoader(Subset(source_set, todo), batch_size=1, num_workers=cfg_data.num_workers)
    for batch in tqdm(loader, desc=f"intermediate ({identity['method']})", disable=quiet, file=sys.stderr,
                      dynamic_ncols=True, mininterval=1.0):
        name = batch["name"][0]
        write_png(image_dir / f"{name}.png", translate(batch["image"], name))

    manifest = {"format": "cirn-intermediate", "version": 1, **identity, "count": len(source_set),
                "layout": source_set.layout, **(info or {})}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2))
    (out_dir / PARTIAL).unlink()
    return manifest
