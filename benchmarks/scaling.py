"""The whole pipeline on 1x, 4x and 16x a base area: time, worker memory, overheads (issue 12).

    python benchmarks/scaling.py [--quick] [--checkpoint cnn5|unet|PATH] [--workers 2]

Synthetic worlds of 4, 8 and 16 km a side (16, 64, 256 km2; --quick: 4 and 8 km) are generated once
(cached under --worlds), served by `rustac serve` on loopback, and mapped for one year by
`pipeline.run_on` on a local cluster of `--workers` worker processes (1 thread each), exactly as
`glacier-stac run` does. Measured per size, in the same run:

- wall_s: the run's wall time (search, cube, predict, Zarr write; no inventory);
- peak_worker_rss_mb: the largest resident set of any worker process, sampled every 0.2 s (psutil);
- model_only_s: the bare model's forward pass over the same patches (one tile + margin per done tile),
  on the same workers, as one task per tile: the throughput the model alone would give;
- computed / output pixels: model pixels pushed per output pixel written (halo cost).

Figures against the issue's targets: peak_memory_ratio (largest/smallest peak RSS, <= 1.25),
end_to_end_over_model_only (model_only_s / wall_s at the largest size, >= 0.75),
computed_over_output_pixels (<= 1.3), time_linearity_r2 (wall_s against tiles, least squares, >= 0.98;
with two sizes it is 1 by construction and says nothing, see `notes`), seconds_per_tile (worker-seconds
per tile at the largest size: wall_s x workers / tiles, what `pipeline.dry_run` extrapolates from).
Writes benchmarks/results/scaling.json (`quick` says which run) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from glacier_stac import pipeline
from glacier_stac.cluster import ClusterSpec, connect
from glacier_stac.testing import stac_server
from glacier_stac.testing.worlds import WorldDir

RESULTS = Path(__file__).parent / "results"
SEED = 12
YEAR = 2022


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
    model_only_s: float
    peak_worker_rss_mb: float
    failures: list


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


def _bare_forward(checkpoint: str, n_features: int, side: int, seed: int) -> float:
    """Seconds of one forward pass of the bare model over one (tile + margin) patch, on this worker
    (the model built beforehand, torch threads as the worker's plugin set them)."""
    import torch

    from glacier_stac.models.checkpoint import load

    model = load(checkpoint).build_model().eval()
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, n_features, side, side)).astype(np.float32))
    with torch.inference_mode():
        model(x[..., :64, :64])  # warm-up
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t


def model_only_seconds(client, checkpoint: str, tiles: int, margin: int) -> float:
    """Seconds for the workers to push `tiles` (tile + margin) patches through the bare model: the forward
    passes' seconds (one task per tile, model build and warm-up excluded) shared over the workers."""
    from glacier_stac.models.checkpoint import load

    n = len(load(checkpoint).features)
    side = 1024 + 2 * margin
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    futs = [client.submit(_bare_forward, checkpoint, n, side, i, pure=False) for i in range(tiles)]
    return sum(client.gather(futs)) / max(workers, 1)


def run_size(size_km: float, worlds: Path, work: Path, checkpoint: str, workers: int) -> SizeResult:
    from glacier_stac.synthetic.world import WorldConfig
    from glacier_stac.synthetic.writer import generate

    world = Path(generate(WorldConfig(seed=SEED, size_km=size_km, years=(YEAR,)),
                          worlds / f"scaling-{SEED}-{size_km:g}km") or worlds / f"scaling-{SEED}-{size_km:g}km")
    b = WorldDir(world).aoi().geometry.boundingbox
    out = work / f"{size_km:g}km"
    with stac_server.serve(world) as url, connect(ClusterSpec(workers=workers, threads_per_worker=1)) as client:
        raw = {"run": {"years": [YEAR], "checkpoint": checkpoint, "tiles_in_flight": 2 * workers,
                       "report": str(out / "report.json")},
               "aoi": {"bbox": [b.left, b.bottom, b.right, b.top]}, "catalog": {"url": url},
               "store": {"url": str(out / "preds.zarr")}}
        cfg = pipeline.parse_config(raw)
        plan = pipeline.make_plan(cfg)
        pids = list(client.run(os.getpid).values())
        with RssSampler(pids) as rss:
            t = time.perf_counter()
            rep = pipeline.run_on(client, replace(cfg, inventory=None), plan=plan)
            wall = time.perf_counter() - t
        done = [o for o in rep.tiles if o.status == "done"]
        model_s = model_only_seconds(client, cfg.checkpoint, len(done), plan.margin)
    tile_px = 1024 * 1024
    return SizeResult(size_km=size_km, area_km2=size_km ** 2, tiles=len(plan.tiles), tiles_done=len(done),
                      output_px=len(done) * tile_px, computed_px=len(done) * (1024 + 2 * plan.margin) ** 2,
                      wall_s=wall, model_only_s=model_s, peak_worker_rss_mb=rss.peak / 2**20,
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


def summarise(results: list[SizeResult], workers: int, checkpoint: str, quick: bool) -> dict:
    small, large = results[0], results[-1]
    ratio_mem = large.peak_worker_rss_mb / small.peak_worker_rss_mb
    e2e = large.model_only_s / large.wall_s
    halo = large.computed_px / large.output_px
    lin = r2([r.tiles_done for r in results], [r.wall_s for r in results])
    notes = []
    if len(results) < 3:
        notes.append("time_linearity_r2 from two sizes is 1 by construction: run without --quick for a real fit")
    if len({r.tiles_done for r in results}) < len(results):
        notes.append("some sizes cover the same number of tiles: wall time cannot be fitted against tiles there")
    notes.append("wall_s includes the cluster's warm-up (worker start, first model build) at each size, "
                 "and search/cube/write; model_only_s is the forward pass alone on the same workers")
    if any(r.tiles * 100 > r.area_km2 * 1.5 for r in results):
        notes.append("a world smaller than its tiles (10.24 km) still costs whole tiles: area is not tiles")
    return {
        "benchmark": "scaling", "quick": quick, "checkpoint": Path(checkpoint).name, "workers": workers,
        "threads_per_worker": 1, "year": YEAR, "seed": SEED,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "sizes_km2": [r.area_km2 for r in results], "tiles": [r.tiles_done for r in results],
        "wall_s": [round(r.wall_s, 2) for r in results],
        "model_only_s": [round(r.model_only_s, 2) for r in results],
        "peak_worker_rss_mb": [round(r.peak_worker_rss_mb, 1) for r in results],
        "peak_memory_ratio": round(ratio_mem, 3),
        "end_to_end_over_model_only": round(e2e, 3),
        "computed_over_output_pixels": round(halo, 4),
        "time_linearity_r2": None if math.isnan(lin) else round(lin, 4),  # None: tiles did not vary
        "seconds_per_tile": round(large.wall_s * workers / max(large.tiles_done, 1), 2),
        "targets": {"peak_memory_ratio<=1.25": ratio_mem <= 1.25, "end_to_end_over_model_only>=0.75": e2e >= 0.75,
                    "computed_over_output_pixels<=1.3": halo <= 1.3, "time_linearity_r2>=0.98": lin >= 0.98},
        "per_size": [asdict(r) for r in results], "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 and 8 km worlds only (16 and 64 km2)")
    ap.add_argument("--checkpoint", default="cnn5", help="a shipped checkpoint name or a path (default cnn5)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worlds", type=Path, default=Path(tempfile.gettempdir()) / "glacier-stac-worlds",
                    help="where generated worlds are cached")
    args = ap.parse_args(argv)
    sizes = [4.0, 8.0] if args.quick else [4.0, 8.0, 16.0]
    results = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as work:
        for s in sizes:
            r = run_size(s, args.worlds, Path(work), args.checkpoint, args.workers)
            print(f"{s:g} km: {r.tiles_done}/{r.tiles} tiles, {r.wall_s:.1f} s, model only {r.model_only_s:.1f} s, "
                  f"peak worker RSS {r.peak_worker_rss_mb:.0f} MB", flush=True)
            results.append(r)
    ckpt = pipeline.parse_config({"run": {"years": [YEAR], "checkpoint": args.checkpoint},
                                  "aoi": {"bbox": "0,0,1,1"}, "store": {"url": "x"}}).checkpoint
    out = summarise(results, args.workers, ckpt, args.quick)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "scaling.json"  # `quick` inside says which; pipeline.dry_run reads seconds_per_tile here
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "per_size"}, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
