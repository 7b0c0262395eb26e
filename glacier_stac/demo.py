"""`glacier-stac demo`: the whole chain on the embedded synthetic world, end to end.

Generates the default world (cached), serves it with a real STAC API on loopback, searches it with
pystac-client exactly as Planetary Computer is searched, builds the year's cube on a local Dask
cluster, predicts with the shipped checkpoint and scores it against the truth. Leaves no process
running.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
from odc.geo.geobox import GeoBox
from rich.console import Console
from rich.table import Table

from glacier_stac import catalog, cluster, cube
from glacier_stac.synthetic.world import WorldConfig
from glacier_stac.testing import stac_server
from glacier_stac.testing.worlds import WorldDir

log = logging.getLogger(__name__)
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "unet.pt"


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


def run(out: Path, config: WorldConfig | None = None, checkpoint: Path | None = DEFAULT_CHECKPOINT,
        workers: int = 2, console: Console | None = None) -> DemoReport:
    from distributed import progress, wait

    from glacier_stac.synthetic.writer import generate

    console = console or Console(soft_wrap=True)
    config = config or WorldConfig()
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

    year = years[-1]
    with cluster.connect(cluster.ClusterSpec(workers=workers, threads_per_worker=1)) as client:
        data = cube.build(found, geobox, year)
        t2 = time.perf_counter()
        data = data.persist()  # stays on the workers; predict reads it from there
        progress(data, notebook=False)
        wait(data)
        dt = time.perf_counter() - t2
        n_assets = sum(len(v) for v in found.for_year(year).values())
        rep.cube = {"year": year, "shape": list(data.shape), "features": list(map(str, data.feature.values)),
                    "seconds": dt, "output_mpx_per_s": data.shape[1] * data.shape[2] / 1e6 / dt,
                    "items": n_assets, "missing_sensors": data.attrs["missing_sensors"]}
        console.print(f"\n[bold]cube {year}[/bold] {tuple(data.shape)} float32, "
                      f"{data.shape[1] * data.shape[2] / 1e6:.1f} Mpx from {n_assets} items in {dt:.1f} s "
                      f"({rep.cube['output_mpx_per_s']:.2f} output Mpx/s)")
        console.print("features: " + " ".join(rep.cube["features"]))
        errors = cluster.read_errors(client, data.attrs["assets"])
        rep.cube["read_errors"] = errors
        if errors:
            console.print(f"[yellow]{len(errors)} unreadable reads recorded as no-data[/yellow]")
            for e in {(e["item"], e["asset_key"], e["error"]): e for e in errors}.values():
                console.print(f"  item {e['item']} asset {e['asset_key']}: {e['error']}", markup=False)
        if checkpoint is not None and Path(checkpoint).exists():
            rep.prediction = _predict(data, Path(checkpoint), world_dir, year, geobox, console)
        elif checkpoint is not None:
            console.print(f"[yellow]no checkpoint at {checkpoint}: skipping prediction[/yellow]")
    rep.seconds["total"] = time.perf_counter() - t0
    console.print(f"\ndone in {rep.seconds['total']:.1f} s")
    return rep


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
