"""Glacier outlines and change on held-out worlds, through the whole chain, OBIA against raw thresholding.

    python benchmarks/outlines.py [--quick]

Per world: a real STAC API on loopback (`rustac serve`) -> `catalog.search` -> `cube.build` ->
`infer.predict` (the shipped U-Net) -> `store.write` (Zarr) -> `inventory.add_year` (reads the store
through `store.open_predictions`, OBIA outlines with the cube's features, identity from the first
year's truth outlines as the reference inventory) for every year; the baseline is `obia.threshold_polygons`
on the same stored predictions. Worlds: generator seeds never used in training (1001-1003), tests (0-99)
or other benchmarks (501, 601-602), plus one world drawn by `glacier-stac synthetic render` from a DEM
and outlines (those of another held-out generated world, whose physics the user renderer replaces).

Scores against the truth outlines (holes under the MMU filled: the RGI convention OBIA follows), per world
(then median and worst over worlds):
- outline_iou: median over truth glaciers > 0.1 km² and years of IoU(truth outline, the mapped polygons
  whose largest overlap is with that glacier);
- area_error_pct: median |mapped - true area| / true area, same glaciers;
- change_within_uncertainty_fraction: share of glaciers > 0.1 km² in the first year whose mapped rate
  (first to last year) is within the stated uncertainty of the true rate (target >= 0.9);
- spurious_polygons_per_100km2: polygons touching no true glacier of the year, per 100 km² (mean over years);
- false_glacier_km2: mapped area outside every true glacier (mean over years);
- false_glacier_km2_px: the same counted on pixel centres. The truth outlines are pixel-exact on the
  prediction grid, so any outline simplified within half a pixel (as OBIA's are, and the raw threshold's
  are not) adds polygon area outside them; counted on pixels, the two methods' outlines compare as masks;
- debris_iou: IoU of debris-covered ice (debris-class pixels inside the outlines) vs the truth, pooled.
The same with `_threshold` for raw thresholding (its change uncertainty: the ±½-pixel buffer of its polygons).
Also written: the size of OBIA's stated uncertainty (`uncertainty_size`: median area_unc as % of area, its
margin and class terms), per-glacier change rows (`per_world.*.glaciers`), and OBIA's peak memory
(tracemalloc) on the first world and on 4x its area (`obia_memory`). Writes benchmarks/results/outlines.json
(`--quick`: outlines-quick.json, so that a quick run never overwrites the full run's figures).

    python benchmarks/outlines.py --calibrate

fits k of the uncertainty's classification term (`obia.Uncertainty`) on training worlds (seeds 711-713 and
three rendered from 715-717), never on the scored ones, and writes benchmarks/results/outlines_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely

from glacier_stac import catalog, cube, inventory, obia, store
from glacier_stac.infer import predict
from glacier_stac.labels import Label
from glacier_stac.synthetic.world import WorldConfig, build_world
from glacier_stac.synthetic.writer import generate
from glacier_stac.testing import stac_server
from glacier_stac.testing.worlds import WorldDir

RESULTS = Path(__file__).parent / "results"
CHECKPOINT = Path(__file__).parent.parent / "glacier_stac" / "checkpoints" / "unet.pt"
GENERATED_SEEDS = (701, 702, 703)  # held out: training 1001-1003, tests 0-99, read 501, accuracy 601-602
RENDER_SOURCE_SEED = 704  # the generated world whose DEM and outlines are rendered by `synthetic render`
# worlds that calibrate the uncertainty's k (`--calibrate`), never the scored ones above (714 has no marine
# glacier, which the generator requires, so the rendered calibration worlds are drawn from 715-717)
CALIBRATION_SEEDS, CALIBRATION_RENDER_SEEDS = (711, 712, 713), (715, 716, 717)
BIG_KM2 = 0.1
METRICS = ("outline_iou", "area_error_pct", "change_within_uncertainty_fraction", "spurious_polygons_per_100km2",
           "false_glacier_km2", "false_glacier_km2_px", "debris_iou")
HIGHER_IS_BETTER = {"outline_iou", "change_within_uncertainty_fraction", "debris_iou"}


@dataclass(frozen=True)
class Setup:
    size_km: float
    years: tuple[int, ...]


def rendered_world(root: Path, setup: Setup, seed: int = RENDER_SOURCE_SEED) -> Path:
    """A world drawn by `glacier-stac synthetic render` from a DEM and outlines (written from world `seed`)."""
    out = root / f"rendered-{seed}-{setup.size_km:g}km-{'-'.join(map(str, setup.years))}"
    if WorldDir(out).meta() is not None:
        return out
    src = root / f"render-inputs-{seed}-{setup.size_km:g}km"
    src.mkdir(parents=True, exist_ok=True)
    w = build_world(WorldConfig(seed=seed, size_km=setup.size_km, years=setup.years[:1]))
    gb = w.geobox
    dem = src / "dem.tif"
    with rasterio.open(dem, "w", driver="GTiff", width=gb.shape[1], height=gb.shape[0], count=1, dtype="float32",
                       crs=gb.crs.to_wkt(), transform=gb.affine) as ds:
        ds.write(w.elevation.astype("float32"), 1)
    from glacier_stac.synthetic import truth

    outl = src / "outlines.geojson"
    truth.outlines(w, setup.years[0])[["glacier_id", "geometry"]].to_crs(4326).to_file(outl, driver="GeoJSON")
    cmd = [sys.executable, "-m", "glacier_stac.cli", "synthetic", "render", "--dem", str(dem), "--outlines",
           str(outl), "--out", str(out), "--years", ",".join(map(str, setup.years)), "--seed", "7"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def run_chain(world_dir: Path, work: Path, ckpt, uncertainty: obia.Uncertainty = obia.Uncertainty()) -> dict:
    """STAC -> cube -> predict -> store -> inventory for every year; returns what scoring needs."""
    wd = WorldDir(world_dir)
    years = wd.years()
    geobox = wd.grid()
    truth_all = rgi_truth(wd.outlines())
    ref = truth_all[truth_all.year == years[0]].rename(columns={"glacier_id": "glac_id"})[["glac_id", "geometry"]]
    zarr_path, inv_path = work / "preds.zarr", work / "inventory.parquet"
    for p in (inv_path, inv_path.with_name("inventory.changes.parquet")):
        p.unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    thresholds: dict[int, gpd.GeoDataFrame] = {}
    debris: dict[int, np.ndarray] = {}
    t = time.perf_counter()
    with stac_server.serve(world_dir) as url:
        found = catalog.search(wd.aoi(), list(years), catalog=catalog.open_catalog(url), missing="record")
    seconds["search"] = time.perf_counter() - t
    run_id = store.record_run(zarr_path, {"benchmark": "outlines", "world": world_dir.name})
    for y in years:
        t = time.perf_counter()
        # the earlier seasons of the world its history features read, as a run over an archive joins them
        data = cube.build(found, geobox, y, history=cube.history_for(ckpt.features)).compute(scheduler="threads")
        seconds[f"cube_{y}"] = time.perf_counter() - t
        t = time.perf_counter()
        wp = store.write(predict(data, ckpt), y, zarr_path, run_id=run_id)
        dask.compute(*wp.tasks, scheduler="threads")
        seconds[f"predict_store_{y}"] = time.perf_counter() - t
        t = time.perf_counter()
        inventory.add_year(inv_path, y, zarr_path, aoi=geobox.extent, features=data, reference=ref, region="bm",
                           uncertainty=uncertainty)
        seconds[f"obia_inventory_{y}"] = time.perf_counter() - t
        stored = store.open_predictions(zarr_path, aoi=geobox.extent, years=[y]).sel(year=y).compute()
        thresholds[y] = obia.threshold_polygons(stored)
        debris[y] = np.asarray(stored["classes"].values == Label.DEBRIS_ICE)
    return {"inventory": inventory.read(inv_path), "threshold": thresholds, "debris_class": debris,
            "truth": truth_all, "years": years, "geobox": geobox, "world": wd, "seconds": seconds}


def rgi_truth(truth: gpd.GeoDataFrame, mmu_m2: float = obia.Rules().mmu_km2 * 1e6) -> gpd.GeoDataFrame:
    """The truth outlines drawn by the RGI convention the product follows: holes under the minimum mapping
    unit filled (nunataks at or above it stay), areas from the outlines."""
    def fill(g):
        polys = g.geoms if g.geom_type == "MultiPolygon" else [g]
        kept = [shapely.Polygon(p.exterior, [r for r in p.interiors if shapely.Polygon(r).area >= mmu_m2])
                for p in polys]
        return shapely.make_valid(shapely.union_all(kept))  # a part inside a filled hole joins it

    out = truth.copy()
    out["geometry"] = [fill(g) for g in truth.geometry]
    out["area_m2"] = out.geometry.area
    return out


def _assign(pred: gpd.GeoSeries, truth: gpd.GeoDataFrame) -> np.ndarray:
    """For each mapped polygon, the row of the truth glacier it overlaps most (-1: none)."""
    out = np.full(len(pred), -1)
    left, right = truth.sindex.query(pred.values, predicate="intersects")
    best = np.zeros(len(pred))
    for i, j in zip(left, right, strict=True):
        a = pred.iat[i].intersection(truth.geometry.iat[j]).area
        if a > best[i]:
            best[i], out[i] = a, j
    return out


def score(res: dict, method: str) -> dict:
    """The metrics of one method ('obia' or 'threshold') on one world."""
    gb, years, truth_all = res["geobox"], res["years"], res["truth"]
    crs = gb.crs.to_wkt()
    world_km2 = gb.shape[0] * gb.shape[1] * abs(gb.resolution.x) ** 2 / 1e6
    ious, errs, spurious, false_km2, false_px_km2 = [], [], [], [], []
    px_km2 = abs(gb.resolution.x * gb.resolution.y) / 1e6
    areas: dict[int, dict[int, tuple[float, float]]] = {}
    d_inter = d_union = 0
    for y in years:
        truth = truth_all[truth_all.year == y].reset_index(drop=True).to_crs(crs)
        if method == "obia":
            rows = res["inventory"][res["inventory"].year == y].to_crs(crs)
            geoms = rows.geometry.reset_index(drop=True)
        else:
            geoms = res["threshold"][y].geometry.to_crs(crs).reset_index(drop=True)
        who = _assign(geoms, truth)
        spurious.append((who < 0).sum() / world_km2 * 100)
        mapped = shapely.union_all(geoms.values) if len(geoms) else shapely.Polygon()
        false_km2.append(mapped.difference(shapely.union_all(truth.geometry.values)).area / 1e6)
        unc = obia.area_uncertainty_m2(geoms, abs(gb.resolution.x)) if len(geoms) else np.zeros(0)
        for j, t in truth.iterrows():
            mine = geoms[who == j]
            g = shapely.union_all(mine.values) if len(mine) else shapely.Polygon()
            a = g.area
            areas.setdefault(int(t.glacier_id), {})[y] = (a / 1e6, float(unc[who == j].sum()) / 1e6)
            if t.area_m2 / 1e6 > BIG_KM2:
                u = g.union(t.geometry).area
                ious.append(g.intersection(t.geometry).area / u if u else 0.0)
                errs.append(abs(a - t.area_m2) / t.area_m2 * 100)
        inside = rasterio.features.rasterize(geoms.values, out_shape=gb.shape, transform=gb.affine).astype(bool) \
            if len(geoms) else np.zeros(gb.shape, bool)
        in_truth = rasterio.features.rasterize(truth.geometry.values, out_shape=gb.shape,
                                               transform=gb.affine).astype(bool)
        false_px_km2.append(float((inside & ~in_truth).sum()) * px_km2)
        d_pred = inside & res["debris_class"][y]
        d_true = res["world"].truth_labels(y, gb) == Label.DEBRIS_ICE
        d_inter += int((d_pred & d_true).sum())
        d_union += int((d_pred | d_true).sum())
    # change first -> last year against truth +- stated uncertainty
    y0, y1 = years[0], years[-1]
    tr = truth_all.pivot_table(index="glacier_id", columns="year", values="area_m2", aggfunc="sum").fillna(0) / 1e6
    big = [int(g) for g in tr.index if tr.at[g, y0] > BIG_KM2]
    ok = []
    if method == "obia":
        ch = inventory.change_table(res["inventory"])
        ch = ch[(ch.year0 == y0) & (ch.year1 == y1)].set_index("glac_id")
    for g in big:
        true_rate = (tr.at[g, y1] - tr.at[g, y0]) / (y1 - y0)
        if method == "obia":
            if str(g) not in ch.index:
                ok.append(False)
                continue
            rate, unc = ch.at[str(g), "rate_km2_yr"], ch.at[str(g), "rate_unc_km2_yr"]
        else:
            (a0, u0), (a1, u1) = areas[g].get(y0, (0.0, 0.0)), areas[g].get(y1, (0.0, 0.0))
            rate, unc = (a1 - a0) / (y1 - y0), float(np.hypot(u0, u1)) / (y1 - y0)
        ok.append(abs(rate - true_rate) <= unc)
    return {"outline_iou": float(np.median(ious)) if ious else float("nan"),
            "area_error_pct": float(np.median(errs)) if errs else float("nan"),
            "change_within_uncertainty_fraction": float(np.mean(ok)) if ok else float("nan"),
            "spurious_polygons_per_100km2": float(np.mean(spurious)),
            "false_glacier_km2": float(np.mean(false_km2)),
            "false_glacier_km2_px": float(np.mean(false_px_km2)),
            "debris_iou": d_inter / d_union if d_union else float("nan"),
            "glaciers_scored": len(ious), "glaciers_in_change": len(ok)}


def glacier_changes(res: dict) -> list[dict]:
    """Per truth glacier > 0.1 km² in the first year: true and mapped change first -> last year (km²), the two
    years' uncertainty components from the inventory (margin, class) and the first year's debris share."""
    years, inv = res["years"], res["inventory"]
    y0, y1 = years[0], years[-1]
    tr = res["truth"].pivot_table(index="glacier_id", columns="year", values="area_m2", aggfunc="sum").fillna(0) / 1e6
    out = []
    for g in tr.index:
        if tr.at[g, y0] <= BIG_KM2:
            continue
        r0, r1 = (inv[(inv.glac_id == str(g)) & (inv.year == y)] for y in (y0, y1))
        out.append({"glacier_id": int(g), "years": [int(y0), int(y1)], "true0_km2": float(tr.at[g, y0]),
                    "true1_km2": float(tr.at[g, y1]), "area0_km2": float(r0.area_km2.sum()),
                    "area1_km2": float(r1.area_km2.sum()), "unc0_km2": float(r0.area_unc_km2.sum()),
                    "unc1_km2": float(r1.area_unc_km2.sum()),
                    "margin0_km2": float(r0.area_unc_margin_km2.sum()),
                    "margin1_km2": float(r1.area_unc_margin_km2.sum()),
                    "class0_km2": float(r0.area_unc_class_km2.sum()), "class1_km2": float(r1.area_unc_class_km2.sum()),
                    "debris_frac": float(np.average(r0.debris_frac, weights=r0.area_km2)) if len(r0) else float("nan"),
                    "mapped": bool(len(r0) and len(r1))})
    for r in out:
        dt = r["years"][1] - r["years"][0]
        r["true_rate"] = (r["true1_km2"] - r["true0_km2"]) / dt
        r["rate"] = (r["area1_km2"] - r["area0_km2"]) / dt
        r["rate_unc"] = float(np.hypot(r["unc0_km2"], r["unc1_km2"])) / dt
        r["within"] = bool(r["mapped"] and abs(r["rate"] - r["true_rate"]) <= r["rate_unc"])
    return out


def calibrate_k(rows: list[dict], coverage: float = 0.9) -> tuple[float, list[tuple[float, float]]]:
    """The smallest k (step 0.05) of the classification term such that `coverage` of the glaciers' change
    errors lie within sqrt(margin0² + margin1² + k²(class0² + class1²)); rows from a run with k = 1."""
    err = np.array([abs((r["area1_km2"] - r["area0_km2"]) - (r["true1_km2"] - r["true0_km2"])) for r in rows])
    m2 = np.array([r["margin0_km2"] ** 2 + r["margin1_km2"] ** 2 for r in rows])
    c2 = np.array([r["class0_km2"] ** 2 + r["class1_km2"] ** 2 for r in rows])
    curve = []
    for k in np.round(np.arange(0, 10.0001, 0.05), 2):
        cov = float(np.mean(err <= np.sqrt(m2 + k * k * c2)))
        curve.append((float(k), cov))
        if cov >= coverage:
            return float(k), curve
    raise RuntimeError(f"no k <= 10 covers {coverage:.0%} of the training glaciers' change errors")


def tiled(ds, n: int = 2):
    """`ds` (y, x last) repeated n x n on an extended grid: n² times the area with the same content."""
    import xarray as xr

    res = float(ds.x[1] - ds.x[0])
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    x = float(ds.x[0]) + res * np.arange(n * nx)
    y = float(ds.y[0]) - res * np.arange(n * ny)

    def rep(v):
        reps = (1,) * (v.ndim - 2) + (n, n)
        return xr.DataArray(np.tile(np.asarray(v.values), reps), dims=v.dims,
                            coords={d: v[d].values for d in v.dims if d not in ("y", "x")} | {"y": y, "x": x})

    out = xr.Dataset({k: rep(v) for k, v in ds.data_vars.items()}) if isinstance(ds, xr.Dataset) else rep(ds)
    return out.rio.write_crs(ds.rio.crs)


def obia_memory(world_dir: Path, zarr_path: Path) -> dict:
    """Peak memory (tracemalloc: every NumPy allocation) of `obia.outlines` on one world-year and on 4x its area
    (the same content tiled 2 x 2), inputs already in memory."""
    import tracemalloc

    wd = WorldDir(world_dir)
    y = wd.years()[0]
    gb = wd.grid()
    with stac_server.serve(world_dir) as url:
        found = catalog.search(wd.aoi(), [y], catalog=catalog.open_catalog(url), missing="record")
    feats = cube.build(found, gb, y).compute(scheduler="threads")
    pred = store.open_predictions(zarr_path, aoi=gb.extent, years=[y]).sel(year=y).compute()
    pred = pred[[v for v in pred.data_vars if v in ("probability", "classes", "valid")]]
    out = {}
    for n in (1, 2):
        p, f = (pred, feats) if n == 1 else (tiled(pred, n), tiled(feats, n))
        tracemalloc.start()
        t = time.perf_counter()
        g = obia.outlines(p, f)
        dt = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        mpx = p.sizes["y"] * p.sizes["x"] / 1e6
        out[f"{n * n}x"] = {"mpx": mpx, "peak_mb": peak / 2**20, "bytes_per_px": peak / (mpx * 1e6),
                            "glaciers": len(g), "seconds": dt}
    out["ratio_4x_1x"] = out["4x"]["peak_mb"] / out["1x"]["peak_mb"]
    return out


def uncertainty_size(per_world: dict[str, dict]) -> dict:
    """How large the stated uncertainty is, so that a pass cannot hide a trivially wide one: per world the
    median over glaciers > 0.1 km² (first and last year) of area_unc as % of the mapped area, the same for
    the margin and class terms, and of the rate uncertainty as % of the true |rate|; median and worst
    (largest) over worlds."""
    per = {}
    for name, w in per_world.items():
        g = [r for r in w["glaciers"] if r["mapped"]]
        pct = [100 * r[f"unc{i}_km2"] / r[f"area{i}_km2"] for r in g for i in (0, 1) if r[f"area{i}_km2"] > 0]
        mar = [100 * r[f"margin{i}_km2"] / r[f"area{i}_km2"] for r in g for i in (0, 1) if r[f"area{i}_km2"] > 0]
        cls = [100 * r[f"class{i}_km2"] / r[f"area{i}_km2"] for r in g for i in (0, 1) if r[f"area{i}_km2"] > 0]
        deb = [100 * r[f"unc{i}_km2"] / r[f"area{i}_km2"] for r in g for i in (0, 1)
               if r[f"area{i}_km2"] > 0 and r["debris_frac"] >= 0.1]
        per[name] = {"area_unc_pct": float(np.median(pct)) if pct else float("nan"),
                     "margin_pct": float(np.median(mar)) if mar else float("nan"),
                     "class_pct": float(np.median(cls)) if cls else float("nan"),
                     "area_unc_pct_debris_glaciers": float(np.median(deb)) if deb else float("nan")}
    out: dict = {"per_world": per}
    for m in ("area_unc_pct", "margin_pct", "class_pct", "area_unc_pct_debris_glaciers"):
        v = np.array([p[m] for p in per.values()], dtype=float)
        out[m] = {"median": float(np.nanmedian(v)), "worst": float(np.nanmax(v))}
    return out


def aggregate(per_world: dict[str, dict]) -> dict:
    """Median and worst over worlds of every metric (worst: lowest for scores, highest for errors)."""
    out = {}
    for m in METRICS:
        for suffix in ("", "_threshold"):
            v = np.array([w[m + suffix] for w in per_world.values()], dtype=float)
            worst = np.nanmin(v) if m in HIGHER_IS_BETTER else np.nanmax(v)
            out[m + suffix] = {"median": float(np.nanmedian(v)), "worst": float(worst)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 km worlds, 2 years (full: 6 km, 3 years)")
    ap.add_argument("--world", type=Path, default=Path(".cache/benchmarks"))
    ap.add_argument("--calibrate", action="store_true",
                    help="run the training worlds (seeds 711-713, rendered 715-717) with k = 1 and write the k of the "
                         "classification uncertainty that covers 90%% of their change errors "
                         "(results/outlines_calibration.json); the scored worlds are never used")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setup = Setup(4.0, (2021, 2023)) if args.quick else Setup(6.0, (2019, 2021, 2023))
    from glacier_stac.models.checkpoint import load

    ckpt = load(CHECKPOINT)
    t0 = time.perf_counter()
    seeds, render_seeds = (CALIBRATION_SEEDS, CALIBRATION_RENDER_SEEDS) if args.calibrate else (
        GENERATED_SEEDS, (RENDER_SOURCE_SEED,))
    worlds = {f"generated-{s}": generate(WorldConfig(seed=s, size_km=setup.size_km, years=setup.years),
                                         args.world / f"outlines-{s}-{setup.size_km:g}km-{len(setup.years)}y",
                                         progress=False)
              for s in seeds}
    for r in render_seeds:
        worlds[f"rendered-{r}"] = rendered_world(args.world, setup, r)
    world_s = time.perf_counter() - t0
    if args.calibrate:
        calibrate(worlds, args.world, setup, ckpt, args.quick)
        return
    per_world, seconds = {}, {}
    memory = {}
    for name, wdir in worlds.items():
        work = args.world / f"outlines-run-{name}-{setup.size_km:g}km"
        if work.exists():
            import shutil

            shutil.rmtree(work)
        work.mkdir(parents=True)
        res = run_chain(wdir, work, ckpt)
        o, t = score(res, "obia"), score(res, "threshold")
        per_world[name] = {**o, **{k + "_threshold": v for k, v in t.items()}, "glaciers": glacier_changes(res)}
        if not memory:  # OBIA's peak memory on the first world and on 4x its area
            memory = obia_memory(wdir, work / "preds.zarr")
        seconds[name] = res["seconds"]
        print(f"{name}: " + ", ".join(f"{m} {o[m]:.3f} / {t[m]:.3f}" for m in METRICS), flush=True)
    agg = aggregate(per_world)
    worlds_ = per_world.values()
    checks = {
        "change_within_uncertainty_fraction_median>=0.9": agg["change_within_uncertainty_fraction"]["median"] >= 0.9,
        "obia_fewer_spurious_polygons_every_world": all(
            w["spurious_polygons_per_100km2"] < w["spurious_polygons_per_100km2_threshold"] for w in worlds_),
        "obia_less_false_area_every_world": all(
            w["false_glacier_km2"] < w["false_glacier_km2_threshold"] for w in worlds_),
        "obia_less_false_area_every_world_pixels": all(
            w["false_glacier_km2_px"] < w["false_glacier_km2_px_threshold"] for w in worlds_),
        "obia_debris_iou_not_lost_every_world": all(
            w["debris_iou"] >= w["debris_iou_threshold"] - 0.005 for w in worlds_),
    }
    doc = {"quick": args.quick, **asdict(setup), "checkpoint": CHECKPOINT.name, "worlds": list(worlds),
           "uncertainty": asdict(obia.Uncertainty()), "uncertainty_method": inventory.area_uncertainty_method(),
           "obia_memory": memory, "uncertainty_size": uncertainty_size(per_world),
           "load": Path("/proc/loadavg").read_text().split()[:3],
           "per_world": per_world, "aggregate": agg, "checks": checks,
           "seconds": {"worlds": world_s, "chain": seconds, "total": time.perf_counter() - t0}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("outlines-quick.json" if args.quick else "outlines.json")).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{len(worlds)} worlds, {setup.size_km:g} km, years {list(setup.years)}: median (worst), OBIA vs threshold")
    print("| metric | OBIA | raw threshold |\n|---|---|---|")
    for m in METRICS:
        a, b = agg[m], agg[m + "_threshold"]
        print(f"| {m} | {a['median']:.3f} ({a['worst']:.3f}) | {b['median']:.3f} ({b['worst']:.3f}) |")
    print(f"OBIA peak memory: {memory['1x']['peak_mb']:.1f} MB (1x), {memory['4x']['peak_mb']:.1f} MB (4x)")
    print("\n" + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()))


def calibrate(worlds: dict[str, Path], root: Path, setup: Setup, ckpt, quick: bool) -> None:
    """Fit k of the classification uncertainty on the training worlds (run with k = 1); write the result."""
    rows = []
    for name, wdir in worlds.items():
        work = root / f"outlines-calib-{name}-{setup.size_km:g}km"
        if work.exists():
            import shutil

            shutil.rmtree(work)
        work.mkdir(parents=True)
        res = run_chain(wdir, work, ckpt, obia.Uncertainty(k=1.0))
        rows += [{"world": name, **r} for r in glacier_changes(res)]
        print(name, len(rows), flush=True)
    k, curve = calibrate_k(rows)
    doc = {"quick": quick, **asdict(setup), "worlds": list(worlds), "k": k, "coverage_target": 0.9,
           "coverage_at_k": dict(curve)[k], "coverage_k0": curve[0][1], "glaciers": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "outlines_calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"k = {k} covers {dict(curve)[k]:.2f} of {len(rows)} training glaciers (k = 0: {curve[0][1]:.2f})")


if __name__ == "__main__":
    main()
