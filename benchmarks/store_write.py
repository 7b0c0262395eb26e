"""Cost of streaming predictions into the Zarr store, side by side in one run.

Three ways over the same tiles (1024 px, the production tile), interleaved and repeated:
- `compute_only`: the prediction graph computed per tile, encoded as the store encodes it, thrown away;
- `with_store`: the same graph ending in `store.write` tasks (chunks + completion record per tile);
- `raw_zarr`: the already computed arrays written with plain zarr into an array of the same chunks and codec.

    python benchmarks/store_write.py [--quick]

writes benchmarks/results/store_write.json with write_mb_per_s (store bytes per second of the write
share), raw_zarr_mb_per_s, overhead_fraction (share of the pipeline's wall time that writing adds;
target <= 0.10), bytes_per_km2_per_year, seconds_per_tile. `--quick` uses 2 x 2 tiles instead of 3 x 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import zarr

from glacier_stac import store
from glacier_stac.testing import predictions as P

RESULTS = Path(__file__).parent / "results"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "_glacier_stac" not in p.parts
               and p.parent.name != "x" and p.parent.name != "y" and "zarr.json" not in p.name
               and p.parts[-2] != "year")


def _compute_only(region: P.Region) -> float:
    pred = P.prediction(region)
    t = time.perf_counter()
    parts = [pred["glacier_probability"].data, pred["classes"].data, pred["valid"].data]
    blocks = [dask.delayed(lambda p, c, v: (store.encode_probability(p).nbytes + c.nbytes + v.nbytes))(a, b, c)
              for a, b, c in zip(*(x.to_delayed().ravel() for x in parts), strict=True)]
    dask.compute(*blocks, scheduler="threads", num_workers=2)
    return time.perf_counter() - t


def _with_store(region: P.Region, path: Path) -> tuple[float, int]:
    pred = P.prediction(region)
    t = time.perf_counter()
    run_id = store.record_run(path, {"benchmark": "store_write"})
    wp = store.write(pred, 2023, path, run_id=run_id, tile_px=region.tile_px)
    dask.compute(*wp.tasks, scheduler="threads", num_workers=2)
    return time.perf_counter() - t, len(wp.tasks)


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
    region = P.Region(2 if args.quick else 3, 1024)
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    rows = {"compute_only": [], "with_store": [], "raw_zarr": []}
    stored_bytes = 0
    try:
        pred = P.prediction(region).compute()
        arrays = {"probability": store.encode_probability(pred["glacier_probability"].values),
                  "classes": pred["classes"].values.astype(np.uint8), "valid": pred["valid"].values}
        raw_bytes = sum(a.nbytes for a in arrays.values())
        for r in range(args.repeats):
            order = ["compute_only", "with_store", "raw_zarr"] if r % 2 == 0 else ["raw_zarr", "with_store",
                                                                                   "compute_only"]
            for name in order:
                if name == "compute_only":
                    rows[name].append(_compute_only(region))
                elif name == "with_store":
                    path = tmp / f"store-{r}.zarr"
                    dt, n = _with_store(region, path)
                    rows[name].append(dt)
                    stored_bytes = _dir_bytes(path / "EPSG32606")
                    shutil.rmtree(path)
                else:
                    rows[name].append(_raw_zarr(arrays, tmp / f"raw-{r}.zarr", region.tile_px))
                    shutil.rmtree(tmp / f"raw-{r}.zarr")
                print(f"repeat {r} {name:13s} {rows[name][-1]:7.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    worst = {k: max(v) for k, v in rows.items()}
    n_tiles = region.tiles ** 2
    km2 = n_tiles * (region.tile_px * 10.0 / 1000) ** 2
    write_share = max(med["with_store"] - med["compute_only"], 1e-9)
    out = {
        "tiles": n_tiles, "tile_px": region.tile_px, "repeats": args.repeats, "quick": args.quick,
        "seconds": rows, "median_s": med, "worst_s": worst,
        "overhead_fraction": (med["with_store"] - med["compute_only"]) / med["with_store"],
        "overhead_fraction_worst": max((w - c) / w for w, c in zip(rows["with_store"], rows["compute_only"],
                                                                  strict=True)),
        "write_mb_per_s": raw_bytes / 1e6 / write_share,
        "raw_zarr_mb_per_s": raw_bytes / 1e6 / med["raw_zarr"],
        "stored_bytes": stored_bytes, "raw_bytes": raw_bytes,
        "bytes_per_km2_per_year": stored_bytes / km2,
        "seconds_per_tile": med["with_store"] / n_tiles,
        "note": "synthetic cube + seeded cnn5: compression of real maps differs (see README)",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store_write.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("seconds",)}, indent=1))
    verdict = "PASS" if out["overhead_fraction"] <= 0.10 else "FAIL"
    print(f"overhead {out['overhead_fraction']:.3f} (target <= 0.10): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
