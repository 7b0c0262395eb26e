"""The whole pipeline on 1x, 4x and 16x a base area: time, worker memory, overheads (issue 12).

    python benchmarks/scaling.py [--quick] [--repeat 3] [--checkpoint cnn5|unet|PATH] [--workers N]
        [--block-cache-mb MB]

Synthetic worlds of 4, 8 and 16 km a side (16, 64, 256 km2), placed on the global tile grid so that they
cover 1, 2 and 4 tiles (full runs add 32 km, 16 tiles), are generated once (cached under --worlds), served
by `rustac serve` on loopback, and mapped for one year by `pipeline.run_on` on a local cluster of
`--workers` worker processes (1 thread each), exactly as `glacier-stac run` does. Before the clock starts
each worker imports the stack and builds the model (a one-off cost per worker, reported as warmup_s).
Measured per size, in the same run:

- wall_s: the run's wall time (search, cube, predict, Zarr write; no inventory);
- stages_s: where it went: worker compute seconds per stage (cube: COG reads, compositing, features;
  predict; store_write) and transfers from the Dask task stream, the client's search + graph seconds,
  and the workers' idle seconds (wall x workers minus the rest);
- peak_worker_rss_mb: the largest resident set of any worker process, sampled every 0.2 s (psutil);
- model_only_s: the bare model's forward pass over the same patches (one tile + margin per done tile),
  on the same workers and threads, as one task per tile, scheduled as Dask places them: the busiest worker's
  seconds (what the cluster would take for the model alone), measured just before and just after the run
  (the mean: load on a shared machine moves it several-fold within minutes);
- per_tile_s / cpu_only_ceiling: the bare model against the wall seconds of each stage inside a tile;
- computed / output pixels: model pixels pushed per output pixel written (halo cost).

Figures against the issue's targets: peak_memory_ratio (largest/smallest peak RSS, <= 1.25),
end_to_end_over_model_only (model_only_s / wall_s at the largest size, >= 0.75),
computed_over_output_pixels (<= 1.3), time_linearity_r2 (wall_s against tiles, least squares, >= 0.98),
seconds_per_tile (worker-seconds per tile at the largest size: wall_s x workers / tiles, what
`pipeline.dry_run` extrapolates from). With --repeat N each figure is the median over the N repeats, with
its worst beside it (`worst`). --quick runs one worker by default: with two and 1-4 tiles a lone tile
leaves a worker idle, and wall time is a step function of tiles, not a line.
Writes benchmarks/results/scaling.json (`quick` and `checkpoint` say which run) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from glacier_stac import pipeline
from glacier_stac.cluster import ClusterSpec, connect
from glacier_stac.testing import stac_server
from glacier_stac.testing.worlds import WorldDir

RESULTS = Path(__file__).parent / "results"
SEED = 12
YEAR = 2022
ZONE = "EPSG:32606"  # the worlds' UTM zone; the tile lattice has its edges at multiples of 10240 m
TILE_M = 10240.0


@dataclass(frozen=True)
class Size:
    """A world size and where its centre sits on the tile lattice, which decides how many tiles it covers."""

    km: float
    centre_xy: tuple[float, float]  # in ZONE
    tiles: int  # tiles it covers (checked against the plan)

    def lonlat(self) -> tuple[float, float]:
        from pyproj import Transformer

        lon, lat = Transformer.from_crs(ZONE, "EPSG:4326", always_xy=True).transform(*self.centre_xy)
        return round(lon, 6), round(lat, 6)


_X, _Y = 49 * TILE_M, 663 * TILE_M  # a tile corner near 147.0 W, 61.2 N (the default world's place)
SIZES = (Size(4.0, (_X - TILE_M / 2, _Y - TILE_M / 2), 1),  # inside one tile
         Size(8.0, (_X, _Y - TILE_M / 2), 2),  # across one tile edge
         Size(16.0, (_X, _Y), 4),  # across a tile corner
         Size(32.0, (_X, _Y), 16))  # full runs only
QUICK = SIZES[:3]


@dataclass(frozen=True)
class SizeResult:
    """One world size, one run."""

    size_km: float
    area_km2: float
    tiles: int
    tiles_done: int
    output_px: int
    computed_px: int
    wall_s: float
    warmup_s: float
    model_only_s: float  # the mean of the two below
    peak_worker_rss_mb: float
    model_only_before_s: float = 0.0  # measured just before the run
    model_only_after_s: float = 0.0  # and just after it
    stages_s: dict = field(default_factory=dict)
    tile_wall_s: dict = field(default_factory=dict)  # wall seconds inside one-task tiles, per stage (tile_walls)
    compute_by_task_s: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)


class RssSampler:
    """Peak resident set of the given worker processes, sampled in a thread until stopped."""

    def __init__(self, pids: list[int], every_s: float = 0.2) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in self.procs:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, p.memory_info().rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _warm(checkpoint: str) -> float:
    """On a worker: import the stack and build the model into the process's cache (what the first tile would
    otherwise pay: a one-off per worker, not a per-tile cost)."""
    t = time.perf_counter()
    import rasterio  # noqa: F401
    import zarr  # noqa: F401

    from glacier_stac import cube, infer, store  # noqa: F401

    infer.process_models().get(str(checkpoint), None)
    return time.perf_counter() - t


def _bare_forward(checkpoint: str, n_features: int, side: int, seed: int) -> tuple[str, float]:
    """(worker, seconds) of one forward pass of the bare model over one (tile + margin) patch, on this
    worker: the very model the pipeline's tasks use (the process's cache: BatchNorm folded, channels_last)
    through the same call (`infer.forward_probabilities`), torch threads as the worker's plugin set them."""
    from distributed import get_worker

    from glacier_stac import infer

    model, _, dev = infer.process_models().get(str(checkpoint), None)
    x = np.random.default_rng(seed).normal(size=(1, n_features, side, side)).astype(np.float32)
    infer.forward_probabilities(model, x[..., :64, :64].copy(), dev)  # warm-up
    t = time.perf_counter()
    infer.forward_probabilities(model, x, dev)
    return get_worker().address, time.perf_counter() - t


def model_only_seconds(client, checkpoint: str, tiles: int, margin: int) -> float:
    """Seconds the workers take to push `tiles` (tile + margin) patches through the bare model, one task per
    tile as Dask places them (model build and warm-up excluded): the busiest worker's forward seconds."""
    from glacier_stac.models.checkpoint import load

    n = len(load(checkpoint).features)
    side = 1024 + 2 * margin
    futs = [client.submit(_bare_forward, checkpoint, n, side, i, pure=False) for i in range(tiles)]
    busy: dict[str, float] = {}
    for worker, seconds in client.gather(futs):
        busy[worker] = busy.get(worker, 0.0) + seconds
    return max(busy.values(), default=0.0)


def stage_of(prefix: str) -> str:
    """The pipeline stage a task's key prefix belongs to."""
    if "predict-tile" in prefix or prefix.startswith("checkpoint-") or prefix == "classes_from_probability":
        return "predict"  # fused names hold it inside; the classes are the prediction's last step
    if "store-write" in prefix:
        return "store_write"
    return "cube"  # COG reads, reprojection, compositing, derived features, rechunk/astype before the model


ONE_TASK_TILE = "run_tile_task"  # pipeline.run_tile_task: a CPU-only tile's whole graph in one task


def stages(task_stream: list[dict], span: tuple[float, float], workers: int,
           report: dict, inner: list[dict] | None = None) -> tuple[dict, dict]:
    """(stage -> seconds, task prefix -> compute seconds) from the Dask task stream and the run's report;
    `span`: the run's start and end (time.time()), to tell idle before the first task and after the last.
    `inner`: pipeline.TILE_TASKS_TOPIC events (seconds per task prefix inside one-task tiles), which split
    those tasks into stages; what the events do not cover is `in_tile_task_other` (the synchronous scheduler,
    the graph's unpickling)."""
    from dask.utils import key_split

    by_task: dict[str, float] = {}
    out = {"cube": 0.0, "predict": 0.0, "store_write": 0.0, "transfer": 0.0, "in_tile_task_other": 0.0}
    first, last = span[1], span[0]
    for rec in task_stream:
        prefix = key_split(rec["key"])
        for ss in rec.get("startstops", ()):
            dt = ss["stop"] - ss["start"]
            first, last = min(first, ss["start"]), max(last, ss["stop"])
            if ss["action"] == "compute" and prefix == ONE_TASK_TILE:
                out["in_tile_task_other"] += dt  # less the inner tasks' seconds, below
            elif ss["action"] == "compute":
                by_task[prefix] = by_task.get(prefix, 0.0) + dt
                out[stage_of(prefix)] += dt
            else:
                out["transfer"] += dt
    for ev in inner or ():
        for prefix, dt in ev["seconds"].items():
            by_task[prefix] = by_task.get(prefix, 0.0) + dt
            out[stage_of(prefix)] += dt
            out["in_tile_task_other"] -= dt
    t = report.get("timings", {})
    out["client_setup"] = t.get("setup_s", 0.0)
    out["client_search_and_graph"] = t.get("graph_s", 0.0)
    out["in_tile_task_other"] = max(out["in_tile_task_other"], 0.0)
    busy = sum(v for k, v in out.items() if k in ("cube", "predict", "store_write", "transfer", "in_tile_task_other"))
    out["worker_idle"] = max((span[1] - span[0]) * workers - busy, 0.0)
    out["before_first_task"] = max(first - span[0], 0.0)  # setup, the first tile's search and graph, submission
    out["after_last_task"] = max(span[1] - last, 0.0)  # results back, attempts, the report
    return ({k: round(v, 2) for k, v in out.items()},
            {k: round(v, 2) for k, v in sorted(by_task.items(), key=lambda kv: -kv[1])})


def tile_walls(inner: list[dict]) -> dict[str, float]:
    """Wall seconds inside one-task tiles, summed over tiles: per stage, the time some task of it was running
    (the union of its tasks' intervals; the stages run mostly one after another, so these add up to about
    `tile_task`, the tasks' own wall); `stages` gives thread-seconds when the inner graph has several threads."""
    out = {"cube": 0.0, "predict": 0.0, "store_write": 0.0, "tile_task": 0.0}
    for ev in inner:
        by_stage: dict[str, list[tuple[float, float]]] = {}
        for prefix, a, b in ev.get("intervals", ()):
            by_stage.setdefault(stage_of(prefix), []).append((a, b))
        for stage, spans in by_stage.items():
            end = -math.inf
            for a, b in sorted(spans):  # union of intervals
                if b > end:
                    out[stage] += b - max(a, end)
                    end = b
        out["tile_task"] += ev.get("wall", 0.0)
    return {k: round(v, 2) for k, v in out.items()}


def world_for(size: Size, worlds: Path) -> Path:
    from glacier_stac.synthetic.world import WorldConfig
    from glacier_stac.synthetic.writer import generate

    lon, lat = size.lonlat()
    where = worlds / f"scaling-{SEED}-{size.km:g}km-{size.tiles}t"
    return Path(generate(WorldConfig(seed=SEED, size_km=size.km, years=(YEAR,), center_lon=lon, center_lat=lat),
                         where) or where)


def run_size(size: Size, worlds: Path, work: Path, checkpoint: str, workers: int,
             block_cache_mb: int | None = None) -> SizeResult:
    from distributed import get_task_stream

    world = world_for(size, worlds)
    b = WorldDir(world).aoi().geometry.boundingbox
    out = work / f"{size.km:g}km"
    with stac_server.serve(world) as url, connect(ClusterSpec(workers=workers, threads_per_worker=1,
                                                            block_cache_mb=block_cache_mb)) as client:
        raw = {"run": {"years": [YEAR], "checkpoint": checkpoint, "tiles_in_flight": 2 * workers,
                       "report": str(out / "report.json")},
               "aoi": {"bbox": [b.left, b.bottom, b.right, b.top]}, "catalog": {"url": url},
               "store": {"url": str(out / "preds.zarr")}}
        cfg = pipeline.parse_config(raw)
        plan = pipeline.make_plan(cfg)
        if len(plan.tiles) != size.tiles:
            raise RuntimeError(f"the {size.km:g} km world covers {len(plan.tiles)} tiles, expected {size.tiles}")
        warmup = max(client.run(_warm, cfg.checkpoint).values())
        pids = list(client.run(os.getpid).values())
        # the bare model just before and just after the run, on the same worker threads (a shared machine's load
        # moves either several-fold within minutes: the mean of the two brackets the run)
        model_before = model_only_seconds(client, cfg.checkpoint, len(plan.tiles), plan.margin)
        with RssSampler(pids) as rss, get_task_stream(client) as ts:
            t, t_epoch = time.perf_counter(), time.time()
            rep = pipeline.run_on(client, replace(cfg, inventory=None), plan=plan)
            wall = time.perf_counter() - t
            span = (t_epoch, time.time())
        done = [o for o in rep.tiles if o.status == "done"]
        model_after = model_only_seconds(client, cfg.checkpoint, len(done), plan.margin)
        model_before *= len(done) / max(len(plan.tiles), 1)
        inner = [msg for _, msg in client.get_events(pipeline.TILE_TASKS_TOPIC)]
    st, by_task = stages(ts.data, span, workers, rep.to_dict(), inner)
    tile_px = 1024 * 1024
    return SizeResult(size_km=size.km, area_km2=size.km ** 2, tiles=len(plan.tiles), tiles_done=len(done),
                      output_px=len(done) * tile_px, computed_px=len(done) * (1024 + 2 * plan.margin) ** 2,
                      wall_s=wall, warmup_s=warmup, model_only_s=(model_before + model_after) / 2,
                      model_only_before_s=model_before, model_only_after_s=model_after,
                      peak_worker_rss_mb=rss.peak / 2**20,
                      stages_s=st, tile_wall_s=tile_walls(inner), compute_by_task_s=by_task,
                      failures=rep.to_dict()["failures"])


def r2(x: list[float], y: list[float]) -> float:
    """Coefficient of determination of the least-squares line y ~ x."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if len(xa) < 2 or np.ptp(xa) == 0:
        return float("nan")
    slope, icpt = np.polyfit(xa, ya, 1)
    ss_res = float(((ya - (slope * xa + icpt)) ** 2).sum())
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def figures(results: list[SizeResult], workers: int) -> dict[str, float]:
    """The issue's figures from one repeat over all sizes."""
    small, large = results[0], results[-1]
    return {"peak_memory_ratio": large.peak_worker_rss_mb / small.peak_worker_rss_mb,
            "end_to_end_over_model_only": large.model_only_s / large.wall_s,
            "computed_over_output_pixels": large.computed_px / max(large.output_px, 1),
            "time_linearity_r2": r2([r.tiles_done for r in results], [r.wall_s for r in results]),
            "seconds_per_tile": large.wall_s * workers / max(large.tiles_done, 1)}


WORSE_IS_HIGHER = {"peak_memory_ratio", "computed_over_output_pixels", "seconds_per_tile"}


def summarise(repeats: list[list[SizeResult]], workers: int, checkpoint: str, quick: bool) -> dict:
    figs = [figures(rs, workers) for rs in repeats]
    med = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
    worst = {k: (max if k in WORSE_IS_HIGHER else min)(f[k] for f in figs) for k in figs[0]}
    first = repeats[0]

    def per_size(attr: str) -> list[float]:
        return [round(statistics.median(getattr(rs[i], attr) for rs in repeats), 2) for i in range(len(first))]

    stage_names = list(first[0].stages_s)
    stages_med = [{k: round(statistics.median(rs[i].stages_s[k] for rs in repeats), 2) for k in stage_names}
                  for i in range(len(first))]
    notes = [
        f"checkpoint {Path(checkpoint).name}: a tiny model (cnn5) makes reading dominate; the shipped default is "
        f"{Path(pipeline.DEFAULT_CHECKPOINT).name}",
        "wall_s excludes each worker's one-off warm-up (imports, model build: warmup_s); model_only_s is the "
        "forward pass alone on the same workers, as Dask places one task per tile (busiest worker)",
        "stages_s: worker compute seconds per stage from the Dask task stream, client seconds, worker idle "
        "(wall x workers minus compute and transfers); inside one-task tiles thread-seconds over the tile's "
        "inner threads (pipeline.tile_threads), so they may add up to more than the wall",
        "per_tile_s (largest size): the bare model's seconds against the wall seconds of each stage inside a "
        "tile (first task start to last task end); cpu_only_ceiling = model / (model + cube + store_write): the "
        "best end_to_end_over_model_only a worker can reach when reading and the model share its cores",
        "model_only_s: the mean of the bare model measured just before and just after the run",
    ]
    if len(repeats) > 1:
        notes.append(f"figures are medians over {len(repeats)} repeats; `worst` holds the worst repeat's")
    rnd = {"peak_memory_ratio": 3, "end_to_end_over_model_only": 3, "computed_over_output_pixels": 4,
           "time_linearity_r2": 4, "seconds_per_tile": 2}

    def fmt(d: dict) -> dict:
        return {k: None if math.isnan(v) else round(v, rnd[k]) for k, v in d.items()}

    m = fmt(med)
    # where a tile's wall time goes at the largest size (medians over repeats): the bare model against the
    # tile's stages; on a CPU-only worker the stages share the cores one after another, so the ratio can reach
    # at most model / (model + cube + store write) however the pipeline is wired
    last = [rs[-1] for rs in repeats]

    def per_tile(get) -> float:
        return round(statistics.median(get(r) / max(r.tiles_done, 1) for r in last), 3)

    breakdown = {"model_only": per_tile(lambda r: r.model_only_s),
                 **{k: per_tile(lambda r, k=k: r.tile_wall_s.get(k, 0.0))
                    for k in ("cube", "predict", "store_write", "tile_task")},
                 "wall_x_workers": per_tile(lambda r: r.wall_s * workers)}
    ceilings = [r.model_only_s / max(r.model_only_s + r.tile_wall_s.get("cube", 0.0)
                                     + r.tile_wall_s.get("store_write", 0.0), 1e-9) for r in last]
    return {
        "benchmark": "scaling", "quick": quick, "checkpoint": Path(checkpoint).name, "workers": workers,
        "threads_per_worker": 1, "year": YEAR, "seed": SEED, "repeats": len(repeats),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "sizes_km2": [r.area_km2 for r in first], "tiles": [r.tiles_done for r in first],
        "wall_s": per_size("wall_s"), "warmup_s": per_size("warmup_s"), "model_only_s": per_size("model_only_s"),
        "peak_worker_rss_mb": per_size("peak_worker_rss_mb"), "stages_s": stages_med,
        **m, "worst": fmt(worst),
        "per_tile_s": breakdown,
        "cpu_only_ceiling": round(statistics.median(ceilings), 3), "cpu_only_ceiling_worst": round(min(ceilings), 3),
        "targets": {"peak_memory_ratio<=1.25": med["peak_memory_ratio"] <= 1.25,
                    "end_to_end_over_model_only>=0.75": med["end_to_end_over_model_only"] >= 0.75,
                    "computed_over_output_pixels<=1.3": med["computed_over_output_pixels"] <= 1.3,
                    "time_linearity_r2>=0.98": med["time_linearity_r2"] >= 0.98},
        "per_size": [[asdict(r) for r in rs] for rs in repeats], "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4, 8 and 16 km worlds (1, 2, 4 tiles); else also 32 km")
    ap.add_argument("--checkpoint", default="cnn5", help="a shipped checkpoint name or a path (default cnn5)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: 1 with --quick, else 2)")
    ap.add_argument("--repeat", type=int, default=1, help="run every size this many times: median and worst")
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    ap.add_argument("--block-cache-mb", type=int, default=None,
                    help="each worker's block caches (GDAL's and the shared one), MB; default the product's (256)")
    ap.add_argument("--worlds", type=Path, default=Path(tempfile.gettempdir()) / "glacier-stac-worlds",
                    help="where generated worlds are cached")
    args = ap.parse_args(argv)
    workers = args.workers or (1 if args.quick else 2)
    sizes = QUICK if args.quick else SIZES
    ckpt = pipeline.parse_config({"run": {"years": [YEAR], "checkpoint": args.checkpoint},
                                  "aoi": {"bbox": "0,0,1,1"}, "store": {"url": "x"}}).checkpoint
    repeats = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as work:
        for i in range(args.repeat):
            results = []
            for s in sizes:
                r = run_size(s, args.worlds, Path(work) / f"r{i}", ckpt, workers, args.block_cache_mb)
                print(f"[{i + 1}/{args.repeat}] {s.km:g} km: {r.tiles_done}/{r.tiles} tiles, {r.wall_s:.1f} s "
                      f"(warm-up {r.warmup_s:.1f} s), model only {r.model_only_s:.1f} s, "
                      f"peak worker RSS {r.peak_worker_rss_mb:.0f} MB, stages {r.stages_s}", flush=True)
                results.append(r)
            repeats.append(results)
    out = summarise(repeats, workers, ckpt, args.quick)
    cache_mb = ClusterSpec(block_cache_mb=args.block_cache_mb).block_cache_bytes() // 2**20
    out["block_cache_mb"] = cache_mb
    out["notes"].append(
        f"block caches: GDAL's and the shared decoded-block cache, {cache_mb} MB each per worker, fill as a run "
        "reads more distinct blocks and then stay at their limit: a bounded allowance, not growth with area "
        "(with the 256 MB default a 16-tile run's peak RSS is ~380 MB above a 1-tile run's; with 32 MB ~100 MB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # `quick` and `checkpoint` inside say which; pipeline.dry_run reads seconds_per_tile from results/scaling.json
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "per_size"}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
