"""mIoU of every backend and precision on the target val split, and its change from PyTorch FP32.

    python benchmarks/run_accuracy.py                        # the newest runs/**/best.pt on its target val (toy)
    python benchmarks/run_accuracy.py --model runs/stage2/best.pt --target-root ~/data/cityscapes

The variants of run_latency.py run the same val images at the model's input size (default: the run's
data.target_size_wh). Their labels (the deployed graph's argmax) are nearest-resized to each label's size and scored
as cirn-export's parity check scores them: one confusion matrix over the split, the run's protocol. Per variant:
mIoU, its change from PyTorch FP32 (torch-eager), and the percentage of pixels whose label agrees with it.
Needs a trained checkpoint (or an .onnx whose source checkpoint is on disk); writes accuracy.md, .csv and .json to
--out. Variants run one after another in this process.
"""
import argparse
import time

import numpy as np

import measure
import variants
from report import log, markdown_table, run_script, short_reason, status_row, write_report

COLUMNS = [("variant", "name", ""), ("backend", "label", ""), ("device", "device", ""),
           ("precision", "precision", ""), ("status", "status", ""), ("mIoU", "miou", ".2f"),
           ("vs PyTorch FP32", "miou_change", "+.2f"), ("label agreement %", "agreement", ".3f"),
           ("note", "note", "")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="trained checkpoint or exported .onnx (default: newest "
                        "runs/**/best.pt)")
    parser.add_argument("--target-root", default=None, help="Cityscapes-layout root (default: the run's target "
                        "root, else the toy target)")
    parser.add_argument("--split", default=None, help="split to score (default: the run's data.val_split)")
    parser.add_argument("--images", type=int, default=0, help="score at most this many images (0: all)")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="frames per call")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores available)")
    parser.add_argument("--calib", default=None, help="INT8 calibration images (default: the target train split)")
    parser.add_argument("--calib-images", type=int, default=32, help="INT8 calibration images (cirn-export's "
                        "default)")
    variants.add_output_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    """Score every variant; returns the report (also written to --out)."""
    from cirn.export import find_latest_checkpoint
    from cirn.export.frames import cityscapes_frames
    from cirn.runtime.backends import available_cores
    from cirn.common.errors import CirnError
    from cirn.train.models import MODEL_NAMES
    args = parse_args(argv)
    size_hw = variants.size_hw_of(args.height, args.width)
    chosen = variants.selected(args.skip)
    threads = args.threads or available_cores()
    env = measure.environment(threads)
    spec = args.model or find_latest_checkpoint(args.runs_dir)
    if spec in MODEL_NAMES:
        raise CirnError(f"accuracy needs a trained checkpoint, not a model name ({spec}): train one (cirn-train "
                        "oracle) and pass its best.pt")

    with variants.work_dir(args.export_dir) as work:
        prepared = variants.prepare(spec, work, size_hw, args.batch, chosen, args.calib, args.calib_images,
                                    args.runs_dir)
        data_cfg = (prepared.state or {}).get("config", {}).get("data", {})
        root = args.target_root or prepared.target_root()
        if root is None:
            from cirn.train.toy import ensure_toy
            root = ensure_toy(look=data_cfg.get("toy_look", "camera")).cityscapes  # the look it trained on
        split = args.split or data_cfg.get("val_split", "val")
        protocol = data_cfg.get("protocol", 19)
        height, width = prepared.size_hw
        frames = cityscapes_frames(root, split, (width, height), args.images)
        log(f"scoring {prepared.source} on {len(frames)} images of {root} ({split}) at {height}x{width}")
        rows, reference = [], None
        for variant in variants.VARIANTS:  # torch-eager (the reference) first
            row = status_row(variant, "skipped", "--skip")
            if variant in chosen and variant.name in prepared.missing:
                row = status_row(variant, *prepared.missing[variant.name])
            elif variant in chosen:
                log(f"  {variant.name}: {prepared.files[variant.name].name}")
                row = status_row(variant, "ok")
                try:
                    scores, labels = score(variant, prepared.files[variant.name], frames, args.batch, threads,
                                           protocol)
                    row.update(scores)
                    if variant.name == variants.REFERENCE:
                        reference = labels
                    if reference is not None:
                        same = sum(int((a == b).sum()) for a, b in zip(labels, reference, strict=True))
                        row["agreement"] = 100.0 * same / sum(a.size for a in reference)
                except Exception as err:  # one variant's failure is its row, not the end of the run
                    row.update(status="failed", reason=f"{type(err).__name__}: {err}")
            rows.append(row)

    miou_reference = next((r["miou"] for r in rows if r["name"] == variants.REFERENCE and r["status"] == "ok"),
                          None)
    for row in rows:
        if row["status"] == "ok" and miou_reference is not None:
            row["miou_change"] = row["miou"] - miou_reference
        row["note"] = short_reason(row) if row["status"] != "ok" else f"scored in {row['seconds']:.1f} s"
    report = {"model": {"source": prepared.source, "random_weights": prepared.random_weights},
              "data": {"root": str(root), "split": split, "images": len(frames), "protocol": protocol,
                       "height": height, "width": width, "batch": args.batch},
              "reference": variants.REFERENCE, "environment": env, "rows": rows}
    table = markdown_table(rows, COLUMNS)
    paths = write_report(args.out, "accuracy", report, table)
    print(f"{prepared.source} on {len(frames)} images of {root} ({split}), {height}x{width}, "
          f"{protocol}-class mIoU\n\n{table}")
    if miou_reference is None:
        print(f"no {variants.REFERENCE} row: mIoU changes and label agreement are not computed")
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return report


def score(variant, path, frames, batch, threads, protocol):
    """({'miou', 'images', 'seconds', 'details'}, [labels (B, H, W) per batch]) of one variant on `frames`."""
    from cirn.export.parity import _score  # the parity check's scoring: labels nearest-resized to each label
    from cirn.runtime import to_labels
    from cirn.train.evaluate import ConfusionMatrix
    backend = variants.open_variant(variant, path, threads, batch)
    try:
        confusion = ConfusionMatrix(backend.metadata.num_classes)
        all_labels, start = [], time.perf_counter()
        for i in range(0, len(frames), batch):
            group = frames[i:i + batch]
            images = np.stack([f.image.transpose(1, 2, 0) for f in group])  # (B, H, W, 3) uint8 RGB
            labels = to_labels(backend(images))  # (B, H, W) uint8 trainIds
            _score(confusion, labels, group)
            all_labels.append(labels)
        seconds = time.perf_counter() - start
        return ({"miou": 100.0 * confusion.miou(protocol), "images": len(frames), "seconds": seconds,
                 "details": backend.describe()}, all_labels)
    finally:
        backend.close()


if __name__ == "__main__":
    run_script(main)
