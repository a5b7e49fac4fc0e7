"""Table 4 over seeds: each row's mIoU per run, mean and spread, and the paper's orderings paired by seed.

    cirn-train all-stages --out runs/s0; cirn-train all-stages run.seed=1 --out runs/s1   # and run.seed=2
    python benchmarks/table4_seeds.py runs/s0 runs/s1 runs/s2 [--json docs/table4-camera.json]

Reads each run's ablation.json (written by cirn-train all-stages on a target with labels). The spread of a row is its
standard deviation over the runs (n - 1); an ordering "A < B" holds at every seed when B beats A in every run, and its
gain counts as larger than the seed spread when the mean gain exceeds the larger spread of the two rows.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from cirn.train.io import atomic_write_text
from cirn.train.pipeline import ROWS

# The paper's orderings (Table 4): each (lower, higher) pair.
ORDERINGS = (("SO", "CIR"), ("CIR", "CIR+ASS"), ("CIR+ASS", "CIR+ASS+ST"), ("SO", "ASS"), ("ASS", "CIR+ASS"),
             ("ASS", "ASS+ST"))


def read_runs(folders):
    """{folder: {row: mIoU}} from each folder's ablation.json."""
    runs = {}
    for folder in folders:
        path = Path(folder) / "ablation.json"
        if not path.is_file():
            raise ValueError(f"{path} does not exist: give the output folders of cirn-train all-stages runs")
        ablation = json.loads(path.read_text())
        if not ablation.get("labelled", True):
            raise ValueError(f"{path} has no mIoU (its target has no labels): give labelled runs")
        runs[str(folder)] = {row: ablation["rows"][row]["miou"] for row in ROWS}
    return runs


def summarize(runs):
    """Per row: values, mean, std; per ordering: paired gains, mean gain, spread, holds, larger than the spread."""
    values = {row: np.array([r[row] for r in runs.values()]) for row in ROWS}
    std = {row: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for row, v in values.items()}
    rows = {row: {"values": v.tolist(), "mean": float(v.mean()), "std": std[row]} for row, v in values.items()}
    orderings = {}
    for low, high in ORDERINGS:
        gains = values[high] - values[low]
        spread = max(std[low], std[high])
        orderings[f"{low} < {high}"] = {"gains": gains.tolist(), "mean": float(gains.mean()), "spread": spread,
                                        "every_seed": bool((gains > 0).all()),
                                        "above_spread": bool(gains.mean() > spread)}
    return {"runs": list(runs), "rows": rows, "orderings": orderings}


def format_summary(summary):
    count = len(summary["runs"])
    lines = ["| row | " + " | ".join(f"run {k}" for k in range(count)) + " | mean ± std |",
             "|---|" + "---|" * (count + 1)]
    for row, r in summary["rows"].items():
        lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in r["values"]) +
                     f" | **{r['mean']:.1f} ± {r['std']:.1f}** |")
    lines.append("")
    for name, o in summary["orderings"].items():
        gains = ", ".join(f"{g:+.2f}" for g in o["gains"])
        holds = "holds at every seed" if o["every_seed"] else "**fails at a seed**"
        above = "larger than the spread" if o["above_spread"] else "not larger than the spread"
        lines.append(f"- {name}: {gains} (mean {o['mean']:+.2f}, spread {o['spread']:.1f}: {holds}, {above})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of cirn-train all-stages (one per seed)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    try:
        runs = read_runs(args.runs)
    except ValueError as err:
        parser.error(str(err))  # one "error:" line on stderr, exit 2
    summary = summarize(runs)
    print(format_summary(summary))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
