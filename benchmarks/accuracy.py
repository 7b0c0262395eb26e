"""Accuracy on held-out worlds of every regime, drawn by both renderers (seeds never used in training).

    python benchmarks/accuracy.py [--quick] [--models ndsi,unet] [--regimes arctic,southern]
        [--extra unet_rg=/tmp/unet_rg.pt,optical_rg=/tmp/optical_rg.pt --default unet_rg --optical optical_rg]
        [--seeds 601,602,603] [--years 2021,2022,2023] [--views 4 | --views unet_v4=4]

For each regime (maritime, continental, high-mountain-asia, arctic, southern, dry) and held-out seed, a
generator world and its `synthetic render` twin (the same DEM and truth outlines drawn again by the
other renderer, `glacier_stac.testing.regime_worlds`). Scores the NDSI band-ratio baseline and the
shipped checkpoints through the real chain (local STAC API -> cube -> predict). Pixels a method leaves
unpredicted (e.g. optics under cloud) count as "no glacier", as a user sees them.

A figure is a distribution: per regime and overall it reports the median and the worst world for
glacier IoU, debris IoU, false debris (predicted debris outside every true glacier, km2 and share of
the glacier area) and calving-front distance (tidewater worlds only), and checks the issue-13 targets
for the default model (unet). `--quick`: one seed per regime at 5 km, 2022 (12 worlds) instead of two
at 8 km, 2023 (24 worlds). Prints markdown tables; writes benchmarks/results/accuracy[-quick].json.

`--years`: the weather is drawn per year (seasonal snow, its snowline, clouds), and one world's scores
can differ more between years than between the worlds of one year (dry-601's render twin, default of
2026-12-01: glacier IoU 0.95 / 0.92 / 0.77 in 2021 / 2022 / 2023). Several years score each world once per
year (a one-year world each, so the 2023 rows equal the default run's) and add a group per year.

Rock glaciers (issue 14): their IoU counts only worlds whose truth has them (continental and
high-mountain-asia), as median and worst per regime, with the margin of the default model over the
optical-only one (`--optical`); predicted rock glacier where the truth has none is `false_rock_glacier_km2`.
Checkpoints that are not shipped (candidates) join with `--extra NAME=PATH` and can be made the default.
`--views`: test-time views each model's patches are averaged over (`infer.dihedral_views`), for every model or
per model, so one checkpoint can be scored with 1 and 4 views side by side (`--extra u4=PATH --views u4=4`).
`--twin NAME` names the default's four-class twin (the same training with rock glaciers as background,
`train_regimes.py --no-rock-glacier-class`): the checks then include issue 14's "glacier and debris
figures no worse than without the class" (median and worst glacier and debris IoU, worst false-debris
share; strict) and the JSON the paired per-world differences.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import numpy as np

from glacier_stac import metrics, train
from glacier_stac.baselines import ndsi_threshold
from glacier_stac.infer import dihedral_views, predict
from glacier_stac.labels import Label
from glacier_stac.synthetic.config import REGIMES
from glacier_stac.testing.regime_worlds import RENDERERS, WorldSpec, world_dir
from glacier_stac.testing.regions import world_regions

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = Path(__file__).parent.parent / "glacier_stac" / "checkpoints"
HELD_OUT_SEEDS = (601, 602)  # training uses 1001-1004 (and 2001+ for regime training); tests 0-99; read 501
MODELS = {"ndsi": None, "optical_unet": "optical_unet.pt", "cnn5": "cnn5.pt", "unet": "unet.pt",
          "glavitu": "glavitu.pt"}
DEFAULT_MODEL = "unet"
TARGETS = {
    "iou_overall_median": 0.93, "iou_overall_worst": 0.85, "iou_debris_median": 0.80, "iou_debris_worst": 0.60,
    "false_debris_share_worst": 0.02, "front_m_median": 100.0, "debris_margin_over_optical_median": 0.10,
    "iou_rock_glacier_median": 0.60, "rock_glacier_margin_over_optical_median": 0.10,
}
METRICS = ("iou_overall", "iou_debris", "false_debris_km2", "false_debris_share", "front_m", "iou_rock_glacier",
           "false_rock_glacier_km2")
WORST = {"iou_overall": np.nanmin, "iou_debris": np.nanmin, "false_debris_km2": np.nanmax,
         "false_debris_share": np.nanmax, "front_m": np.nanmax, "iou_rock_glacier": np.nanmin,
         "false_rock_glacier_km2": np.nanmax}


def classify(name: str, region: train.Region, paths: dict[str, Path | None],
             views: int = 1) -> tuple[np.ndarray, np.ndarray]:
    path = paths[name]
    if path is None:
        out = ndsi_threshold(region.features).compute(scheduler="threads")
    else:
        out = predict(region.features, path, views=views).compute(scheduler="threads")
    return out["classes"].values, out["valid"].values


def view_counts(spec: str, models: list[str]) -> dict[str, int]:
    """`--views`: one count for every model ("4") or per model ("unet=1,unet_v8=8"; unnamed models 1)."""
    out = dict.fromkeys(models, 1)
    try:
        for item in (v.strip() for v in spec.split(",") if v.strip()):
            name, eq, n = item.rpartition("=")
            if eq and name not in out:
                raise SystemExit(f"--views {item!r}: {name!r} is not a scored model ({', '.join(models)})")
            for m in ([name] if eq else models):
                out[m] = int(n)
                dihedral_views(out[m])
    except ValueError as e:
        raise SystemExit(f"--views {spec!r}: {e}") from None
    return out


def score(pred: np.ndarray, truth: np.ndarray, res: float = 10.0) -> dict[str, float]:
    """The headline numbers of one world plus false debris: predicted debris outside every true glacier."""
    s = metrics.summary(metrics.evaluate(pred, truth, truth != train.IGNORE, res=res))
    glacier = np.isin(truth, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
    px_km2 = res * res / 1e6
    s["false_debris_km2"] = s["false_debris_share"] * float(glacier.sum() * px_km2)
    s["glacier_km2"] = float(glacier.sum() * px_km2)
    s["debris_km2"] = float((truth == Label.DEBRIS_ICE).sum() * px_km2)
    rock = truth == Label.ROCK_GLACIER
    s["rock_glacier_km2"] = float(rock.sum() * px_km2)
    if not rock.any():  # scored only where they occur; elsewhere any is a false alarm
        s["iou_rock_glacier"] = float("nan")
    s["false_rock_glacier_km2"] = float(((pred == Label.ROCK_GLACIER) & ~rock & (truth != train.IGNORE)).sum()
                                        * px_km2)
    return s


def margins(rows: list[dict], model: str, other: str, key: str) -> list[float]:
    """Per world: `model`'s `key` minus `other`'s (the optical-only model, or the four-class twin) on the same
    world (NaN where undefined)."""
    base = {r["world"]: r[key] for r in rows if r["model"] == other}
    return [r[key] - base[r["world"]] for r in rows if r["model"] == model and r["world"] in base]


def distribution(rows: list[dict]) -> dict[str, float]:
    """Median and worst of each metric over worlds (NaN-aware: fronts exist only in tidewater worlds)."""
    out: dict[str, float] = {"n": len(rows)}
    for k in METRICS:
        v = np.array([r[k] for r in rows], dtype=float)
        has = np.isfinite(v)
        out[f"{k}_median"] = float(np.median(v[has])) if has.any() else float("nan")
        out[f"{k}_worst"] = float(WORST[k](v)) if has.any() else float("nan")
    return out


TWIN_KEYS = (("iou_overall_median", 1), ("iou_overall_worst", 1), ("iou_debris_median", 1),
             ("iou_debris_worst", 1), ("false_debris_share_worst", -1))  # 1: higher is better


def twin_comparison(rows: list[dict], default: str, twin: str) -> dict:
    """Issue 14's 'glacier and debris figures no worse than without the class': the default (five-class)
    model against its four-class twin (trained the same way with rock glaciers as background) on the same
    worlds. A check per figure (median and worst glacier and debris IoU, worst false-debris share), each
    strict: a tie passes, any loss fails; beside them the paired per-world differences (default minus twin)."""
    worlds = {r["world"] for r in rows if r["model"] == twin}
    mine = distribution([r for r in rows if r["model"] == default and r["world"] in worlds])
    theirs = distribution([r for r in rows if r["model"] == twin])
    checks = {f"{k}_vs_{twin}": bool(sign * (mine[k] - theirs[k]) >= 0) for k, sign in TWIN_KEYS}
    diffs = {}
    for key in ("iou_overall", "iou_debris", "false_debris_share"):
        d = margins(rows, default, twin, key)
        diffs[f"{key}_paired_diff_median"] = float(np.median(d))
        diffs[f"{key}_default_better_worlds"] = int(sum((x > 0) if key != "false_debris_share" else (x < 0)
                                                        for x in d))
    return {"twin": twin, "worlds": len(worlds), "default": {k: mine[k] for k, _ in TWIN_KEYS},
            "without_class": {k: theirs[k] for k, _ in TWIN_KEYS}, "paired": diffs, "checks": checks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed per regime, 5 km worlds")
    ap.add_argument("--world", type=Path, default=Path(".cache/benchmarks"), help="world cache directory")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset of regimes")
    ap.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help="directory of the .pt files")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write (default results/accuracy[-quick].json)")
    ap.add_argument("--extra", default="", help="candidate checkpoints to score too: NAME=PATH[,NAME=PATH]")
    ap.add_argument("--default", default=DEFAULT_MODEL, help="model the targets are checked for")
    ap.add_argument("--optical", default="optical_unet", help="optical-only model the margins are measured over")
    ap.add_argument("--twin", default="", help="the default's four-class twin (rock glaciers as background): "
                                               "issue 14's 'no worse than without the class' checks")
    ap.add_argument("--seeds", default="", help="held-out seeds (default 601,602; --quick 601)")
    ap.add_argument("--size-km", type=float, default=None, help="world size (default 8; --quick 5)")
    ap.add_argument("--years", default="", help="years, each its own weather (default 2023; --quick 2022): "
                                                "every world is drawn once per year, as a one-year world")
    ap.add_argument("--history", type=int, default=0, metavar="SEASONS",
                    help="draw each world with this many seasons before the first scored year and join them into "
                         "the cube's history features (cube.HISTORY), as an annual update over an archive reads")
    ap.add_argument("--views", default="1", metavar="N|NAME=N,...",
                    help="test-time views each model's patches are averaged over (infer.dihedral_views: 1, 2, 4, 8): "
                         "one count for every model, or per model (the same checkpoint can join twice with --extra)")
    ap.add_argument("--cold-start", action="store_true",
                    help="with --history: the same worlds with no earlier season joined (a record's first year)")
    args = ap.parse_args()
    if args.history < 0 or (args.cold_start and not args.history):
        raise SystemExit("--history is a number of seasons >= 0, and --cold-start needs --history")

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [m for m in models if m not in MODELS] + [r for r in regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"unknown models/regimes {bad}; models {list(MODELS)}, regimes {list(REGIMES)}")
    paths: dict[str, Path | None] = {m: (args.checkpoints / MODELS[m] if MODELS[m] else None) for m in models}
    for pair in (p.strip() for p in args.extra.split(",") if p.strip()):
        name, eq, path = pair.partition("=")
        if not eq or not name or not path or name in paths:
            raise SystemExit(f"--extra {pair!r}: write NAME=PATH with a name not already scored")
        paths[name] = Path(path)
        models.append(name)
    views = view_counts(args.views, models)
    missing = [str(p) for p in paths.values() if p is not None and not p.exists()]
    if missing:
        raise SystemExit(f"checkpoints missing: {missing}; train them with `glacier-stac train` "
                         "(the command is in each model card)")
    try:
        seeds = (tuple(int(v) for v in args.seeds.split(",") if v.strip()) if args.seeds
                 else HELD_OUT_SEEDS[:1] if args.quick else HELD_OUT_SEEDS)
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: write seeds as 601,602") from None
    size = args.size_km or (5.0 if args.quick else 8.0)
    try:
        years = (tuple(int(v) for v in args.years.split(",") if v.strip()) if args.years
                 else (2022,) if args.quick else (2023,))
    except ValueError:
        raise SystemExit(f"--years {args.years!r}: write years as 2021,2023") from None

    rows: list[dict] = []
    skipped: list[str] = []
    t0 = time.perf_counter()
    # one world per scored year; with --history one world over the earlier seasons and every scored year
    spans = ([(y,) for y in years] if not args.history
             else [tuple(range(min(years) - args.history, max(years) + 1))])
    join = 0 if args.cold_start else args.history
    for regime in regimes:
        for seed, span in itertools.product(seeds, spans):
            for renderer in RENDERERS:
                spec = WorldSpec(regime, seed, size, span, renderer)
                tw = time.perf_counter()
                try:
                    regions = world_regions(world_dir(spec, args.world), [y for y in years if y in span], history=join)
                except RuntimeError as e:  # a seed whose world cannot form (no glacier): said, not scored
                    print(f"  {spec.name}: skipped ({e})", flush=True)
                    skipped.append(spec.name)
                    break
                for r in regions:
                    year = int(r.features.attrs["year"])
                    for name in models:
                        klass, valid = classify(name, r, paths, views[name])
                        pred = np.where(valid, klass, Label.BACKGROUND).astype(np.uint8)
                        rows.append({"world": spec.name, "regime": regime, "renderer": renderer, "seed": seed,
                                     "year": year,
                                     "model": name, "valid_fraction": float(valid.mean()), **score(pred, r.labels)})
                print(f"  {spec.name}: {time.perf_counter() - tw:.0f} s", flush=True)

    table: dict[str, dict[str, dict]] = {}
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        table[name] = {"overall": distribution(mine)}
        for regime in regimes:
            table[name][regime] = distribution([r for r in mine if r["regime"] == regime])
        for renderer in RENDERERS:
            table[name][renderer] = distribution([r for r in mine if r["renderer"] == renderer])
        for year in years if len(years) > 1 else ():
            table[name][str(year)] = distribution([r for r in mine if r["year"] == year])

    checks: dict[str, bool] = {}
    default = args.default
    if default in table:
        d = table[default]["overall"]
        checks = {
            "iou_overall_median>=0.93": d["iou_overall_median"] >= TARGETS["iou_overall_median"],
            "iou_overall_worst>=0.85": d["iou_overall_worst"] >= TARGETS["iou_overall_worst"],
            "iou_debris_median>=0.80": d["iou_debris_median"] >= TARGETS["iou_debris_median"],
            "iou_debris_worst>=0.60": d["iou_debris_worst"] >= TARGETS["iou_debris_worst"],
            "false_debris_share_worst<=0.02": d["false_debris_share_worst"] <= TARGETS["false_debris_share_worst"],
            "front_m_median<=100": d["front_m_median"] <= TARGETS["front_m_median"],
        }
        has_rock = np.isfinite(d["iou_rock_glacier_median"])
        if has_rock:
            checks["iou_rock_glacier_median>=0.60"] = d["iou_rock_glacier_median"] >= TARGETS["iou_rock_glacier_median"]
        if args.optical in table:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                margin = float(np.nanmedian(margins(rows, default, args.optical, "iou_debris")))
                target = TARGETS["debris_margin_over_optical_median"]
                checks["debris_margin_over_optical_median>=0.10"] = margin >= target
                table[default]["overall"]["debris_margin_over_optical_median"] = margin
                for group in [g for g in table[default] if g in regimes]:
                    m = margins([r for r in rows if r["regime"] == group], default, args.optical, "iou_rock_glacier")
                    table[default][group]["rock_glacier_margin_over_optical_median"] = float(np.nanmedian(m))
                rmargin = float(np.nanmedian(margins(rows, default, args.optical, "iou_rock_glacier")))
            table[default]["overall"]["rock_glacier_margin_over_optical_median"] = rmargin
            if has_rock:
                checks["rock_glacier_margin_over_optical_median>=0.10"] = (
                    rmargin >= TARGETS["rock_glacier_margin_over_optical_median"])

    twin = None
    if args.twin:
        if args.twin not in table or default not in table:
            raise SystemExit(f"--twin {args.twin!r} and --default {default!r} must both be scored (--models/--extra)")
        twin = twin_comparison(rows, default, args.twin)
        checks.update(twin["checks"])

    doc = {"held_out_seeds": list(seeds), "default": default, "optical": args.optical,
           "checkpoints": {m: str(p) if p is not None else None for m, p in paths.items()},
           "size_km": size, "years": list(years), "quick": args.quick,
           "history": args.history, "seasons_joined": join, "views": views,
           "regimes": regimes, "renderers": list(RENDERERS), "worlds": len({r["world"] for r in rows}),
           "skipped": skipped,
           "seconds": round(time.perf_counter() - t0, 1), "models": table, "per_world": rows,
           "targets": TARGETS, "checks": checks, "twin": twin}
    out = args.out or RESULTS / ("accuracy-quick.json" if args.quick else "accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")

    print(f"\n{doc['worlds']} held-out worlds ({len(regimes)} regimes x seeds {list(seeds)} x {list(RENDERERS)}, "
          f"{size:g} km, {list(years)}" + (f", worlds with {args.history} earlier seasons, {join} joined"
                                           if args.history else "") + "); median / worst\n")
    print("| model | group | glacier IoU | debris IoU | false debris km2 (share) | front m | rock glacier IoU "
          "| false rock glacier km2 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        for group, d in table[name].items():
            print(f"| {name} | {group} | {d['iou_overall_median']:.3f} / {d['iou_overall_worst']:.3f} | "
                  f"{d['iou_debris_median']:.3f} / {d['iou_debris_worst']:.3f} | "
                  f"{d['false_debris_km2_median']:.3f} / {d['false_debris_km2_worst']:.3f} "
                  f"({d['false_debris_share_worst']:.1%}) | "
                  f"{d['front_m_median']:.0f} / {d['front_m_worst']:.0f} | "
                  f"{d['iou_rock_glacier_median']:.3f} / {d['iou_rock_glacier_worst']:.3f} | "
                  f"{d['false_rock_glacier_km2_median']:.3f} / {d['false_rock_glacier_km2_worst']:.3f} |")
    if default in table and args.optical in table:
        print(f"\nmargin of {default} over {args.optical} (median over worlds): debris "
              f"{table[default]['overall']['debris_margin_over_optical_median']:.3f}, rock glacier "
              + ", ".join(f"{g} {table[default][g].get('rock_glacier_margin_over_optical_median', float('nan')):.3f}"
                          for g in [*regimes, "overall"]))
    if twin is not None:
        print(f"\n{default} vs its four-class twin {twin['twin']} ({twin['worlds']} worlds): "
              + ", ".join(f"{k} {twin['default'][k]:.3f} vs {twin['without_class'][k]:.3f}" for k, _ in TWIN_KEYS)
              + "; paired per world: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in twin["paired"].items()))
    print("\n" + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
