"""Peak host memory of one stage-2 training iteration (CPU), paper setting by default.

DeepLab-v2 ResNet-101 (random weights) with C + ACM (K=2), CLAN's discriminator, one 1280x720 source image and one
1024x512 target image (batch 1): the same `stage2.train_step` the trainer runs. The paper trained this in 16 GB of
GPU memory; here the figure is the process's peak resident memory (ru_maxrss), with the memory after building the
models (the baseline) printed beside it.

    python benchmarks/stage2_memory.py                      # the paper setting (several minutes on 2 cores)
    python benchmarks/stage2_memory.py --model tiny --source 320x180 --target 256x128
"""
import argparse
import json
import resource
import time

import torch


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB; GB as GPUs are sold


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deeplabv2-r101")
    parser.add_argument("--source", default="1280x720", help="WxH of the source image")
    parser.add_argument("--target", default="1024x512", help="WxH of the target image")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    from cirn.train.config import load_config
    from cirn.train.models import build_discriminator, build_model
    from cirn.train.stage2 import train_step
    from cirn.train.engine import autocast, grad_scaler, seg_optimizer

    cfg = load_config("paper", overrides=[f"model.name={args.model}", "model.pretrained=''"])
    (ws, hs), (wt, ht) = ([int(v) for v in s.split("x")] for s in (args.source, args.target))
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    disc = build_discriminator(cfg.model.num_classes).train()
    opt_seg = seg_optimizer(model, cfg.optim)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.optim.d_lr, betas=cfg.optim.d_betas)
    images_src, images_trg = torch.randn(1, 3, hs, ws), torch.randn(1, 3, ht, wt)
    labels_src = torch.randint(0, cfg.model.num_classes, (1, hs, ws))
    baseline = peak_rss_gb()
    start = time.perf_counter()
    for _ in range(args.iterations):
        losses = train_step(model, disc, opt_seg, opt_disc, images_src, labels_src, images_trg, cfg.adapt,
                            damping=1.0, preheat=False, amp_ctx=autocast(torch.device("cpu"), "none"),
                            scaler=grad_scaler(torch.device("cpu"), "none"))
    seconds = (time.perf_counter() - start) / args.iterations
    result = {"model": args.model, "source": args.source, "target": args.target, "batch": 1,
              "peak_rss_gb": round(peak_rss_gb(), 2), "after_build_gb": round(baseline, 2),
              "seconds_per_iteration": round(seconds, 1), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "losses": {k: round(v, 4) for k, v in losses.items()}}
    print(json.dumps(result, indent=2))
    print(f"peak memory of one stage-2 iteration: {result['peak_rss_gb']} GB "
          f"({result['peak_rss_gb'] / 16 * 100:.0f}% of the paper's 16 GB GPU; "
          f"{result['after_build_gb']} GB after building the models)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
