"""How much of a translated source is clipped to black or white: each channel's mean before and after stage 1, and
the share of channel values at 0 and at 255 in the source images and in their translations.

    cirn-train stage1 --cir fda stage1.fda_space=linear data.toy_look=dusk --out runs/fda-linear-dusk
    python benchmarks/fda_clipping.py runs/fda-linear-dusk/intermediate ~/.cache/cirn/toy/gta5

Both folders in the GTA5 layout (images/NAME.png); the images are paired by name. FDA's swap in pixel space shifts
each channel by a constant, so darkening toward a dim target pushes the source's dark pixels below 0, where the 8-bit
PNG clips them to black (README, "The toy recipe").
"""
import argparse
import json
from pathlib import Path

import numpy as np

from cirn.train.io import read_image


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("intermediate", help="an intermediate domain written by cirn-train stage1 (GTA5 layout)")
    parser.add_argument("source", help="the source dataset it translated (GTA5 layout)")
    parser.add_argument("--json", default=None, help="write the figures here")
    return parser.parse_args(argv)


def clipping(pairs):
    """[(source, translated) (H, W, 3) uint8] -> {source, translated: {mean (R, G, B), at_0 %, at_255 %}}."""
    figures = {}
    for key, index in (("source", 0), ("translated", 1)):
        values = np.concatenate([pair[index].reshape(-1, 3) for pair in pairs])  # (N, 3)
        figures[key] = {"mean": values.mean(0).round(1).tolist(), "at_0": float((values == 0).mean() * 100),
                        "at_255": float((values == 255).mean() * 100)}
    return figures


def main(argv=None):
    args = parse_args(argv)
    translated = sorted((Path(args.intermediate) / "images").glob("*.png"))
    if not translated:
        raise SystemExit(f"{args.intermediate}/images holds no PNG: give the intermediate folder of a stage-1 run")
    pairs = []
    for path in translated:
        source = Path(args.source) / "images" / path.name
        if not source.is_file():
            raise SystemExit(f"{source} does not exist: give the source dataset that {args.intermediate} translated")
        pairs.append((read_image(source), read_image(path)))
    figures = clipping(pairs)
    for key, f in figures.items():
        print(f"{key:10s} mean R/G/B {' / '.join(f'{m:.1f}' for m in f['mean'])}; channel values at 0: "
              f"{f['at_0']:.2f}%, at 255: {f['at_255']:.2f}% ({len(pairs)} images)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
