"""Train a checkpoint on a mix of regimes and both renderers, validated per regime on other worlds.

    python benchmarks/train_regimes.py --out /tmp/unet_regimes.pt [--size-km 8] [--epochs 12] [--steps 50]
        [--regimes continental,high-mountain-asia,maritime] [--features optical] [--threads 1]

Training worlds: every regime (`synthetic.config.REGIMES`), seeds from 2001, drawn by the generator and
by `synthetic render` over the same DEM and outlines (`testing.regime_worlds`); validation: one generator
world per regime of another seed (3001+), never a world trained on; the benchmark's held-out seeds
(601, 602) are used by neither. Domain randomisation is on (`train.randomise`). Writes the checkpoint
and a model card listing the classes, the regimes and the validation per regime. The classes follow
the truth: worlds of regimes with rock glaciers (continental, high-mountain-asia) make a five-class
model (issue 14). `--features optical` trains the optical-only counterpart the benchmark's margins
are measured against; `--threads` bounds torch on a shared machine. `--subclass-branch` with `--init`
a four-class checkpoint trains a rock-glacier branch alone beside the frozen model (`train.train(freeze_init=True)`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

from glacier_stac import cube, metrics, train
from glacier_stac.labels import Label
from glacier_stac.models.checkpoint import load, save
from glacier_stac.synthetic.config import REGIMES
from glacier_stac.testing.regime_worlds import RENDERERS, WorldSpec, world_dir
from glacier_stac.testing.regions import world_regions

TRAIN_SEED0, VAL_SEED0 = 2001, 3001


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--size-km", type=float, default=8.0)
    ap.add_argument("--val-size-km", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per regime (x2 renderers)")
    ap.add_argument("--years", default="2021")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (lower when fine-tuning, --init)")
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--world", type=Path, default=Path(".cache/train-regimes"))
    ap.add_argument("--no-randomise", action="store_true")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset of " + ",".join(REGIMES))
    ap.add_argument("--features", choices=("all", "optical"), default="all",
                    help="all cube features, or the optical ones only (the margin baseline)")
    ap.add_argument("--optical-out", type=Path, default=None,
                    help="also train the optical-only counterpart on the same worlds, written here")
    ap.add_argument("--init", type=Path, default=None,
                    help="fine-tune this checkpoint (e.g. the shipped unet.pt) instead of random weights")
    ap.add_argument("--init-features-only", action="store_true",
                    help="with --init, no cube feature the checkpoint lacks: the control of a feature ablation "
                         "(the same fine-tuning without the new features)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--subclass-branch", type=int, default=0, metavar="CHANNELS",
                    help="with --init a four-class checkpoint: train only a rock-glacier branch of this many channels "
                         "beside it (its class map kept exactly: issue 14's 'no worse than without the class')")
    ap.add_argument("--subclass-levels", type=int, default=1,
                    help="decoder levels the rock-glacier branch reads (1: full resolution only; 4: all of them)")
    ap.add_argument("--class-weight-power", type=float, default=0.5,
                    help="loss class weights: inverse class frequency to this power (0.5: square root; 0: none)")
    ap.add_argument("--snow-loss-weight", type=float, default=0.0,
                    help="extra loss and draw weight on snow-covered ground off the glaciers (train.snow_zone)")
    ap.add_argument("--margin-loss-weight", type=float, default=0.0,
                    help="extra loss weight on both sides of the glacier edges (train.edge_band)")
    ap.add_argument("--bare-snow-loss-weight", type=float, default=0.0,
                    help="extra loss and draw weight on off-glacier snow every Landsat scene saw bare "
                         "(train.thermal_bare_snow_zone)")
    ap.add_argument("--forefield-loss-weight", type=float, default=0.0,
                    help="extra loss weight on warm ice-free ground beside the glaciers (train.forefield_zone)")
    ap.add_argument("--history", type=int, default=0, metavar="SEASONS",
                    help="join up to this many earlier seasons of the world into the history features "
                         "(cube.HISTORY; a world's first year has none, so training sees both)")
    ap.add_argument("--train-years", default=None, metavar="YEARS",
                    help="the years of the training worlds trained on, comma-separated (default every --years): "
                         "`--years 2021,2022,2023 --train-years 2021,2023 --history 2` trains on a first season and "
                         "on the third with the two before joined, after two years of retreat, as annual updates run")
    ap.add_argument("--no-rock-glacier-class", action="store_true",
                    help="rock glaciers as background: the four-class twin of issue 14's 'no worse than without'")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    years = tuple(int(y) for y in args.years.split(","))
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"unknown regimes {bad}; choose from {list(REGIMES)}")
    trained = None if args.train_years is None else tuple(int(y) for y in args.train_years.split(","))
    if trained is not None and not set(trained) <= set(years):
        raise SystemExit(f"--train-years {args.train_years}: not among --years {args.years}")
    if args.init_features_only and not args.init:
        raise SystemExit("--init-features-only keeps the features of the --init checkpoint: give --init")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    tr = []
    for regime in regimes:
        i = list(REGIMES).index(regime)  # a regime's seeds do not depend on which others are trained with
        for k in range(args.seeds):
            tr += draw(regime, TRAIN_SEED0 + 10 * i + 5 * k, args.size_km, years, RENDERERS, args.world, args.history,
                       trained)
    va = validation_regions(regimes, args.val_size_km, years, args.world, args.history)

    if args.no_rock_glacier_class:  # not glaciers (RGI keeps them out), so a four-class model calls them background
        tr = [without_rock_glacier_class(r) for r in tr]
        va = [(g, without_rock_glacier_class(r)) for g, r in va]
    jobs = [(args.features, args.out)] + ([("optical", args.optical_out)] if args.optical_out else [])
    for kind, out in jobs:  # the optical-only twin learns from the same regions (drawn once)
        fit(args, kind, out, regimes, years, tr, va)


def draw(regime: str, seed: int, size: float, years: tuple[int, ...], renderers: tuple[str, ...], world: Path,
         history: int, scored: tuple[int, ...] | None = None) -> list[train.Region]:
    """Regions of a seed's worlds, one per year of `scored` (default every year), the `history` seasons before each
    joined; a seed whose world cannot form (no fjord glacier) gives way to the next."""
    for s in range(seed, seed + 5):
        try:
            out = [r for rd in renderers
                   for r in world_regions(world_dir(WorldSpec(regime, s, size, years, rd), world), scored, history)]
        except RuntimeError as e:
            logging.warning("%s seed %d: %s; next seed", regime, s, e)
            continue
        logging.info("%s seed %d: %d regions", regime, s, len(out))
        return out
    raise RuntimeError(f"no {regime} world formed for seeds {seed}..{seed + 4}")


def validation_regions(regimes: list[str], size: float, years: tuple[int, ...], world: Path, history: int,
                       renderers: tuple[str, ...] = ("generator",), seed0: int = VAL_SEED0,
                       per_regime: int = 1, scored: tuple[int, ...] | None = None) -> list[tuple[str, train.Region]]:
    """(regime, region) of the validation worlds: `per_regime` worlds per regime (seeds `seed0` + 10 i + 5 k;
    3001+ by default) and renderer, each year of `scored` (default every year)."""
    if per_regime not in (1, 2):
        raise ValueError(f"per_regime {per_regime}: 1 or 2 (seed0 + 10 i + 10 is the next regime's first seed)")
    return [(regime, r) for regime in regimes for k in range(per_regime)
            for r in draw(regime, seed0 + 10 * list(REGIMES).index(regime) + 5 * k, size, years, renderers, world,
                          history, scored)]


def without_rock_glacier_class(region: train.Region) -> train.Region:
    """The region with its rock-glacier truth relabelled background."""
    labels = np.where(region.labels == Label.ROCK_GLACIER, Label.BACKGROUND, region.labels).astype(region.labels.dtype)
    return train.Region(region.name, region.features, labels)


def fit(args: argparse.Namespace, kind: str, out: Path, regimes: list[str], years: tuple[int, ...],
        tr: list[train.Region], va: list[tuple[str, train.Region]]) -> None:
    """Train one checkpoint (`kind`: all features or optical only), score it per regime, write it and its card."""
    init = load(args.init) if args.init and kind == args.features else None
    # all features: the checkpoint's own, then the cube's features it lacks (derived ones, snow persistence),
    # whatever their place in the cube: the model picks features by name
    have = list(init.features) if init is not None else []
    new = [] if args.init_features_only else [f for f in cube.FEATURES if f not in have]
    feats = ([*have, *new] if kind == "all"
             else None if init is not None else list(train.OPTICAL_FEATURES))
    required = (init.required_features if init is not None else ["elevation"] if kind == "all" else ["B03", "B11"])
    branch = ({"subclass_branch": args.subclass_branch, "subclass_levels": args.subclass_levels}
              if args.subclass_branch else {})
    ckpt, _ = train.train(
        tr, [r for _, r in va], model=args.model, features=feats, required=required, epochs=args.epochs, init=init,
        steps_per_epoch=args.steps, batch_size=args.batch_size, patch=128, seed=0, lr=args.lr,
        model_kwargs={"base": args.base, **branch},
        freeze_init=bool(args.subclass_branch), domain_randomisation=not args.no_randomise,
        class_weight_power=args.class_weight_power, snow_loss_weight=args.snow_loss_weight,
        margin_loss_weight=args.margin_loss_weight, forefield_loss_weight=args.forefield_loss_weight,
        bare_snow_loss_weight=args.bare_snow_loss_weight,
        data=(f"synthetic worlds of regimes {regimes}, seeds {TRAIN_SEED0}+ x {args.seeds} per regime, "
              f"renderers {list(RENDERERS)}, {args.size_km:g} km, years {list(years)}"
              + (f", trained on {args.train_years}" if args.train_years else "")
              + (f" (up to {args.history} earlier seasons joined)" if args.history else "") + "; validation one "
              f"{args.val_size_km:g} km generator world per regime (seeds {VAL_SEED0}+)"
              + (f"; fine-tuned from {args.init.name} ({init.data})" if init is not None else "")),
        command="python benchmarks/train_regimes.py " + " ".join(sys.argv[1:]) + f" [{kind}]")
    per_regime = {}
    for regime in regimes:
        scores = [metrics.summary(train.score(ckpt, r)) for g, r in va if g == regime]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_regime[regime] = {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}
    ckpt.metrics["validation_per_regime"] = per_regime
    path = save(ckpt, out)
    card = train.write_model_card(ckpt, path.with_suffix(".md"))
    keys = ("iou_overall", "iou_debris", "iou_rock_glacier", "boundary_m", "front_m")
    lines = ["", f"## Classes: {', '.join(ckpt.classes)}", "",
             f"## Regimes: {', '.join(regimes)} (renderers: {', '.join(RENDERERS)}; domain randomisation "
             f"{'off' if args.no_randomise else 'on'})", "", "Validation per regime (one held-out world each):", "",
             "| regime | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {g} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |" for g, v in per_regime.items()]
    with card.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(json.dumps(per_regime, indent=1))
    print(path, card)


if __name__ == "__main__":
    main()
