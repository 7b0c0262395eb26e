"""Deterministic predictions for store tests and benchmarks, and a writer process to kill.

A seeded random cube on a tile-aligned GeoBox, run through the real `infer.predict` with a small
seeded CNN checkpoint: the same arguments give the same bytes in any process, so a run killed and
resumed can be compared byte for byte with a clean one.

    python -m glacier_stac.testing.predictions STORE --tiles 3 --tile-px 128 --year 2023 [--sleep 0.2]

writes the tiles one task at a time (the `--sleep` between them leaves time to kill it) and prints
one JSON line per tile written, then a summary line with the tiles skipped as already done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

FEATURES = ("B03", "B08", "B11", "elevation")
ORIGIN = (-677_888, 48_128)  # global (row, col) of a tile corner in UTM 6N (Chugach), 1024-aligned
CRS = "EPSG:32606"


@dataclass(frozen=True)
class Region:
    """A block of whole tiles of the global lattice, `tiles` x `tiles`, offset by whole tiles."""

    tiles: int = 3
    tile_px: int = 128
    trow: int = 0  # offset from ORIGIN, in tiles
    tcol: int = 0

    @property
    def geobox(self) -> GeoBox:
        r0 = ORIGIN[0] + self.trow * self.tile_px
        c0 = ORIGIN[1] + self.tcol * self.tile_px
        n = self.tiles * self.tile_px
        return GeoBox((n, n), Affine(10.0, 0.0, c0 * 10.0, 0.0, -10.0, -r0 * 10.0), CRS)


def checkpoint(seed: int = 0):
    """A small cnn5 checkpoint with seeded weights (no training: deterministic and instant)."""
    import torch

    from glacier_stac.models import get_model
    from glacier_stac.models.checkpoint import Checkpoint

    torch.manual_seed(seed)
    model = get_model("cnn5", len(FEATURES), 4)
    return Checkpoint.from_model(model, "cnn5", list(FEATURES), [0.0] * len(FEATURES), [1.0] * len(FEATURES))


def cube(region: Region, seed: int = 0) -> xr.DataArray:
    """A (feature, y, x) cube whose values depend only on global pixel position and seed."""
    from glacier_stac.grid import global_origin, pixel_centres, tile_chunks

    gb = region.geobox
    r0, c0 = global_origin(gb)
    h, w = gb.shape
    rows = (r0 + np.arange(h))[:, None]
    cols = (c0 + np.arange(w))[None, :]
    a = np.stack([np.sin((rows * (k + 1) + cols * (3 - k)) / (17.0 + 5 * k + seed)) for k in range(len(FEATURES))])
    a = a.astype(np.float32)
    a[:, (rows[:, 0] % 97) < 3, :] = np.nan  # stripes of missing data: no-data must survive the store
    y, x = pixel_centres(gb)
    chunks = tile_chunks(gb, region.tile_px)
    arr = xr.DataArray(da.from_array(a, chunks=(-1, *chunks)), dims=("feature", "y", "x"),
                       coords={"feature": list(FEATURES), "y": y, "x": x})
    return arr.rio.write_crs(CRS).rio.write_transform(gb.affine)


def prediction(region: Region, seed: int = 0) -> xr.Dataset:
    """`infer.predict` over `cube(region)` with `checkpoint(seed)`; lazy, chunked one tile per chunk."""
    from glacier_stac.infer import predict

    ds = predict(cube(region, seed), checkpoint(seed))
    ds.attrs["items"] = {"sentinel-2": "S2A_TEST_1,S2B_TEST_2", "cop-dem-glo-30": "DEM_TEST"}
    return ds


def main(argv: list[str] | None = None) -> int:
    from glacier_stac import store

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--trow", type=int, default=0)
    ap.add_argument("--tcol", type=int, default=0)
    ap.add_argument("--year", type=int, default=2023)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--s3-endpoint", default=None)
    args = ap.parse_args(argv)
    opts = {"endpoint_url": args.s3_endpoint, "key": "testing", "secret": "testing"} if args.s3_endpoint else None
    loc = store.Location.of(args.store, opts)
    region = Region(args.tiles, args.tile_px, args.trow, args.tcol)
    run_id = store.record_run(loc, {"region": vars(args) | {"store": None}, "model": "cnn5"})
    wp = store.write(prediction(region), args.year, loc, run_id=run_id, tile_px=args.tile_px,
                     checkpoint={"model": "cnn5", "digest": checkpoint().digest()})
    for task in wp.tasks:
        (rec,) = dask.compute(task, scheduler="sync")
        print(json.dumps({"written": rec.tile}), flush=True)
        time.sleep(args.sleep)
    print(json.dumps({"todo": len(wp.todo), "skipped": len(wp.skipped)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
