"""Where a source-only model's target mIoU is lost: BatchNorm statistics or colours. A diagnostic on target val.

    python benchmarks/so_collapse.py runs/all-stages/source-only/best.pt
    python benchmarks/so_collapse.py runs/all-stages/cir-ass/best.pt        # any row's model

Scores the checkpoint on its run's target val split three ways: as trained; with every target image's per-channel
colour mean and spread moved onto the source images' (a global colour transfer, computed from 200 images of each);
and with the BatchNorm running statistics re-estimated on 200 target train images (AdaBN, Li et al. 2016), the
weights untouched. The last two read unlabelled target images, which a source-only model never may: they say
what the SO row lacks, they are not a row.
"""
import argparse
import json

import torch

from cirn.train.checkpoint import load_model
from cirn.train.config import from_dict
from cirn.train.datasets import build_source_dataset, build_target_dataset, build_val_dataset
from cirn.train.evaluate import evaluate_model
from cirn.common.files import atomic_write_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a cirn checkpoint (best.pt of any step)")
    parser.add_argument("--images", type=int, default=200, help="source and target images for the statistics")
    parser.add_argument("--json", default=None, help="write the figures here")
    return parser.parse_args(argv)


def channel_stats(dataset, count):
    """(3,) mean and (3,) std of the normalised images over the first `count` items."""
    images = torch.stack([dataset[i]["image"] for i in range(min(count, len(dataset)))])  # (N, 3, H, W)
    return images.mean((0, 2, 3)), images.std((0, 2, 3))


class ColourMatched(torch.utils.data.Dataset):
    """`dataset`'s items with each channel moved from (mean_from, std_from) to (mean_to, std_to)."""

    def __init__(self, dataset, stats_from, stats_to):
        self.dataset, self.stats_from, self.stats_to = dataset, stats_from, stats_to

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        (mean_from, std_from), (mean_to, std_to) = self.stats_from, self.stats_to
        item["image"] = (item["image"] - mean_from.view(3, 1, 1)) / std_from.view(3, 1, 1) * std_to.view(3, 1, 1) \
            + mean_to.view(3, 1, 1)
        return item


@torch.no_grad()
def reestimate_batchnorm(model, dataset, count, batch_size=8):
    """AdaBN: the backbone's BatchNorm running statistics recomputed (cumulative average) on `dataset`'s images."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    for start in range(0, min(count, len(dataset)), batch_size):
        model(torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, count))]))
    model.eval()


def main(argv=None):
    args = parse_args(argv)
    model, state = load_model(args.model)
    cfg = from_dict(state["config"])
    num_classes, protocol = cfg.model.num_classes, cfg.data.protocol
    val = build_val_dataset(cfg.data, model.normalization)

    def score(dataset):
        return evaluate_model(model.fused, dataset, num_classes=num_classes, protocol=protocol,
                              device=torch.device("cpu"))["miou"]

    source = build_source_dataset(cfg.data, model.normalization, intermediate=False, flip=False)
    target = build_target_dataset(cfg.data, model.normalization, flip=False)
    results = {"as trained": score(val)}
    results["target colours matched to the source's"] = score(
        ColourMatched(val, channel_stats(target, args.images), channel_stats(source, args.images)))
    reestimate_batchnorm(model, target, args.images)
    results["BatchNorm statistics re-estimated on the target (AdaBN)"] = score(val)
    for name, miou in results.items():
        print(f"{name:<58}{miou:6.1f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": args.model, "miou": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
