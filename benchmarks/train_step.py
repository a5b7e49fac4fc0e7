"""Time and peak memory of one training iteration of stage 1 or stage 2, on the CPU or a GPU, the paper preset's
networks and sizes by default (random weights).

    python benchmarks/train_step.py --stage 2     # R101 + C/ACM + D, 1280x720 source + 1024x512 target
    python benchmarks/train_step.py --stage 1     # CycleGAN + the frozen R101 of L_sem, the preset's crop
    python benchmarks/train_step.py --stage 1 --crop 512x256      # another stage-1 crop
    python benchmarks/train_step.py --stage 2 --device cuda --amp bf16
    python benchmarks/train_step.py --stage 2 --model tiny --source 320x180 --target 256x128

Each runs the stage's own `train_step`, batch 1 (the paper's), `--iterations` times after one untimed warm-up
iteration on a GPU (on the CPU every iteration is timed: one R101 iteration takes minutes). Memory: on the CPU the
process's peak resident memory (ru_maxrss) with the memory after building the models beside it; on a GPU
torch.cuda.max_memory_allocated (the tensors; the caching allocator reserves more, also reported). The paper
trained on a 16 GB GPU; the figure is printed as a share of it.
"""
import argparse
import json
import resource
import time

import torch

PAPER_GPU_GB = 16


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB; GB as GPUs are sold


def size_wh(text):
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def stage2_iteration(cfg, device, amp, source_wh, target_wh):
    """A closure running one stage-2 train_step on random images of the given sizes."""
    from cirn.train.engine import autocast, grad_scaler, seg_optimizer
    from cirn.train.models import build_discriminator, build_model
    from cirn.train.stage2 import train_step
    model = build_model(cfg.model).to(device).train()
    disc = build_discriminator(cfg.model.num_classes).to(device).train()
    opt_seg = seg_optimizer(model, cfg.optim)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.optim.d_lr, betas=cfg.optim.d_betas)
    (ws, hs), (wt, ht) = source_wh, target_wh
    images_src, images_trg = torch.randn(1, 3, hs, ws, device=device), torch.randn(1, 3, ht, wt, device=device)
    labels_src = torch.randint(0, cfg.model.num_classes, (1, hs, ws), device=device)
    amp_ctx, scaler = autocast(device, amp), grad_scaler(device, amp)
    return lambda: train_step(model, disc, opt_seg, opt_disc, images_src, labels_src, images_trg, cfg.adapt,
                              damping=1.0, preheat=False, amp_ctx=amp_ctx, scaler=scaler)


def stage1_iteration(cfg, device, amp, crop_wh):
    """A closure running one stage-1 train_step (generators, discriminators, L_sem through the frozen seg model)."""
    from cirn.train.engine import autocast, grad_scaler
    from cirn.train.models import build_model
    from cirn.train.models.cyclegan import ImagePool, build_cyclegan
    from cirn.train.stage1 import train_step
    nets = build_cyclegan(cfg.stage1).to(device).train()
    seg_model = build_model(cfg.model).to(device).eval()
    for p in seg_model.parameters():
        p.requires_grad_(False)
    opt_gen = torch.optim.Adam(nets.generator_parameters(), lr=cfg.stage1.lr, betas=tuple(cfg.stage1.betas))
    opt_disc = torch.optim.Adam(nets.discriminator_parameters(), lr=cfg.stage1.lr, betas=tuple(cfg.stage1.betas))
    pools = ImagePool(cfg.stage1.pool_size, seed=0), ImagePool(cfg.stage1.pool_size, seed=1)
    width, height = crop_wh
    images_src = torch.rand(1, 3, height, width, device=device) * 2 - 1  # tanh range, as the CycleGAN reads
    images_trg = torch.rand(1, 3, height, width, device=device) * 2 - 1
    labels_src = torch.randint(0, cfg.model.num_classes, (1, height, width), device=device)
    amp_ctx, scaler = autocast(device, amp), grad_scaler(device, amp)
    return lambda: train_step(nets, seg_model, opt_gen, opt_disc, *pools, images_src, labels_src, images_trg,
                              cfg.stage1, amp_ctx, scaler)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--model", default=None, help="segmentation network [the preset's]")
    parser.add_argument("--source", type=size_wh, default=None, help="stage 2: WxH of the source image [preset's]")
    parser.add_argument("--target", type=size_wh, default=None, help="stage 2: WxH of the target image [preset's]")
    parser.add_argument("--crop", type=size_wh, default=None, help="stage 1: WxH of the crops [preset's]")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from cirn.train.config import load_config
    overrides = ["model.pretrained=''"] + ([f"model.name={args.model}"] if args.model else [])
    cfg = load_config(args.preset, overrides=overrides)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no GPU here (torch.cuda.is_available() is False)")
    torch.manual_seed(0)
    if args.stage == 2:
        sizes = {"source_wh": args.source or cfg.data.source_size_wh,
                 "target_wh": args.target or cfg.data.target_size_wh}
        iteration = stage2_iteration(cfg, device, args.amp, sizes["source_wh"], sizes["target_wh"])
    else:
        sizes = {"crop_wh": args.crop or cfg.stage1.crop_size_wh}
        iteration = stage1_iteration(cfg, device, args.amp, sizes["crop_wh"])
    after_build = torch.cuda.memory_allocated() / 1e9 if gpu else peak_rss_gb()
    if gpu:
        iteration()  # cuDNN and autocast choose their kernels on the first call
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iterations):
        losses = iteration()
    if gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iterations
    peak = torch.cuda.max_memory_allocated() / 1e9 if gpu else peak_rss_gb()
    result = {"stage": args.stage, "preset": args.preset, "model": cfg.model.name, "device": str(device),
              "amp": args.amp, "batch": 1, **{k: list(v) for k, v in sizes.items()},
              "peak_memory_gb": round(peak, 2), "memory_kind": "max_memory_allocated" if gpu else "peak RSS",
              "after_build_gb": round(after_build, 2), "seconds_per_iteration": round(seconds, 3),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "losses": {k: round(float(v), 4) for k, v in losses.items()}}
    if gpu:
        result["reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
        result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result, indent=2))
    print(f"stage {args.stage}: {seconds:.2f} s an iteration, peak memory {result['peak_memory_gb']} GB "
          f"({result['peak_memory_gb'] / PAPER_GPU_GB * 100:.0f}% of the paper's {PAPER_GPU_GB} GB GPU; "
          f"{result['after_build_gb']} GB after building the models)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
