"""Which label-free criterion picks checkpoints best: rank correlation with the true mIoU over each step's evaluations.

    cirn-train all-stages --out runs/sel-s0 run.eval_every=50      # the toy pair has target labels: both are logged
    python benchmarks/selection.py runs/sel-s0 [runs/sel-s1 ...] --json docs/selection.json

Every evaluation of a step logs its target val mIoU beside the label-free criteria of train/selection.py (mean
prediction entropy, C/ACM disagreement, flip agreement, and the iteration for "the last checkpoint"). For each step
of each run this prints Spearman's rho between each criterion (signed so that higher should be better) and the mIoU,
and the mIoU of the checkpoint each criterion would keep against the best and the last one. The criterion with the
highest mean rho is the one to use without target labels, unless none beats the last checkpoint.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from cirn.train.selection import CRITERIA, criterion_value, rank_correlation
from cirn.train.io import atomic_write_text

STEPS = {"SO": "source-only", "CIR": "cir", "ASS": "ass", "CIR+ASS": "cir-ass", "ASS+ST": "ass-st/round1",
         "CIR+ASS+ST": "cir-ass-st/round1"}


def evaluations(step_dir):
    """The val records of a step's metrics.jsonl that carry both an mIoU and the label-free criteria."""
    path = Path(step_dir) / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give the output folder of a cirn-train all-stages run")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    found = [r for r in records if r.get("kind") == "val" and "miou" in r and "entropy" in r]
    by_iteration = {r["iteration"]: r for r in found}  # a resumed step may log an evaluation twice
    return [by_iteration[i] for i in sorted(by_iteration)]


def score_step(records):
    """{criterion: {rho, picked_miou}} plus the step's best and last mIoU."""
    miou = [r["miou"] for r in records]
    result = {"evaluations": len(records), "best_miou": max(miou), "last_miou": miou[-1], "criteria": {}}
    for criterion in CRITERIA:
        values = [criterion_value(criterion, r, r["iteration"]) for r in records]
        picked = records[int(np.argmax(values))]["miou"]  # the first of equal values, as BestKeeper keeps it
        result["criteria"][criterion] = {"rho": rank_correlation(values, miou), "picked_miou": picked}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of cirn-train all-stages (with run.eval_every small)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--previous", default=None,
                        help="a JSON this wrote earlier: its runs are counted in the means too (runs of another day)")
    args = parser.parse_args(argv)
    figures = {"runs": {}, "mean_rho": {}, "mean_regret": {}}
    if args.previous:
        figures["runs"] = {run: steps for run, steps in json.loads(Path(args.previous).read_text())["runs"].items()
                           if run not in args.runs}
    header = f"{'run':<14}{'step':<12}{'evals':>6}{'best':>7}{'last':>7}  " + "  ".join(
        f"{c + ' rho/pick':>20}" for c in CRITERIA)
    print(header)
    print("-" * len(header))
    rhos, regrets = {c: [] for c in CRITERIA}, {c: [] for c in CRITERIA}
    for run in args.runs:
        figures["runs"][run] = {}
        for row, sub in STEPS.items():
            records = evaluations(Path(run) / sub)
            if len(records) < 3:
                print(f"{run}: {row} has {len(records)} evaluations; at least 3 are needed", file=sys.stderr)
                continue
            figures["runs"][run][row] = score_step(records)
    for run, steps in figures["runs"].items():
        for row, step in steps.items():
            cells = []
            for c in CRITERIA:
                rho, picked = step["criteria"][c]["rho"], step["criteria"][c]["picked_miou"]
                if not math.isnan(rho):
                    rhos[c].append(rho)
                regrets[c].append(step["best_miou"] - picked)
                cells.append(f"{rho:>+9.2f} / {picked:>6.2f}   ")
            print(f"{Path(run).name:<14}{row:<12}{step['evaluations']:>6}{step['best_miou']:>7.2f}"
                  f"{step['last_miou']:>7.2f}  " + "  ".join(f"{cell:>20}" for cell in cells))
    for c in CRITERIA:
        figures["mean_rho"][c] = float(np.mean(rhos[c])) if rhos[c] else math.nan
        figures["mean_regret"][c] = float(np.mean(regrets[c])) if regrets[c] else math.nan
    print("-" * len(header))
    print("mean rho:    " + "  ".join(f"{c} {figures['mean_rho'][c]:+.2f}" for c in CRITERIA))
    print("mean regret (best mIoU - picked): " + "  ".join(f"{c} {figures['mean_regret'][c]:.2f}" for c in CRITERIA))
    others = [c for c in CRITERIA if c != "last" and not math.isnan(figures["mean_rho"][c])]
    best = max(others, key=lambda c: figures["mean_rho"][c], default="last")
    figures["choice"] = best if figures["mean_rho"][best] > figures["mean_rho"]["last"] else "last"
    print(f"use without target labels: {figures['choice']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
