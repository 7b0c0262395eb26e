"""Write a rendered world to disk: COGs, STAC collections/items, truth, then `world.json` last.

Every file goes through a temporary name and an atomic rename, and `world.json` (the completion
marker) is written only after everything else, so a reader never mistakes a half-written directory
for a complete world. `generate` reuses a complete directory written from the same config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from glacier_stac import __version__, sensors
from glacier_stac.locking import locked
from glacier_stac.synthetic import render as R
from glacier_stac.synthetic import stac_docs
from glacier_stac.synthetic.world import World, WorldConfig
from glacier_stac.testing.worlds import SUBDIRS, WORLD_JSON, WorldDir

log = logging.getLogger(__name__)

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
WORKERS = 2  # the renderer and the deflate encoder both release the GIL for most of their work


# ------------------------------------------------------------------------------------------- files


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_cog(path: Path, raster: R.Raster, crs: str, categorical: bool = False) -> None:
    """One single-band Cloud-Optimized GeoTIFF (deflate, 512 px blocks, overviews), written atomically."""
    from rasterio.io import MemoryFile
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    data = raster.data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    src_profile = {
        "driver": "GTiff",
        "dtype": data.dtype.name,
        "count": 1,
        "height": data.shape[0],
        "width": data.shape[1],
        "crs": crs,
        "transform": raster.transform,
        "nodata": raster.nodata,
    }
    dst = cog_profiles.get("deflate")
    dst.update(predictor=3 if data.dtype.kind == "f" else 2, zlevel=1)  # noisy data: level 1 ~ same size
    with MemoryFile() as mem:
        with mem.open(**src_profile) as ds:
            ds.write(data, 1)
        with mem.open() as src:
            cog_translate(
                src,
                str(tmp),
                dst,
                in_memory=True,
                quiet=True,
                overview_resampling="nearest" if categorical else "average",
                config={"GDAL_NUM_THREADS": "1", "GDAL_TIFF_INTERNAL_MASK": "TRUE"},
            )
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ items


def _write_scene(
    scene: R.Scene,
    sensor: sensors.Sensor,
    item_id: str,
    root: Path,
    properties: dict[str, Any],
    geometry: dict,
    bbox: list[float],
) -> dict:
    """COGs of one scene and its STAC Item (as a dict)."""
    assets = {}
    for key, raster in scene.assets.items():
        band = sensor.band(key)
        path = WorldDir(root).cog_path(sensor.collection, item_id, key)
        write_cog(path, raster, scene.crs, categorical=band.categorical)
        assets[key] = stac_docs.asset(sensor, key, path.resolve().as_uri(), raster)
    return stac_docs.item(sensor, item_id, scene.crs, properties, geometry, bbox, assets)


def _footprint(world: World) -> tuple[dict, list[float]]:
    from shapely.geometry import mapping

    poly = world.geobox.extent.to_crs("EPSG:4326").geom
    geom = mapping(poly)
    return json.loads(json.dumps(geom)), [round(v, 8) for v in poly.bounds]


def _dem_footprint(scene: R.Scene) -> tuple[dict, list[float]]:
    r = scene.assets["data"]
    h, w = r.data.shape
    west, north = r.transform.c, r.transform.f
    east, south = west + w * r.transform.a, north + h * r.transform.e
    bbox = [west, south, east, north]
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


# ------------------------------------------------------------------------------------------ truth


def truth_outlines(world: World):
    """Outlines of every year (GeoDataFrame); the physics engineer's `truth` module owns the definition."""
    try:
        from glacier_stac.synthetic import truth
    except ImportError:  # not landed yet: polygonise the glacier ids ourselves
        log.warning("glacier_stac.synthetic.truth is missing; polygonising glacier ids directly")
        return _polygonise(world)
    return truth.outlines_all_years(world)


def rock_glaciers_path(root: str | Path) -> Path:
    """Where a world directory keeps its rock glacier outlines (only when it has any)."""
    return WorldDir(Path(root)).outlines_path.with_name("rock_glaciers.parquet")


def truth_rock_glaciers(world: World):
    """Rock glacier outlines of every year with `primeclass`, or None when the world has none."""
    from glacier_stac.synthetic import truth

    return truth.rock_glacier_outlines(world)


def _polygonise(world: World):
    """Minimal outlines (one row per glacier and year) straight from `glacier_id`/`surface`."""
    import geopandas as gpd
    from rasterio import features
    from shapely.geometry import shape
    from shapely.ops import unary_union

    from glacier_stac.synthetic.world import Surface

    res2 = abs(world.geobox.affine.a * world.geobox.affine.e)
    rows = []
    for year in world.years:
        gid, surf = world.glacier_id[year], world.surface[year]
        polys: dict[int, list] = {}
        for geom, v in features.shapes(gid, mask=gid > 0, transform=world.geobox.affine):
            polys.setdefault(int(v), []).append(shape(geom))
        for g, parts in sorted(polys.items()):
            m = gid == g
            debris = int(((surf == Surface.DEBRIS) & m).sum())
            rows.append(
                {
                    "year": year,
                    "glacier_id": g,
                    "area_m2": float(m.sum() * res2),
                    "clean_area_m2": float((m.sum() - debris) * res2),
                    "debris_area_m2": float(debris * res2),
                    "calving": g in world.calving_ids,
                    "geometry": unary_union(parts),
                }
            )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=R._crs(world))


def _write_truth(world: World, root: Path) -> dict[str, Any]:
    gdf = truth_outlines(world)
    out = WorldDir(root).outlines_path
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    gdf.to_parquet(tmp)
    os.replace(tmp, out)
    rock = truth_rock_glaciers(world)
    if rock is not None:  # their own table beside the glaciers' (never counted as glacier area)
        rpath = rock_glaciers_path(root)
        tmp = rpath.with_name(f".{rpath.name}.part")
        rock.to_parquet(tmp)
        os.replace(tmp, rpath)
    for year in world.years:
        labels = world.labels(year)
        write_cog(
            WorldDir(root).labels_path(year),
            R.Raster(labels, world.geobox.affine, None),
            R._crs(world),
            categorical=True,
        )
    summary = {}
    for year, grp in gdf.groupby("year"):
        summary[str(int(year))] = {
            "glaciers": int(len(grp)),
            "area_km2": round(float(grp["area_m2"].sum()) / 1e6, 4),
            "debris_area_km2": round(float(grp["debris_area_m2"].sum()) / 1e6, 4),
        }
        if rock is not None:  # only worlds that have them: the others' world.json stays as it was
            mine = rock[rock["year"] == year]
            summary[str(int(year))].update(rock_glaciers=int(len(mine)),
                                           rock_glacier_area_km2=round(float(mine["area_m2"].sum()) / 1e6, 4))
    return summary


# ------------------------------------------------------------------------------------------ world


def _clear(root: Path) -> None:
    """Remove a previous world's content (only our own subdirectories), marker first."""
    WorldDir(root).world_json.unlink(missing_ok=True)
    for sub in SUBDIRS:
        if (root / sub).exists():
            shutil.rmtree(root / sub)


def _run(tasks: list[Callable[[], Any]], progress: bool, label: str) -> list[Any]:
    """Run tasks on a small thread pool with a rich progress bar; the first failure stops the rest."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: list[Any] = [None] * len(tasks)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task_id = bar.add_task(label, total=len(tasks))
        pool = ThreadPoolExecutor(max_workers=WORKERS)
        try:
            futures = [pool.submit(t) for t in tasks]
            for i, f in enumerate(futures):
                results[i] = f.result()
                bar.advance(task_id)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def write_world(world: World, out_dir: str | Path, progress: bool = True, source: str = "generated") -> Path:
    """Write all sensors, STAC, truth and quicklook-free summary for `world`; returns the directory."""
    t0 = time.perf_counter()
    root = Path(out_dir).expanduser().resolve()
    check_output_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    prep = R.prepare(world)
    acqs = R.acquisitions(world.config, prep.lon, prep.lat)
    geometry, bbox = _footprint(world)
    ids = stac_docs.ItemIds(prep.lon, prep.lat)

    def scene_task(acq: R.Acquisition) -> Callable[[], dict]:
        def run() -> dict:
            sensor = sensors.get(acq.sensor)
            scene = R.render(world, acq, prep)
            item_id = ids.item_id(acq)
            props = stac_docs.properties(acq, scene, ids)
            return _write_scene(scene, sensor, item_id, root, props, geometry, bbox)

        return run

    def dem_task() -> dict:
        scene = R.render_copdem(world)
        geom, dbbox = _dem_footprint(scene)
        props = {"datetime": R.COPDEM_DATETIME.strftime("%Y-%m-%dT%H:%M:%SZ"), "gsd": 30, "platform": "TanDEM-X"}
        return _write_scene(scene, sensors.COPDEM, ids.dem_id(), root, props, geom, dbbox)

    tasks: list[Callable[[], dict]] = [scene_task(a) for a in acqs if a.sensor in world.config.sensors]
    if "copdem" in world.config.sensors:
        tasks.append(dem_task)
    items = _run(tasks, progress, f"rendering {len(tasks)} scenes")

    by_collection: dict[str, list[dict]] = {}
    for it in items:
        by_collection.setdefault(it["collection"], []).append(it)
    for collection, its in by_collection.items():
        its.sort(key=lambda d: (d["properties"]["datetime"], d["id"]))
        sensor = sensors.get(collection)
        coll = stac_docs.collection(sensor, its)
        _atomic_write_text(WorldDir(root).collection_path(collection), json.dumps(coll, indent=1))
        fc = {"type": "FeatureCollection", "features": its}
        _atomic_write_text(WorldDir(root).items_path(collection), json.dumps(fc, indent=1))

    truth = _write_truth(world, root)
    seconds = time.perf_counter() - t0
    meta = {
        "glacier_stac_version": __version__,
        "generator": generator_fingerprint(),
        "source": source,
        "config": _jsonable(world.config.to_dict()),
        "crs": R._crs(world),
        "shape": [int(world.elevation.shape[0]), int(world.elevation.shape[1])],
        "transform": list(world.geobox.affine)[:6],
        "bbox_4326": bbox,
        "years": list(world.years),
        "calving_ids": [int(i) for i in world.calving_ids],
        "collections": {c: len(v) for c, v in sorted(by_collection.items())},
        "truth": truth,
        "seconds": round(seconds, 1),
    }
    _atomic_write_text(WorldDir(root).world_json, json.dumps(meta, indent=1))  # LAST: the completion marker
    log.info("wrote world %s: %d items in %.1f s", root, len(items), seconds)
    return root


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, Iterable) else str(o)))


CUBE_SIDE = ("features", "kernel", "count_feature")  # what the cube makes of a sensor, never drawn into a world


def generator_fingerprint() -> str:
    """Hash of what draws a world: the synthetic package's source and the sensor records as the writer uses
    them (bands, collections, roles, SCL codes, baselines). A cached world made by other code is regenerated;
    one whose sensors only gained a cube feature (a record's `features`) is not: its pixels are the same."""
    h = hashlib.sha256()
    pkg = Path(__file__).parent
    for f in sorted(pkg.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    drawn = [{k: v for k, v in dataclasses.asdict(s).items() if k not in CUBE_SIDE} for s in sensors.SENSORS.values()]
    h.update(repr((drawn, sensors.SCL, sensors.S1_NODATA, inspect.getsource(sensors._baseline_tuple))).encode())
    return h.hexdigest()[:16]


def read_world_json(out_dir: str | Path) -> dict | None:
    """The completion record of a world directory, or None when the directory is incomplete."""
    return WorldDir(Path(out_dir)).meta()


def check_output_dir(root: Path) -> None:
    """Refuse to write a world over a file or over a directory holding anything but a world."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"output path {root} exists and is not a directory")
    if root.is_dir():
        ours = (*SUBDIRS, WORLD_JSON)
        foreign = [p.name for p in root.iterdir() if p.name not in ours and not p.name.startswith(f".{WORLD_JSON}")]
        if foreign:
            raise ValueError(
                f"output directory {root} holds files that are not a synthetic world "
                f"({', '.join(sorted(foreign)[:5])}); choose an empty or new directory"
            )


def generate(config: WorldConfig, out_dir: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Build the world for `config` and write it, unless `out_dir` already holds that exact world.

    Processes drawing the same world (two trainings, a benchmark beside a test) take turns on a lock file
    beside it (`<out_dir>.lock`, `locking.locked`): the second finds the first's complete world and
    reuses it, instead of writing over its half-written files."""
    root = Path(out_dir).expanduser().resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    with locked(root):
        meta = read_world_json(root)
        if (not force and meta is not None and meta.get("config") == _jsonable(config.to_dict())
                and meta.get("generator") == generator_fingerprint()):
            log.info("reusing complete world in %s (same config, same generator)", root)
            return root
        check_output_dir(root)
        try:
            from glacier_stac.synthetic.world import build_world  # the physics engineer's entry point
        except ImportError as e:
            raise RuntimeError(f"cannot generate a world: glacier_stac.synthetic.world.build_world is missing "
                               f"({e})") from e
        world = build_world(config)
        return write_world(world, root, progress=progress)

