"""The one composer: a run over the tiles of a region (or of every glacier) and years, on a Dask client.

Work is the global tile grid. Each tile-year is one unit: search -> cube of the tile plus its model
margin -> `infer.predict_tile` -> `store.write_tile` -> completion record. Units are submitted to the
cluster as separate small graphs, in waves with backpressure (at most `tiles_in_flight` at once), so
the graph never grows with the region, resources annotations survive (no fusion across tiles), and a
failing tile is retried, then recorded with its reason while the others go on. The next tiles' searches
and graphs are built ahead in client threads while the cluster computes, so the client does not cap a
big cluster's throughput. Resuming needs no memory of earlier runs: the store's completion records say
what is done, and a rerun does the rest.
Once all tiles of a year are done, OBIA outlines of the region go into the inventory (the annual update).

    cfg = pipeline.load_config("run.toml")
    report = pipeline.run(cfg)              # a local cluster sized to the machine, unless cfg.cluster says otherwise
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np

from glacier_stac import store as S
from glacier_stac.cluster import ClusterSpec, has_gpu_workers, task_attempts
from glacier_stac.redact import redact
from glacier_stac.version import __version__

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "unet.pt"
PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"
GRAPH_THREADS = 8  # client threads building the next tiles' search and graphs while the cluster computes


class ConfigError(ValueError):
    """A run configuration that cannot be used: the message names the key and the bad value."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RunConfig:
    """A validated run: what to map (AOI or reference outlines), which years, with what, and where to put it."""

    years: tuple[int, ...]
    store: str
    aoi: str | None = None  # bbox "minx,miny,maxx,maxy", GeoJSON or vector file
    reference: str | None = None  # glacier outlines (RGI-like): tiles around every glacier, ids kept
    buffer_m: float = 500.0
    sensors: tuple[str, ...] | None = None
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    views: int = 1  # test-time views each patch is averaged over (infer.dihedral_views): accuracy for forwards
    catalog: str = PLANETARY_COMPUTER
    sign: str = "auto"  # "auto" (Planetary Computer URLs are signed), "planetary-computer" or "none"
    max_cloud: float = 80.0
    inventory: str | None = None  # GeoParquet path; None: predictions only
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    keep_features: bool = True  # the cube features OBIA reads, stored beside the predictions (store.write)
    tiles_in_flight: int = 4
    retries: int = 2
    report: str | None = None  # JSON report path; default beside the inventory, else ./glacier-stac-report.json
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    def describe(self) -> dict:
        """The configuration as stored with the outputs: no storage options, credentials redacted."""
        d = asdict(self)
        d.pop("storage_options")
        return json.loads(redact(json.dumps(d, default=str)))


_SECTIONS = {"run", "aoi", "catalog", "store", "inventory", "cluster"}


def _get(d: Mapping, key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in d:
        return default
    v = d[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ConfigError(f"{where}.{key} must be {names}, got {v!r}")
    return v


def _years(v: Any, where: str) -> tuple[int, ...]:
    from glacier_stac.catalog import check_years

    if isinstance(v, str):
        parts = v.replace(" ", "").split("-") if "-" in v.strip("-") else [v]
        try:
            nums = [int(p) for p in parts if p]
        except ValueError:
            raise ConfigError(f"{where} must be a list of years or 'YYYY-YYYY', got {v!r}") from None
        v = list(range(nums[0], nums[-1] + 1)) if len(nums) == 2 else nums
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(y, int) and not isinstance(y, bool) for y in v):
        raise ConfigError(f"{where} must be a non-empty list of years, got {v!r}")
    try:
        return tuple(check_years(sorted(set(v))))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_config(raw: Mapping[str, Any], base: Path | None = None) -> RunConfig:
    """A RunConfig from the TOML document's tables; every error names the key (`section.key`) and the value."""
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; expected {sorted(_SECTIONS)}")
    for sec in raw:
        if not isinstance(raw[sec], Mapping):
            raise ConfigError(f"[{sec}] must be a table, got {raw[sec]!r}")
    allowed = {"run": {"years", "sensors", "checkpoint", "views", "tiles_in_flight", "retries", "report"},
               "aoi": {"bbox", "file", "inventory", "buffer_m"},
               "catalog": {"url", "sign", "max_cloud"}, "store": {"url", "storage_options", "keep_features"},
               "inventory": {"url"},
               "cluster": {f.name for f in fields(ClusterSpec)}}
    for sec, keys in allowed.items():
        extra = set(raw.get(sec, {})) - keys
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(f'{sec}.{k}' for k in extra)}; [{sec}] takes {sorted(keys)}")
    run, aoi_t = raw.get("run", {}), raw.get("aoi", {})
    if "years" not in run:
        raise ConfigError("run.years is required (e.g. years = [2021, 2023] or years = \"2019-2023\")")
    years = _years(run["years"], "run.years")

    def rel(p: str | None) -> str | None:
        if p is None or "://" in p or base is None or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    bbox = _get(aoi_t, "bbox", (str, list), "aoi")
    file = _get(aoi_t, "file", str, "aoi")
    ref = _get(aoi_t, "inventory", str, "aoi")
    given = [k for k, v in (("aoi.bbox", bbox), ("aoi.file", file), ("aoi.inventory", ref)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of aoi.bbox, aoi.file, aoi.inventory (got {given or 'none'})")
    if isinstance(bbox, list):
        if len(bbox) != 4 or not all(isinstance(b, int | float) for b in bbox):
            raise ConfigError(f"aoi.bbox must be [minx, miny, maxx, maxy] in degrees, got {bbox!r}")
        bbox = ",".join(str(b) for b in bbox)
    buffer_m = float(_get(aoi_t, "buffer_m", (int, float), "aoi", 500.0))
    if not math.isfinite(buffer_m) or buffer_m < 0:
        raise ConfigError(f"aoi.buffer_m must be a finite number >= 0, got {buffer_m!r}")
    sensors = _get(run, "sensors", list, "run")
    if sensors is not None:
        from glacier_stac import sensors as sensor_records

        try:
            sensor_records.resolve(sensors)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"run.sensors: {e}") from None
    ckpt = _get(run, "checkpoint", str, "run", str(DEFAULT_CHECKPOINT))
    if "/" not in ckpt and "." not in ckpt and DEFAULT_CHECKPOINT.with_name(f"{ckpt}.pt").is_file():
        ckpt = str(DEFAULT_CHECKPOINT.with_name(f"{ckpt}.pt"))  # a shipped checkpoint by name
    else:
        ckpt = rel(ckpt)
    if "://" not in ckpt and not Path(ckpt).is_file():
        raise ConfigError(f"run.checkpoint {ckpt!r} is not a file")
    views = _get(run, "views", int, "run", 1)
    if views not in (1, 2, 4, 8):  # infer.VIEWS (not imported here: reading a config needs no torch)
        raise ConfigError(f"run.views must be 1, 2, 4 or 8 (test-time views per patch), got {views!r}")
    tif = _get(run, "tiles_in_flight", int, "run", 4)
    retries = _get(run, "retries", int, "run", 2)
    if tif < 1:
        raise ConfigError(f"run.tiles_in_flight must be >= 1, got {tif}")
    if retries < 0:
        raise ConfigError(f"run.retries must be >= 0, got {retries}")
    st = raw.get("store", {})
    url = _get(st, "url", str, "store")
    if not url:
        raise ConfigError("store.url is required (a local path or s3://bucket/prefix.zarr)")
    cat = raw.get("catalog", {})
    max_cloud = float(_get(cat, "max_cloud", (int, float), "catalog", 80.0))
    if not 0 <= max_cloud <= 100:
        raise ConfigError(f"catalog.max_cloud must be within 0..100, got {max_cloud}")
    cl = dict(raw.get("cluster", {}))
    if cl.get("kind") == "scheduler" and not cl.get("scheduler"):
        if not os.environ.get("DASK_SCHEDULER_ADDRESS"):
            raise ConfigError("cluster.kind = \"scheduler\" needs cluster.scheduler, --scheduler or "
                              "DASK_SCHEDULER_ADDRESS (as the Dask operator sets it)")
        cl["scheduler"] = os.environ["DASK_SCHEDULER_ADDRESS"]
    sign = _get(cat, "sign", str, "catalog", "auto")
    if sign not in ("auto", "planetary-computer", "none"):
        raise ConfigError(f"catalog.sign must be auto, planetary-computer or none, got {sign!r}")
    try:
        cluster_spec = ClusterSpec(**cl)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[cluster]: {e}") from None
    inv = raw.get("inventory", {})
    inv_url = rel(_get(inv, "url", str, "inventory"))
    if inv_url is not None and "://" in inv_url and not inv_url.startswith("file://"):
        raise ConfigError(f"inventory.url {inv_url!r}: the inventory is updated under a file lock and needs a local "
                          "or mounted path (object storage is supported for the prediction store only)")
    if inv_url is not None and not inv_url.endswith(".parquet"):
        inv_url = str(Path(inv_url) / "inventory.parquet")
    return RunConfig(years=years, store=rel(url), aoi=rel(file) if file else bbox, reference=rel(ref),
                     buffer_m=buffer_m, sensors=tuple(sensors) if sensors else None, checkpoint=ckpt, views=views,
                     catalog=_get(cat, "url", str, "catalog", PLANETARY_COMPUTER), sign=sign, max_cloud=max_cloud,
                     inventory=inv_url, storage_options=dict(_get(st, "storage_options", dict, "store", {})),
                     keep_features=_get(st, "keep_features", bool, "store", True),
                     tiles_in_flight=tif, retries=retries, report=rel(_get(run, "report", str, "run")),
                     cluster=cluster_spec)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run configuration (relative paths are relative to the file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" if not p.exists() else f"config {p} is not a file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {p} is not valid TOML: {e}") from None
    return parse_config(raw, base=p.parent)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TileUnit:
    """One tile of the global grid to map (its zone, lattice position and GeoBox)."""

    zone: str  # "EPSG:32606"
    key: S.TileKey
    geobox: Any  # odc.geo GeoBox of the tile core


@dataclass(frozen=True)
class Plan:
    """What a run will do, before it reads a pixel."""

    tiles: tuple[TileUnit, ...]
    years: tuple[int, ...]
    done: dict[int, frozenset[str]]  # year -> tile ids already complete in the store
    margin: int

    @property
    def todo(self) -> int:
        return sum(1 for y in self.years for t in self.tiles if t.key.id not in self.done.get(y, ()))

    def pixels(self) -> int:
        return sum(int(np.prod(t.geobox.shape)) for t in self.tiles) * len(self.years)


def plan_tiles(cfg: RunConfig) -> list[TileUnit]:
    """Tiles of the global grid over the AOI, or around every reference glacier (each in its centroid's zone)."""
    from odc.geo.crs import CRS

    from glacier_stac import catalog, grid

    units = []
    if cfg.reference is not None:
        import geopandas as gpd

        try:
            outlines = gpd.read_file(cfg.reference) if not cfg.reference.endswith(".parquet") \
                else gpd.read_parquet(cfg.reference)
        except Exception as e:  # noqa: BLE001 - any reader error is a bad reference file for the user
            raise ConfigError(f"aoi.inventory {cfg.reference!r} cannot be read: {e}") from None
        table = grid.plan_tiles(outlines, buffer_m=cfg.buffer_m)
        for row in table.itertuples():
            gs = grid.tile_grid(CRS(row.crs))
            gb = gs.tile_geobox((row.ix, row.iy))
            units.append(_unit(str(row.crs), gb))
    else:
        aoi = catalog.load_aoi(cfg.aoi)
        for t in grid.tiles_for(aoi.geometry):
            units.append(_unit(t.crs, t.geobox))
    return sorted(units, key=lambda u: (u.zone, u.key.trow, u.key.tcol))


def _unit(zone: str, gb) -> TileUnit:
    from glacier_stac.grid import global_origin

    r, c = global_origin(gb)
    z = S.Zone(zone)
    return TileUnit(zone, z.tile_of(r, c), gb)


def make_plan(cfg: RunConfig) -> Plan:
    from glacier_stac.infer import tile_margin

    tiles = tuple(plan_tiles(cfg))
    loc = S.Location.of(cfg.store, cfg.storage_options)
    done: dict[int, frozenset[str]] = {}
    if S.store_grid(loc) is not None:
        for y in cfg.years:
            done[y] = frozenset(t for z in {u.key.zone for u in tiles} for t in S.done_tiles(loc, z, y))
    return Plan(tiles, cfg.years, done, tile_margin(cfg.checkpoint))


# --------------------------------------------------------------------------- one tile-year


@dataclass(frozen=True)
class TileOutcome:
    """How one tile-year ended (records, not tuples, in the report)."""

    tile: str
    year: int
    status: str  # done | skipped | failed | empty
    seconds: float = 0.0
    valid_px: int = 0
    reason: str = ""
    attempts: int = 0  # times the tile's most-tried task ran on a worker (1 + Dask retries); 0: never submitted
    graph_s: float = 0.0  # on the client: search and building the tile's graph (workers may idle meanwhile)


def cube_features(cfg: RunConfig, checkpoint_features: Sequence[str]) -> list[str]:
    """The features a tile's cube computes: those its sensors make that the checkpoint or OBIA reads. A derived
    feature no one reads (the lit anomalies for a checkpoint without them: ~0.9 s a tile each) is not computed;
    one the checkpoint lacks is left for predict to name."""
    from glacier_stac import cube, obia
    from glacier_stac import sensors as sensor_records

    made = [f for s in sensor_records.resolve(list(cfg.sensors) if cfg.sensors else None) for f in s.features]
    made += [d.name for d in cube.derived_for(made)]
    reads = set(checkpoint_features) | (set(obia.USED_FEATURES) if cfg.keep_features else set())
    return [f for f in made if f in reads]


def tile_graph(unit: TileUnit, year: int, cfg: RunConfig, cat, run_id: str, margin: int, digest: str,
               resources: Mapping[str, float] | None = None, store_lock: threading.Lock | None = None,
               history: int = 0, history_sensors: Sequence[str] | None = None, keep: Sequence[str] | None = None):
    """The lazy work of one tile-year (search happens here, on the client): a Delayed returning a TileRecord.

    None when the catalog has no scenes over the tile for the year (recorded, not an error). `store_lock`:
    held around `store.write`, which may create the zone's arrays (two threads creating them at once
    collide), when graphs are built in several threads. `history`: the seasons before the year the
    checkpoint's history features read (`cube.history_for`), searched and joined too, for the sensors
    `history_sensors` names (`cube.history_sensors`; None: every sensor). `keep`: the features the tile's cube
    computes (`cube_features`; None: every one).
    """
    from glacier_stac import catalog, cube, obia
    from glacier_stac import sensors as sensor_records
    from glacier_stac.infer import predict_tile

    ctx = unit.geobox.pad(margin)
    aoi = catalog.load_aoi(ctx.extent.to_crs("EPSG:4326").geom.__geo_interface__, name=unit.key.id)
    before = list(range(max(year - history, catalog.FIRST_YEAR), year))  # none before the satellite era
    wanted = list(cfg.sensors) if cfg.sensors else None
    again = {n: before for n in (history_sensors if history_sensors is not None
                                 else [s.name for s in sensor_records.resolve(wanted)])} if before else None
    found = catalog.search(aoi, [year], wanted, catalog=cat, missing="record", max_cloud=cfg.max_cloud,
                           more_years=again)
    if not any(found.for_year(year).values()):
        return None
    # an unreadable asset fails the tile's task (retried, then recorded failed with its reason): a tile read
    # as no-data where an asset failed would be recorded done, and a rerun would never retry it
    data = cube.build(found, ctx, year, sensors=list(cfg.sensors) if cfg.sensors else None, on_read_error="raise",
                      history=history, keep=keep)
    # GPU=1 where GPU workers exist
    pred = predict_tile(data, cfg.checkpoint, margin=margin, resources=resources, views=cfg.views)
    # the features OBIA reads, kept beside the predictions: the inventory step gets elevations and its rules
    # from the store instead of building every cube again
    kept = [f for f in obia.USED_FEATURES if f in data["feature"].values] if cfg.keep_features else []
    core = data.sel(feature=kept).isel(y=slice(margin, data.sizes["y"] - margin),
                                       x=slice(margin, data.sizes["x"] - margin)) if kept else None
    with store_lock if store_lock is not None else contextlib.nullcontext():
        wp = S.write(pred, year, S.Location.of(cfg.store, cfg.storage_options), run_id=run_id,
                     checkpoint={"model": str(pred.attrs.get("model")), "digest": digest},
                     items={k: v.split(",") for k, v in data.attrs.get("items", {}).items()}, features=core)
    task = wp.tasks[0] if wp.tasks else None
    if task is None or resources is not None:  # GPU workers: the graph keeps its GPU=1 predict task apart
        return task
    return dask.delayed(run_tile_task, pure=False)(OpaqueGraph(task), f"{unit.key.id}/{year}")


TILE_TASKS_TOPIC = "glacier_stac.tile_tasks"  # worker events: seconds per task prefix inside each one-task tile


class OpaqueGraph:
    """A tile's lazy work, carried inside one task: Dask does not look inside (its tasks are not the cluster's)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj


def tile_threads() -> int:
    """Threads for a one-task tile's inner graph: the cores this worker thread may use, the share cluster.py's
    model plugin gives torch (cores / worker threads); 1 off a worker or without the plugin.

    Why: the model's forward already runs on that share; a tile's reads and compositing on one thread beside
    it would leave the rest idle for most of the tile (COG decoding is most of a tile's non-model time).
    """
    from glacier_stac.cluster import MODEL_PLUGIN

    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(MODEL_PLUGIN)
    except ValueError:  # not in a worker's task
        return 1
    return max(1, int(getattr(plugin, "torch_threads", 1) or 1))


def run_tile_task(graph: OpaqueGraph, name: str) -> Any:
    """On a CPU-only cluster, one tile-year (cube, predict, store write) as one task, run inside it by Dask's
    local scheduler on `tile_threads()` threads (the synchronous scheduler with one).

    Why: where reading and inference share the same cores nothing is gained by spreading a tile's ~430 small
    tasks over the cluster, and each costs a scheduler round trip, worker bookkeeping and a wait in the ready
    queue (on a busy machine, seconds per tile); one task also frees a tile's intermediates as soon as they are
    used, and a retry reruns the tile whole. Parallelism comes from tiles in flight, and within a tile from the
    worker thread's share of the cores. The seconds per task prefix inside (thread-seconds: summed over the
    inner threads), when each inner task started and ended, and the task's wall seconds are sent to the
    scheduler's event log (TILE_TASKS_TOPIC), where benchmarks read the stages.
    """
    from dask.callbacks import Callback
    from dask.utils import key_split

    seconds: dict[str, float] = {}
    intervals: list[tuple[str, float, float]] = []  # (prefix, start, end) per inner task, from the task's start
    started: dict[Any, float] = {}
    t0 = time.perf_counter()

    def pre(key, dsk, state) -> None:
        started[key] = time.perf_counter()

    def post(key, result, dsk, state, worker_id) -> None:
        k, now = key_split(key), time.perf_counter()
        start = started.pop(key, now)
        seconds[k] = seconds.get(k, 0.0) + now - start
        intervals.append((k, round(start - t0, 4), round(now - t0, 4)))

    threads = tile_threads()
    how = {"scheduler": "sync"} if threads == 1 else {"scheduler": "threads", "num_workers": threads}
    with Callback(pretask=pre, posttask=post):
        (out,) = dask.compute(graph.obj, optimize_graph=False, **how)
    with contextlib.suppress(Exception):  # not on a worker (a test calling it directly): nothing to tell
        from distributed import get_worker

        get_worker().log_event(TILE_TASKS_TOPIC, {"tile": name, "seconds": seconds, "intervals": intervals,
                                                  "threads": threads, "wall": time.perf_counter() - t0})
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    """What a run did: written as JSON beside the outputs."""

    config: dict
    software_version: str = __version__
    started: str = ""
    wall_s: float = 0.0
    tiles: list[TileOutcome] = field(default_factory=list)
    years_complete: list[int] = field(default_factory=list)
    inventory: dict = field(default_factory=dict)
    dashboard: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # client-side seconds: setup, graphs, inventory

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0, "empty": 0}
        for t in self.tiles:
            out[t.status] += 1
        return out

    def to_dict(self) -> dict:
        done_px = sum(t.valid_px for t in self.tiles if t.status == "done")
        return {"software_version": self.software_version, "started": self.started, "wall_s": self.wall_s,
                "counts": self.counts(), "valid_pixels": done_px,
                "mpx_per_s": done_px / 1e6 / self.wall_s if self.wall_s else 0.0,
                "failures": [asdict(t) for t in self.tiles if t.status == "failed"],
                "tiles": [asdict(t) for t in self.tiles], "years_complete": self.years_complete,
                "inventory": self.inventory, "dashboard": self.dashboard, "timings": self.timings,
                "config": self.config}


def _report_path(cfg: RunConfig) -> Path:
    if cfg.report:
        return Path(cfg.report)
    if cfg.inventory and "://" not in cfg.inventory:
        return Path(cfg.inventory).with_name("run-report.json")
    if "://" not in cfg.store:
        return Path(cfg.store).parent / "run-report.json"
    return Path("glacier-stac-report.json")


def _iter_units(plan: Plan) -> Iterator[tuple[TileUnit, int]]:
    for year in plan.years:
        for unit in plan.tiles:
            yield unit, year


def run_on(client, cfg: RunConfig, *, plan: Plan | None = None,
           progress: Callable[[TileOutcome, int, int], None] | None = None) -> Report:
    """Map every tile-year of the plan on `client`, in waves; then outlines and inventory per complete year."""
    from distributed import as_completed

    from glacier_stac import catalog, cube
    from glacier_stac import sensors as sensor_records
    from glacier_stac.models.checkpoint import load as load_checkpoint

    t0 = time.perf_counter()
    plan = plan or make_plan(cfg)
    rep = Report(config=cfg.describe(), started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 dashboard=getattr(client, "dashboard_link", None))
    loc = S.Location.of(cfg.store, cfg.storage_options)
    run_id = S.record_run(loc, {"config": cfg.describe()})
    ckpt = load_checkpoint(cfg.checkpoint)
    digest = ckpt.digest()
    history = cube.history_for(ckpt.features)  # earlier seasons its features read, searched per tile-year
    wanted = sensor_records.resolve(list(cfg.sensors) if cfg.sensors else None)
    # ... of only the sensors those come from (the static DEM is every season's)
    again = [s.name for s in cube.history_sensors(ckpt.features, wanted) if s.per_acquisition]
    keep = cube_features(cfg, ckpt.features)
    cat = catalog.open_catalog(cfg.catalog, signer=None if cfg.sign == "none" else cfg.sign)
    resources = {"GPU": 1} if has_gpu_workers(client) else None
    total = len(plan.tiles) * len(plan.years)
    rep.timings["setup_s"] = time.perf_counter() - t0
    pending = as_completed()
    meta: dict[Any, tuple[TileUnit, int, float, list, float]] = {}
    units = _iter_units(plan)
    in_flight = 0
    # the next tiles' search and graphs are built ahead, in threads, while the cluster computes: one client
    # building them one at a time (seconds each: catalog round trips, the store's zone check) would cap a big
    # cluster at a few tiles a second. Searches and cube/predict graphs build side by side (annotations are
    # context-local); the store's part holds a lock (it may create the zone); tiles are submitted in plan order
    ahead: deque[tuple[TileUnit, int, float, Future]] = deque()
    lookahead = cfg.tiles_in_flight
    pool = ThreadPoolExecutor(max_workers=min(lookahead, GRAPH_THREADS), thread_name_prefix="tile-graph")
    store_lock = threading.Lock()

    def finish(outcome: TileOutcome) -> None:
        rep.tiles.append(outcome)
        if progress:
            progress(outcome, len(rep.tiles), total)

    def build(unit: TileUnit, year: int) -> tuple[Any, float]:
        t = time.perf_counter()
        task = tile_graph(unit, year, cfg, cat, run_id, plan.margin, digest, resources, store_lock, history, again,
                          keep)
        return task, time.perf_counter() - t

    def top_up() -> None:
        while len(ahead) < lookahead:
            nxt = next(units, None)
            if nxt is None:
                return
            unit, year = nxt
            if unit.key.id in plan.done.get(year, ()):
                finish(TileOutcome(unit.key.id, year, "skipped"))
                continue
            ahead.append((unit, year, time.perf_counter(), pool.submit(build, unit, year)))

    def submit_next() -> bool:
        nonlocal in_flight
        top_up()
        while ahead:
            unit, year, t, built = ahead.popleft()
            top_up()
            try:
                task, graph_s = built.result()
            except Exception as e:  # noqa: BLE001 - one tile's bad input must not stop the others
                finish(TileOutcome(unit.key.id, year, "failed", time.perf_counter() - t,
                                   reason=redact(f"{type(e).__name__}: {e}"), graph_s=time.perf_counter() - t))
                continue
            if task is None:
                finish(TileOutcome(unit.key.id, year, "empty", time.perf_counter() - t,
                                   reason="no scenes over the tile for the year", graph_s=graph_s))
                continue
            fut = client.compute(task, retries=cfg.retries, optimize_graph=False)
            # the tile's seconds: its graph, then the cluster (not the wait for a free slot in between)
            meta[fut] = (unit, year, time.perf_counter() - graph_s, list(task.__dask_graph__().keys()), graph_s)
            pending.add(fut)
            in_flight += 1
            return True
        return False

    try:
        while in_flight < cfg.tiles_in_flight and submit_next():
            pass
        for fut in pending:
            unit, year, t, keys, graph_s = meta.pop(fut)
            in_flight -= 1
            attempts = task_attempts(client, keys)
            if fut.status == "finished":
                rec = fut.result()
                finish(TileOutcome(unit.key.id, year, "done", time.perf_counter() - t, rec.valid_px,
                                   attempts=attempts, graph_s=graph_s))
            else:
                exc = fut.exception()
                finish(TileOutcome(unit.key.id, year, "failed", time.perf_counter() - t,
                                   reason=redact(f"{type(exc).__name__}: {exc}"), attempts=attempts, graph_s=graph_s))
            fut.release()
            while in_flight < cfg.tiles_in_flight and submit_next():
                pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    failed = {(t.tile, t.year) for t in rep.tiles if t.status == "failed"}
    rep.years_complete = [y for y in plan.years if not any(fy == y for _, fy in failed)]
    rep.timings["graph_s"] = sum(o.graph_s for o in rep.tiles)
    t_inv = time.perf_counter()  # graph_s: summed over tiles, whose graphs are built side by side
    if cfg.inventory:
        rep.inventory = update_inventory(cfg, plan, rep.years_complete)
    rep.timings["inventory_s"] = time.perf_counter() - t_inv
    rep.wall_s = time.perf_counter() - t0
    path = _report_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep.to_dict(), indent=1, default=str))
    log.info("run report: %s", path)
    return rep


def update_inventory(cfg: RunConfig, plan: Plan, years: Sequence[int]) -> dict:
    """OBIA outlines of each complete year into the inventory (a year already there is skipped, not redone).

    All zones of a year go in at once, so a glacier across a zone boundary is joined into one outline.
    """
    from glacier_stac import inventory

    out = {}
    Path(cfg.inventory).parent.mkdir(parents=True, exist_ok=True)
    aoi = cfg.aoi if cfg.reference is None else None
    for year in years:
        if cfg.storage_options:  # object storage with explicit options: hand over each zone's opened Dataset
            loc = S.Location.of(cfg.store, cfg.storage_options)
            preds = [S.open_predictions(loc, zone=S.zone_name(z), years=[year], aoi=aoi)
                     for z in sorted({u.zone for u in plan.tiles})]
            res = [inventory.add_year(cfg.inventory, year, p, reference=cfg.reference) for p in preds][-1]
        else:
            res = inventory.add_year(cfg.inventory, year, cfg.store, reference=cfg.reference, aoi=aoi)
        out[str(year)] = {"glaciers_added": res.added, "skipped": res.skipped}
    return out


def run(cfg: RunConfig, *, scheduler: str | None = None, console=None) -> Report:
    """`run_on` with a client from the configured cluster (or `scheduler`), a progress bar and a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from glacier_stac import cluster

    console = console or Console(stderr=True)
    if scheduler:
        cfg = replace(cfg, cluster=replace(cfg.cluster, kind="scheduler", scheduler=scheduler))
    plan = make_plan(cfg)
    with cluster.connect(cfg.cluster) as client:
        console.print(f"dashboard: {client.dashboard_link}" if getattr(client, "dashboard_link", None)
                      else "dashboard: off")
        with Progress(TextColumn("[bold]tiles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console) as bar:
            task = bar.add_task("", total=len(plan.tiles) * len(plan.years))

            def tick(o: TileOutcome, n: int, total: int) -> None:
                bar.update(task, completed=n, description=f"{o.tile} {o.year} {o.status}")

            return run_on(client, cfg, plan=plan, progress=tick)


# --------------------------------------------------------------------------- dry run


@dataclass(frozen=True)
class Measured:
    """Per-tile figures a dry run extrapolates from (benchmarks/results/scaling*.json, largest size; the
    capacity estimate in benchmarks/README.md is computed from the same record by `estimate`)."""

    seconds_per_tile: float = 30.0  # a worker's wall seconds per tile-year (wall x workers / tiles)
    cores_per_worker: float = 2.0  # the cores that worker held (its machine's cores / workers)
    model_share: float = 0.5  # of those seconds, the bare model's (model_only / wall): inference on the CPU
    source: str = "default: no benchmark result"

    @classmethod
    def from_result(cls, d: Mapping[str, Any], source: str) -> Measured:
        """From a scaling benchmark's JSON (older results without a breakdown keep the default model share)."""
        spt = float(d["seconds_per_tile"])
        cores = float(d.get("machine", {}).get("cpus", 2)) / max(int(d.get("workers", 1)), 1)
        per = d.get("per_tile_s") or {}
        share = per.get("model_only", 0.0) / per["wall_x_workers"] if per.get("wall_x_workers") else cls.model_share
        return cls(spt, cores, min(max(share, 0.0), 1.0), source)


@dataclass(frozen=True)
class CostAssumptions:
    """What a dry run (and the README's capacity estimate) assumes beyond the measured per-tile seconds.

    The reference cluster is deploy/'s default: 16 x Standard_D16s_v5 (192 reading cores) and 2 x
    Standard_NC8as_T4_v3 (one T4 each), plus a D4s_v5 for the scheduler, in Azure West Europe beside the data.
    """

    remote_read_factor: float = 2.0  # reading and compositing real COGs over HTTPS vs synthetic ones on local disk
    gpu_seconds_per_tile: float = 0.05  # a T4: ~98 GFLOP at 40 % of 8.1 TFLOP/s, plus the host-to-device copy
    cluster_cores: int = 192  # reading threads: 48 workers x 4 on 16 D16s_v5 nodes (the rest for the OS and Dask)
    cpu_nodes: int = 16
    gpus: int = 2
    network_bytes_per_s: float = 8e9  # aggregate from Blob storage (16 nodes x 4 Gbit/s)
    tail_factor: float = 1.3  # waves' tails and retries
    startup_hours: float = 10 / 60  # nodes and image pulls
    usd_per_cpu_node_hour: float = 0.90  # D16s_v5, pay-as-you-go list price
    usd_per_gpu_node_hour: float = 0.85  # NC8as_T4_v3
    usd_fixed_per_hour: float = 0.23  # D4s_v5: scheduler and runner


def estimate(tile_years: int, measured: Measured, bytes_to_read: float | None = None,
             assume: CostAssumptions = CostAssumptions()) -> dict[str, Any]:
    """Hours and dollars for `tile_years` from the measured per-tile seconds: core-hours of a CPU-only run, and
    of a run with inference on GPU workers (reading on CPUs), with its wall time and price on the reference
    cluster. Why one function: `dry_run` and the README's capacity estimate must give the same figures."""
    core_s = measured.seconds_per_tile * measured.cores_per_worker  # a worker's cores are paid while it works
    read_core_s = core_s * (1 - measured.model_share) * assume.remote_read_factor
    model_core_s = core_s * measured.model_share
    read_h = tile_years * read_core_s / 3600
    gpu_h = tile_years * assume.gpu_seconds_per_tile / 3600
    rates = {"readers": read_h / assume.cluster_cores, "gpus": gpu_h / assume.gpus}
    if bytes_to_read is not None:
        rates["network"] = bytes_to_read / assume.network_bytes_per_s / 3600
    wall_h = max(rates.values()) * assume.tail_factor + assume.startup_hours
    usd_per_h = (assume.cpu_nodes * assume.usd_per_cpu_node_hour + assume.gpus * assume.usd_per_gpu_node_hour
                 + assume.usd_fixed_per_hour)
    return {"tile_years": tile_years, "measured": asdict(measured), "assumptions": asdict(assume),
            "core_seconds_per_tile": {"reading": round(read_core_s, 2), "model_on_cpu": round(model_core_s, 2)},
            "cpu_only_core_hours": round(read_h + tile_years * model_core_s / 3600, 2),
            "reading_core_hours": round(read_h, 2), "gpu_hours": round(gpu_h, 3),
            "limit": max(rates, key=rates.get), "wall_hours_reference_cluster": round(wall_h, 3),
            "cost_usd_reference_cluster": round(wall_h * usd_per_h, 2)}


def dry_run(cfg: RunConfig, measured: Measured | None = None) -> dict:
    """The plan without computing: tiles, pixels, scenes and bytes to read, estimated time and cost.

    Scenes are counted by searching the catalog once per zone over the tiles' extent; bytes from the
    sensors' asset resolutions and dtypes; time and cost by `estimate` from the measured per-tile seconds
    of the run's checkpoint (`measured_per_tile`).
    """
    from odc.geo.geom import unary_union

    from glacier_stac import catalog, cube
    from glacier_stac import sensors as sensor_records
    from glacier_stac.models.checkpoint import load as load_checkpoint

    plan = make_plan(cfg)
    wanted = sensor_records.resolve(list(cfg.sensors) if cfg.sensors else None)
    ckpt_features = load_checkpoint(cfg.checkpoint).features
    history = cube.history_for(ckpt_features)  # each tile-year also reads these seasons of some sensors
    again = {s.name for s in cube.history_sensors(ckpt_features, wanted)}  # none without history features
    measured = measured or measured_per_tile(cfg.checkpoint)
    cat = catalog.open_catalog(cfg.catalog, signer=None if cfg.sign == "none" else cfg.sign)
    scenes: dict[str, int] = {}
    bytes_read = 0.0
    for zone in sorted({u.zone for u in plan.tiles}):
        ext = unary_union([u.geobox.extent for u in plan.tiles if u.zone == zone]).to_crs("EPSG:4326")
        aoi = catalog.load_aoi(ext.geom.__geo_interface__, name=zone)
        found = catalog.search(aoi, list(plan.years), list(cfg.sensors) if cfg.sensors else None, catalog=cat,
                               missing="record", max_cloud=cfg.max_cloud)
        for s in found.summary():
            scenes[s["sensor"]] = scenes.get(s["sensor"], 0) + int(s.get("items", 0))
    tile_px = sum(int(np.prod(u.geobox.shape)) for u in plan.tiles)
    for rec in wanted:
        n = scenes.get(rec.name, 0)
        per_px = sum(np.dtype(b.dtype).itemsize * (10.0 / b.resolution) ** 2 for b in rec.data_bands)
        # each scene covers ~the tiles it overlaps; a tile-year reads its share of each acquisition, and of
        # the earlier seasons' where the checkpoint's history features come from this sensor
        seasons = 1 + (history if rec.name in again and rec.per_acquisition else 0)
        bytes_read += per_px * tile_px * len(plan.years) * seasons * min(n / max(len(plan.years), 1), 24) / 2
    todo = plan.todo
    est = estimate(todo, measured, bytes_read * todo / max(len(plan.tiles) * len(plan.years), 1))
    return {"tiles": len(plan.tiles), "years": list(plan.years), "tile_years_todo": todo,
            "tile_years_done": len(plan.tiles) * len(plan.years) - todo, "pixels": plan.pixels(),
            "history_seasons": history,
            "scenes": scenes, "bytes_to_read_estimate": int(bytes_read),
            "seconds_per_tile_measured": measured.seconds_per_tile, "cpu_hours_estimate": est["cpu_only_core_hours"],
            "cost_usd_estimate": est["cost_usd_reference_cluster"], "estimate": est,
            "margin_px": plan.margin, "computed_over_output": ((1024 + 2 * plan.margin) / 1024) ** 2}


RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def measured_per_tile(checkpoint: str | os.PathLike[str] | None = None, results: Path = RESULTS_DIR) -> Measured:
    """The per-tile figures of the latest scaling benchmark of `checkpoint` (results/scaling*.json whose
    `checkpoint` is its file name), else of any scaling result, else the store benchmark's, else defaults."""
    found: list[tuple[Path, dict]] = []
    for p in sorted(results.glob("scaling*.json")) + [results / "store_write.json"]:
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "seconds_per_tile" in d:
            found.append((p, d))
    name = Path(checkpoint).name if checkpoint else None
    for p, d in sorted(found, key=lambda f: (f[1].get("checkpoint") != name, f[0].name != "scaling.json")):
        return Measured.from_result(d, f"{p.name} ({d.get('checkpoint', 'store write')})")
    return Measured()
