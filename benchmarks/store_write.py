"""Cost of streaming predictions into the Zarr store, side by side in one run.

Four legs over the same tiles (1024 px, the production tile), interleaved (order alternating) and repeated:
- `compute_only`: the prediction graph, per tile, exactly as `store.write` builds it (one task per tile
  taking the tile's three blocks), encoding as the store encodes, then throwing the result away;
- `with_store`: the same graph ending in `store.write` tasks (chunks + completion record per tile);
- `store_only`: `store.write` of the same prediction already in memory (the write alone, no model);
- `raw_zarr`: the same in-memory arrays written with plain zarr into arrays of the same chunks and codec.

    python benchmarks/store_write.py [--quick] [--repeats N]

writes benchmarks/results/store_write.json with
- `overhead_fraction`: share of the pipeline's wall time that writing adds, from the medians of
  `with_store` and `compute_only` (target <= 0.10); `overhead_fraction_worst`: the worst repeat's pair;
- `overhead_fraction_direct`: the same share from the write alone, store_only / (compute_only + store_only):
  a cross-check that does not depend on the difference of two long, noisy runs;
- `overhead_fraction_cpu`: the share of this process's CPU seconds (all threads) that writing adds, median of
  the repeats' pairs: on a shared machine CPU time moves far less with other people's load than wall time;
- `write_mb_per_s` (store_only) and `raw_zarr_mb_per_s` (raw_zarr): uncompressed MB of the three arrays per
  second, the same bytes written both ways;
- `bytes_per_km2_per_year`, `seconds_per_tile`, and the load average before and after.
`--quick` uses 2 x 2 tiles instead of 3 x 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from glacier_stac import store
from glacier_stac.labels import CLASSES_VAR, GLACIER_PROBABILITY, VALID
from glacier_stac.testing import predictions as P

RESULTS = Path(__file__).parent / "results"
WORKERS = 2


def _stored_bytes(path: Path) -> int:
    """Bytes of the stored chunks of the three prediction arrays (no metadata, records or coordinates)."""
    return sum(p.stat().st_size for name in ("probability", "classes", "valid")
               for p in path.glob(f"EPSG*/{name}/c/**/*") if p.is_file())


def _encode_and_drop(p: np.ndarray, c: np.ndarray, v: np.ndarray) -> int:
    """What `store.write_tile` does to a tile before its I/O."""
    return store.encode_probability(p).nbytes + c.astype(np.uint8).nbytes + v.astype(bool).nbytes


def _compute_only(region: P.Region) -> float:
    pred = P.prediction(region)
    t = time.perf_counter()
    blocks = [pred[k].transpose("y", "x").data.to_delayed(optimize_graph=False).ravel()
              for k in (GLACIER_PROBABILITY, CLASSES_VAR, VALID)]
    tasks = [dask.delayed(_encode_and_drop, pure=False)(a, b, c) for a, b, c in zip(*blocks, strict=True)]
    dask.compute(*tasks, scheduler="threads", num_workers=WORKERS)
    return time.perf_counter() - t


def _with_store(pred: xr.Dataset, path: Path, tile_px: int) -> float:
    t = time.perf_counter()
    run_id = store.record_run(path, {"benchmark": "store_write"})
    wp = store.write(pred, 2023, path, run_id=run_id, tile_px=tile_px)
    dask.compute(*wp.tasks, scheduler="threads", num_workers=WORKERS)
    return time.perf_counter() - t


def _raw_zarr(arrays: dict[str, np.ndarray], path: Path, tile: int) -> float:
    t = time.perf_counter()
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, a in arrays.items():
        z = g.create_array(name, shape=a.shape, chunks=(tile, tile), dtype=a.dtype, compressors=[store.COMPRESSOR])
        z[...] = a
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    region = P.Region(2 if args.quick else 3, 1024)
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    rows: dict[str, list[float]] = {"compute_only": [], "with_store": [], "store_only": [], "raw_zarr": []}
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    stored_bytes = 0
    load_before = os.getloadavg()
    try:
        computed = P.prediction(region).persist(scheduler="threads", num_workers=WORKERS)
        arrays = {"probability": store.encode_probability(computed[GLACIER_PROBABILITY].values),
                  "classes": computed[CLASSES_VAR].values.astype(np.uint8), "valid": computed[VALID].values}
        raw_bytes = sum(a.nbytes for a in arrays.values())
        legs = list(rows)
        for r in range(args.repeats):
            for name in legs if r % 2 == 0 else legs[::-1]:
                path = tmp / f"{name}-{r}.zarr"
                cpu0 = time.process_time()
                if name == "compute_only":
                    dt = _compute_only(region)
                elif name == "with_store":
                    dt = _with_store(P.prediction(region), path, region.tile_px)
                    stored_bytes = _stored_bytes(path)
                elif name == "store_only":
                    dt = _with_store(computed, path, region.tile_px)
                else:
                    dt = _raw_zarr(arrays, path, region.tile_px)
                cpu[name].append(time.process_time() - cpu0)
                shutil.rmtree(path, ignore_errors=True)
                rows[name].append(dt)
                print(f"repeat {r} {name:13s} {dt:7.2f} s wall {cpu[name][-1]:7.2f} s cpu  "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    worst = {k: max(v) for k, v in rows.items()}
    n_tiles = region.tiles ** 2
    km2 = n_tiles * (region.tile_px * store.RESOLUTION / 1000) ** 2
    pairs = [(w - c) / w for w, c in zip(rows["with_store"], rows["compute_only"], strict=True)]
    direct = [s / (c + s) for s, c in zip(rows["store_only"], rows["compute_only"], strict=True)]
    cpu_pairs = [(w - c) / w for w, c in zip(cpu["with_store"], cpu["compute_only"], strict=True)]
    out = {
        "tiles": n_tiles, "tile_px": region.tile_px, "repeats": args.repeats, "quick": args.quick,
        "workers": WORKERS, "load_avg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "seconds": rows, "median_s": med, "worst_s": worst,
        "overhead_fraction": (med["with_store"] - med["compute_only"]) / med["with_store"],
        "overhead_fraction_pairs": pairs,
        "overhead_fraction_worst": max(pairs),
        "overhead_fraction_direct": statistics.median(direct),
        "overhead_fraction_direct_worst": max(direct),
        "cpu_s": cpu,
        "overhead_fraction_cpu": statistics.median(cpu_pairs),
        "overhead_fraction_cpu_worst": max(cpu_pairs),
        "write_mb_per_s": raw_bytes / 1e6 / med["store_only"],
        "raw_zarr_mb_per_s": raw_bytes / 1e6 / med["raw_zarr"],
        "stored_bytes": stored_bytes, "raw_bytes": raw_bytes,
        "bytes_per_km2_per_year": stored_bytes / km2,
        "seconds_per_tile": med["with_store"] / n_tiles,
        "note": "synthetic cube + seeded cnn5: compression of real maps differs (see README)",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store_write.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("seconds", "cpu_s")}, indent=1))
    verdict = "PASS" if out["overhead_fraction"] <= 0.10 else "FAIL"
    print(f"overhead {out['overhead_fraction']:.3f} (worst {out['overhead_fraction_worst']:.3f}; direct "
          f"{out['overhead_fraction_direct']:.3f}, worst {out['overhead_fraction_direct_worst']:.3f}; cpu "
          f"{out['overhead_fraction_cpu']:.3f}, worst {out['overhead_fraction_cpu_worst']:.3f}) "
          f"target <= 0.10: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
