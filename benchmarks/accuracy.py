"""Accuracy on held-out synthetic worlds (seeds never used in training).

    python benchmarks/accuracy.py [--quick]

Scores the NDSI band-ratio baseline and the shipped checkpoints (optical-only U-Net, multi-sensor
cnn5, unet, glavitu) on the same worlds through the real chain (local STAC API -> cube -> predict).
Pixels a method leaves unpredicted (e.g. optics under cloud) count as "no glacier", as a user sees
them. Prints a markdown table; writes benchmarks/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from glacier_stac import metrics, train
from glacier_stac.baselines import ndsi_threshold
from glacier_stac.infer import predict
from glacier_stac.synthetic.world import Label, WorldConfig
from glacier_stac.synthetic.writer import generate
from glacier_stac.testing.regions import world_regions

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = Path(__file__).parent.parent / "glacier_stac" / "checkpoints"
HELD_OUT_SEEDS = (601, 602)  # training uses 1001-1003; tests 0-99; read benchmark 501
MODELS = {"ndsi": None, "optical_unet": "optical_unet.pt", "cnn5": "cnn5.pt", "unet": "unet.pt",
          "glavitu": "glavitu.pt"}
TARGETS = {"unet": {"iou_overall": 0.90, "iou_debris": 0.80}, "debris_margin_over_ndsi_and_optical": 0.10}


def classify(name: str, region: train.Region) -> tuple[np.ndarray, np.ndarray]:
    if name == "ndsi":
        out = ndsi_threshold(region.features).compute(scheduler="threads")
    else:
        out = predict(region.features, CHECKPOINTS / MODELS[name]).compute(scheduler="threads")
    return out["classes"].values, out["valid"].values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small held-out world")
    ap.add_argument("--world", type=Path, default=Path(".cache/benchmarks"))
    args = ap.parse_args()

    seeds = HELD_OUT_SEEDS[:1] if args.quick else HELD_OUT_SEEDS
    size = 8.0 if args.quick else 16.0
    years = (2022,) if args.quick else (2023,)
    regions = []
    for s in seeds:
        cfg = WorldConfig(seed=s, size_km=size, years=years)
        regions += world_regions(generate(cfg, args.world / f"accuracy-{s}-{size:g}km-{len(years)}y"))

    missing = [f for n, f in MODELS.items() if f and not (CHECKPOINTS / f).exists()]
    if missing:
        raise SystemExit(f"checkpoints missing: {missing}; train them with `glacier-stac train` "
                         "(the command is in each model card)")

    results: dict[str, dict] = {}
    for name in MODELS:
        t0 = time.perf_counter()
        per_region = []
        for r in regions:
            klass, valid = classify(name, r)
            # unpredicted pixels count as no glacier; pixels without truth are not scored
            pred = np.where(valid, klass, Label.BACKGROUND).astype(np.uint8)
            s = metrics.evaluate(pred, r.labels, r.labels != train.IGNORE, res=10.0)
            per_region.append({**metrics.summary(s), "valid_fraction": float(valid.mean())})
        agg = {k: float(np.nanmean([p[k] for p in per_region])) for k in per_region[0]}
        results[name] = {**agg, "seconds": time.perf_counter() - t0,
                         "checkpoint": MODELS[name], "regions": [r.name for r in regions]}

    u = results["unet"]
    margin = min(u["iou_debris"] - results[b]["iou_debris"] for b in ("ndsi", "optical_unet"))
    checks = {
        "unet_iou_overall>=0.90": u["iou_overall"] >= 0.90,
        "unet_iou_debris>=0.80": u["iou_debris"] >= 0.80,
        "unet_debris_margin>=0.10": margin >= 0.10,
    }
    doc = {"held_out_seeds": list(seeds), "size_km": size, "years": list(years), "quick": args.quick,
           "models": results, "unet_debris_margin": margin, "targets": TARGETS, "checks": checks}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps(doc, indent=2) + "\n")

    print(f"held-out worlds {list(seeds)} ({size:g} km, years {list(years)}): {len(regions)} region-years\n")
    print("| method | IoU glacier | IoU clean | IoU debris | boundary (m) | front (m) | predicted px |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['iou_overall']:.3f} | {r['iou_clean']:.3f} | {r['iou_debris']:.3f} | "
              f"{r['boundary_m']:.1f} | {r['front_m']:.1f} | {r['valid_fraction']:.1%} |")
    print("\n" + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()))


if __name__ == "__main__":
    main()
