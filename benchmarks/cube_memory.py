"""Cube memory per tile vs how many scenes the AOI's search returned (invariant 5: bounded memory).

    python benchmarks/cube_memory.py [--quick]

A large AOI gathers hundreds of scenes a season, but any one tile sees a few. The search result of
the synthetic world is padded with copies of every scene moved 3, 6, 9... degrees east (scenes of
the same AOI, elsewhere), and one tile of the cube is computed under tracemalloc (numpy's
allocations, including the blocks the tile puts in the shared block cache; single-threaded, so the
peak is one task's). Target: the peak with 16x the scenes is
within 10 % of the peak with the scenes over the tile alone. For contrast, the same with every scene
handed to every tile (footprint selection off), the behaviour this replaced.

History (`cube.build(history=2)`, what an annual update with the default checkpoint builds): the same world
drawn over three seasons, one tile's peak for the season alone, with the two seasons before joined as built
now (each earlier season keeps only the two features its join reads; the join runs inside the tile's own
task), and, for contrast, with the earlier seasons kept whole (every feature held until the join, as before
2026-12-02). Writes benchmarks/results/cube_memory.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from pathlib import Path
from unittest import mock

import dask
import numpy as np
from read_throughput import searched_world  # the same world, served and searched the same way
from shapely.affinity import translate
from shapely.geometry import mapping, shape

from glacier_stac import catalog, cube, reader, scenes, stac_server
from glacier_stac.demo import world_aoi, world_grid
from glacier_stac.synthetic.world import WorldConfig
from glacier_stac.synthetic.writer import generate

RESULTS = Path(__file__).parent / "results"


def padded(items: dict, factor: int) -> dict:
    """The search result with `factor - 1` far-away copies of every scene of every per-acquisition sensor."""
    out = {}
    for name, its in items.items():
        if name == "copdem":
            out[name] = its
            continue
        extra = []
        for m in range(1, factor):
            for it in its:
                far = it.clone()
                far.id = f"{it.id}-far{m}"
                far.geometry = mapping(translate(shape(it.geometry), xoff=3.0 * m))
                far.bbox = list(shape(far.geometry).bounds)
                extra.append(far)
        out[name] = list(its) + extra
    return out


def tile_peak(items, geobox, year: int, tile: tuple[int, int], history: int = 0) -> tuple[float, float, int]:
    """Peak traced MB and seconds computing one tile of the cube, and the scenes in the search result (per
    sensor name, or a `SearchResult` with the seasons before `year` that `history` joins)."""
    data = cube.build(items, geobox, year, history=history)
    ys, xs = (sum(c[:i]) for c, i in zip(data.chunks[1:], tile, strict=True))
    h, w = data.chunks[1][tile[0]], data.chunks[2][tile[1]]
    one = data.isel(y=slice(ys, ys + h), x=slice(xs, xs + w))
    reader.process_state().blocks.clear()  # each row decodes (and caches) its blocks afresh: comparable peaks
    tracemalloc.start()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="sync"):
        one.compute()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    by_sensor = items.items if isinstance(items, catalog.SearchResult) else {k: {0: v} for k, v in items.items()}
    return peak / 2**20, dt, sum(len(v) for k, by in by_sensor.items() if k != "copdem" for v in by.values())


def history_rows(cache: Path, size_km: float) -> list[dict]:
    """One tile's peak: the season alone, with two seasons before joined, and those seasons kept whole."""
    cfg = WorldConfig(seed=501, size_km=size_km, years=(2020, 2021, 2022))
    world_dir = generate(cfg, cache / f"read-{cfg.seed}-{int(cfg.size_km)}km-3seasons")
    with stac_server.serve(world_dir) as url:
        found = catalog.search(world_aoi(world_dir), list(cfg.years), catalog=catalog.open_catalog(url), max_cloud=None)
    geobox, year, tile = world_grid(world_dir), cfg.years[-1], (1, 1)
    rows = []
    for label, history in (("season alone", 0), ("2 seasons before joined", 2)):
        mb, dt, n = tile_peak(found, geobox, year, tile, history)
        rows.append({"cube": label, "history": history, "peak_mb": mb, "seconds": dt, "scenes_in_search": n})
    real = cube.earlier_seasons

    def kept_whole(items, gb, years, names, wanted, kw):  # every feature of each earlier season
        return [(y, cube.build(items, gb, y, sensors=cube.history_sensors(names, wanted), **kw))
                for y, _ in real(items, gb, years, names, wanted, kw)]

    with mock.patch.object(cube, "earlier_seasons", kept_whole):
        mb, dt, n = tile_peak(found, geobox, year, tile, 2)
    rows.append({"cube": "2 seasons before, kept whole (before 2026-12-02)", "history": 2, "peak_mb": mb,
                 "seconds": dt, "scenes_in_search": n})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="factors 1 and 4 only")
    ap.add_argument("--world", type=Path, default=Path(".cache/benchmarks"))
    args = ap.parse_args()

    found, geobox, year = searched_world(20, args.world)
    base = found.for_year(year)
    tile = (1, 1)  # a full 1024 x 1024 tile in the middle of the world
    factors = (1, 4) if args.quick else (1, 4, 16)
    rows = []
    for factor in factors:
        mb, dt, n = tile_peak(padded(base, factor), geobox, year, tile)
        rows.append({"scenes_in_search": n, "factor": factor, "footprint_selection": True, "peak_mb": mb,
                     "seconds": dt})
    def every_scene_to_every_tile(its, groups, gb, chunks, cap):
        return {ij: list(range(len(its))) for ij in np.ndindex(len(chunks[0]), len(chunks[1]))}

    with mock.patch.object(scenes, "items_per_tile", every_scene_to_every_tile):
        mb, dt, n = tile_peak(padded(base, factors[-1]), geobox, year, tile)
    rows.append({"scenes_in_search": n, "factor": factors[-1], "footprint_selection": False, "peak_mb": mb,
                 "seconds": dt})
    growth = rows[len(factors) - 1]["peak_mb"] / rows[0]["peak_mb"]
    hist = history_rows(args.world, 20)
    res = {"world": {"seed": 501, "size_km": 20, "year": year}, "tile_px": [1024, 1024],
           "rows": rows, "peak_growth_at_max_factor": growth, "target_growth": 1.1,
           "history": {"world": {"seed": 501, "size_km": 20, "years": [2020, 2021, 2022]}, "rows": hist},
           "machine": {"python": platform.python_version()}, "quick": args.quick}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cube_memory.json").write_text(json.dumps(res, indent=2) + "\n")
    print("| scenes in the search result | footprint selection | peak MB for one 1024² tile | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenes_in_search']} | {'yes' if r['footprint_selection'] else 'no (every scene to every tile)'}"
              f" | {r['peak_mb']:.0f} | {r['seconds']:.2f} |")
    print(f"\npeak growth with {factors[-1]}x the scenes: **{growth:.2f}** (target <= 1.1)")
    print("\n| 2022 cube of a three-season world | peak MB for one 1024² tile | seconds |\n|---|---|---|")
    for r in hist:
        print(f"| {r['cube']} | {r['peak_mb']:.0f} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
