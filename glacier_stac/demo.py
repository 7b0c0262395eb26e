"""`glacier-stac demo`: the whole chain on the embedded synthetic world, end to end.

Generates the default world (cached), serves it with a real STAC API on loopback, searches it with
pystac-client exactly as Planetary Computer is searched, then runs the pipeline over the world's tiles
for its first and last year on a local Dask cluster: predictions in Zarr, outlines and the change
inventory in GeoParquet, plots; scores the stored classes against the truth. Leaves no process running.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import geopandas as gpd
from odc.geo.geobox import GeoBox
from rich.console import Console
from rich.table import Table

from glacier_stac import catalog, cluster, grid, pipeline
from glacier_stac.synthetic.world import WorldConfig
from glacier_stac.testing import stac_server
from glacier_stac.testing.worlds import WorldDir

log = logging.getLogger(__name__)
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "unet.pt"
DEFAULT_RESULTS = Path("glacier-stac-demo")


@dataclass
class DemoReport:
    world_dir: Path
    items: list[dict] = field(default_factory=list)
    glaciers: dict[int, int] = field(default_factory=dict)
    area_km2: float = 0.0
    cube: dict = field(default_factory=dict)
    prediction: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def world_grid(world_dir: Path) -> GeoBox:
    """The world's 10 m grid (`WorldDir.grid`; kept for callers of the demo's helpers)."""
    return WorldDir(world_dir).grid()


def world_aoi(world_dir: Path) -> catalog.AOI:
    """The world's extent as an AOI (`WorldDir.aoi`)."""
    return WorldDir(world_dir).aoi()


def on_lattice(config: WorldConfig) -> WorldConfig:
    """The world moved (by under half a tile) so that it fills as few tiles of the global lattice as it can.

    A run computes whole tiles: a 20 km world straddling tile edges costs 3 x 3 tiles (9.4 Mpx) for 4 Mpx
    of world, placed on the lattice it costs 2 x 2.
    """
    from pyproj import Transformer

    crs = grid.utm_crs(config.center_lon, config.center_lat)
    to_utm = Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True)
    tile_m = grid.TILE_PX * config.resolution
    n_tiles = -(-config.size_km * 1000 // tile_m)
    offset = 0.0 if n_tiles % 2 == 0 else tile_m / 2  # an even count centres on a tile corner, odd on a centre
    cx, cy = (round((v - offset) / tile_m) * tile_m + offset for v in to_utm.transform(config.center_lon,
                                                                                          config.center_lat))
    lon, lat = to_utm.transform(cx, cy, direction="INVERSE")
    return replace(config, center_lon=float(lon), center_lat=float(lat))


def run(out: Path, config: WorldConfig | None = None, checkpoint: Path = DEFAULT_CHECKPOINT,
        workers: int = 2, console: Console | None = None, results: Path = DEFAULT_RESULTS) -> DemoReport:
    """The demo world, searched, then `pipeline.run` over its tiles for the first and last year: Zarr
    predictions, OBIA outlines, inventory and change table, plots, all under `results`."""
    from glacier_stac.synthetic.writer import generate

    console = console or Console(soft_wrap=True)
    config = on_lattice(config or WorldConfig())
    t0 = time.perf_counter()
    world_dir = generate(config, out)
    rep = DemoReport(world_dir=world_dir)
    rep.seconds["world"] = time.perf_counter() - t0
    console.print(f"[bold]world[/bold] {world_dir} ({rep.seconds['world']:.1f} s)")

    geobox = world_grid(world_dir)
    aoi = world_aoi(world_dir)
    truth = gpd.read_parquet(WorldDir(world_dir).outlines_path)
    rep.glaciers = {int(y): int(n) for y, n in truth.groupby("year").size().items()}
    rep.area_km2 = geobox.shape[0] * geobox.shape[1] * abs(geobox.resolution.x) ** 2 / 1e6

    t1 = time.perf_counter()
    with stac_server.serve(world_dir) as url:
        cat = catalog.open_catalog(url)
        console.print(f"[bold]STAC API[/bold] {url} (query={cat.supports_query}, filter={cat.supports_filter})")
        found = catalog.search(aoi, list(config.years), catalog=cat, missing="record")
    rep.items = found.summary()
    rep.seconds["search"] = time.perf_counter() - t1

    table = Table(title=f"items per sensor and year over {aoi}")
    table.add_column("sensor")
    years = list(config.years)
    for y in years:
        table.add_column(str(y), justify="right")
    for sensor, by_year in found.items.items():
        if 0 in by_year:
            table.add_row(sensor, *[str(len(by_year[0]))] * len(years))
        else:
            table.add_row(sensor, *[str(len(by_year.get(y, []))) for y in years])
    table.add_row("glaciers (truth)", *[str(rep.glaciers.get(y, 0)) for y in years])
    console.print(table)
    console.print(f"area {rep.area_km2:.0f} km², grid {geobox.shape[0]} x {geobox.shape[1]} px at "
                  f"{abs(geobox.resolution.x):g} m, EPSG:{geobox.crs.epsg}")

    first_last = sorted({years[0], years[-1]})
    results = Path(results).absolute()
    results.mkdir(parents=True, exist_ok=True)
    aoi_file = results / "aoi.geojson"  # the world's own square, not its lon/lat bbox (wider: it adds tiles)
    aoi_file.write_text(json.dumps(geobox.extent.to_crs("EPSG:4326").geom.__geo_interface__))
    cfg = pipeline.RunConfig(
        years=tuple(first_last), store=str(results / "predictions.zarr"), aoi=str(aoi_file),
        checkpoint=str(checkpoint), catalog="", inventory=str(results / "inventory.parquet"),
        report=str(results / "run-report.json"), tiles_in_flight=2 * workers,
        cluster=cluster.ClusterSpec(workers=workers, threads_per_worker=1))
    t2 = time.perf_counter()
    with stac_server.serve(world_dir) as url:
        cfg = replace(cfg, catalog=url)
        plan = pipeline.make_plan(cfg)
        console.print(f"\n[bold]run[/bold] {len(plan.tiles)} tiles of the global grid x {len(first_last)} years "
                      f"({plan.todo} to do), {plan.margin} px model margin, store {cfg.store}")
        run = pipeline.run(cfg, console=console)
    rep.seconds["pipeline"] = time.perf_counter() - t2
    c = run.counts()
    console.print(f"tiles: {c['done']} done, {c['skipped']} already done, {c['empty']} empty, {c['failed']} failed "
                  f"in {rep.seconds['pipeline']:.1f} s")
    for t in run.tiles:
        if t.status == "failed":
            console.print(f"  [red]failed[/red] {t.tile} {t.year}: {t.reason}", markup=True)
    if run.years_complete:
        rep.prediction = _score(cfg, world_dir, geobox, run.years_complete, console)
        _inventory(cfg, world_dir, results, console)
    console.print(f"\nresults in {results}; open them with:\n"
                  f"  import glacier_stac, geopandas\n"
                  f"  preds = glacier_stac.open_predictions(\"{cfg.store}\")\n"
                  f"  inv = geopandas.read_parquet(\"{cfg.inventory}\")")
    rep.seconds["total"] = time.perf_counter() - t0
    console.print(f"\ndone in {rep.seconds['total']:.1f} s")
    return rep


def _score(cfg: pipeline.RunConfig, world_dir: Path, geobox: GeoBox, years: list[int], console: Console) -> dict:
    """Pixel scores of the stored classes against the world's truth, per year."""
    from glacier_stac import metrics, store

    ds = store.open_predictions(cfg.store, aoi=geobox.extent, years=years)
    out = {}
    for year in years:
        truth = WorldDir(world_dir).truth_labels(year, geobox)
        pred = ds.sel(year=year)
        valid = pred["valid"].values
        scores = metrics.evaluate(pred["classes"].values, truth, valid & (truth != 255), res=abs(geobox.resolution.x))
        s = metrics.summary(scores)
        console.print(f"[bold]prediction[/bold] {ds.attrs.get('zone')} {year}: IoU glacier {s['iou_overall']:.3f}, "
                      f"clean {s['iou_clean']:.3f}, debris {s['iou_debris']:.3f}, boundary {s['boundary_m']:.1f} m, "
                      f"valid {scores['valid_fraction']:.1%}")
        out[year] = {**s, "valid_fraction": scores["valid_fraction"]}
    return out


def _inventory(cfg: pipeline.RunConfig, world_dir: Path, results: Path, console: Console) -> None:
    """The inventory's per-region summary and its plots."""
    from glacier_stac import inventory

    inv = inventory.read(cfg.inventory)
    table = Table(title=f"inventory {cfg.inventory}")
    summ = inventory.summary(inv)
    for col in summ.columns:
        table.add_column(str(col), justify="right")
    for row in summ.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    change_map, chart = inventory.plot(inv, results)
    console.print(f"plots: {change_map} {chart}")


def _predict(data, checkpoint: Path, world_dir: Path, year: int, geobox: GeoBox, console: Console) -> dict:
    from glacier_stac import metrics
    from glacier_stac.infer import predict
    from glacier_stac.models.checkpoint import load

    ckpt = load(checkpoint)
    t = time.perf_counter()
    out = predict(data, checkpoint).compute()  # an in-memory cube is cut on the tile grid by predict
    dt = time.perf_counter() - t
    truth = WorldDir(world_dir).truth_labels(year, geobox)
    scores = metrics.evaluate(out["classes"].values, truth, out["valid"].values & (truth != 255),
                              res=abs(geobox.resolution.x))
    s = metrics.summary(scores)
    console.print(f"\n[bold]prediction[/bold] {ckpt.model} ({checkpoint.name}) in {dt:.1f} s: "
                  f"IoU glacier {s['iou_overall']:.3f}, clean {s['iou_clean']:.3f}, debris {s['iou_debris']:.3f}, "
                  f"boundary {s['boundary_m']:.1f} m, valid {scores['valid_fraction']:.1%}")
    return {"model": ckpt.model, "seconds": dt, **s, "valid_fraction": scores["valid_fraction"]}
