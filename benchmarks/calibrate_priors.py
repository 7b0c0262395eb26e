"""Fit a checkpoint's debris prior on the validation worlds and write the calibrated checkpoint.

    python benchmarks/calibrate_priors.py --checkpoint glacier_stac/checkpoints/candidates/X.pt [--out Y.pt]
        [--class debris_ice] [--years 2021,2022] [--history 2] [--val-size-km 5] [--renderers generator,render]

Why: training weighs the rare classes up (inverse-frequency class weights, debris-first patch sampling),
so a model's debris probability carries a prior larger than the world's, and it paints debris on the
ice-free moraine and fresh forefield beside the tongues (issue 13's false debris). The logit adjustment
divides that prior back out: `train.choose_prior_shift` tries log-prior shifts on the class
(`train.PRIOR_SHIFTS`, -2 .. +1) over the validation worlds of `train_regimes.py` (one world per regime,
seeds 3001+, never the benchmark's held-out 601/602), drawn by both renderers (`--renderers`: the
generator's models over-paint debris where the render twin's under-paint it, so a shift fitted on one
renderer trades the other away), keeps the one with the best mean of median and worst glacier and debris
IoU, and `train.shift_priors` writes it into the class head's bias.
Prints every candidate's figures and writes them to benchmarks/results/calibrate_priors-<checkpoint>-<renderers>.json;
with `--out`, the calibrated checkpoint and its model card too.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

from train_regimes import validation_regions

from glacier_stac import train
from glacier_stac.models.checkpoint import load, save
from glacier_stac.synthetic.config import REGIMES
from glacier_stac.testing.regime_worlds import RENDERERS

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="the calibrated checkpoint (default: report only)")
    ap.add_argument("--class", dest="klass", default="debris_ice")
    ap.add_argument("--years", default="2021,2022")
    ap.add_argument("--history", type=int, default=2, metavar="SEASONS")
    ap.add_argument("--val-size-km", type=float, default=5.0)
    ap.add_argument("--world", type=Path, default=Path(".cache/train-regimes"))
    ap.add_argument("--renderers", default=",".join(RENDERERS),
                    help="the validation worlds' renderers (both: a shift fitted on one renderer's worlds "
                         "trades the other's away)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    ckpt = load(args.checkpoint)
    if args.klass not in ckpt.classes:
        raise SystemExit(f"--class {args.klass!r}: not a class of {args.checkpoint} ({ckpt.classes})")
    if ckpt.metrics.get("prior_shift"):
        raise SystemExit(f"{args.checkpoint} is calibrated already ({ckpt.metrics['prior_shift']}): "
                         "fit on the uncalibrated checkpoint")
    years = tuple(int(y) for y in args.years.split(","))
    renderers = tuple(r for r in args.renderers.split(",") if r)
    bad = [r for r in renderers if r not in RENDERERS]
    if bad or not renderers:
        raise SystemExit(f"--renderers: choose from {list(RENDERERS)}, got {args.renderers!r}")
    va = validation_regions(list(REGIMES), args.val_size_km, years, args.world, args.history, renderers)
    logging.info("%d validation regions; fitting the %s prior", len(va), args.klass)
    fit = train.fit_prior_shift(ckpt, [r for _, r in va], args.klass)
    print(f"| {args.klass} log-prior shift | glacier IoU median / worst | debris IoU median / worst | "
          "false debris median / worst | criterion |")
    print("|---|---|---|---|---|")
    for s, f in fit.figures.items():
        mark = " **chosen**" if s == fit.shift else ""
        print(f"| {s:+.2f}{mark} | {f['iou_overall_median']:.3f} / {f['iou_overall_worst']:.3f} | "
              f"{f['iou_debris_median']:.3f} / {f['iou_debris_worst']:.3f} | "
              f"{f['false_debris_share_median']:.1%} / {f['false_debris_share_worst']:.1%} | {f['criterion']:.4f} |")
    record = {"checkpoint": str(args.checkpoint), "class": args.klass, "shift": fit.shift,
              "renderers": list(renderers), "regions": [r.name for _, r in va],
              "command": "python benchmarks/calibrate_priors.py " + " ".join(sys.argv[1:]),
              "figures": {str(s): f for s, f in fit.figures.items()}}
    RESULTS.mkdir(exist_ok=True)
    report = RESULTS / f"calibrate_priors-{args.checkpoint.stem}-{'-'.join(renderers)}.json"
    report.write_text(json.dumps(record, indent=1))
    print(report)
    if args.out is None:
        return
    out = train.shift_priors(ckpt, {args.klass: fit.shift})
    out.metrics["prior_shift_fit"] = record
    path = save(out, args.out)
    card_in = args.checkpoint.with_suffix(".md")
    card = path.with_suffix(".md")
    if card_in.exists() and card_in != card:
        shutil.copyfile(card_in, card)
    with card.open("a") as f:
        f.write(f"\n## Prior shift\n\n`{args.klass}` log-prior shifted by {fit.shift:+.2f} in the class head's bias "
                f"(`train.shift_priors`), chosen on {len(va)} validation regions ({', '.join(renderers)}) by "
                f"`{record['command']}` (the best mean of median and worst glacier and debris IoU).\n")
    print(path, card)


if __name__ == "__main__":
    main()
