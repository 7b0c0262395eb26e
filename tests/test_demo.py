"""`glacier-stac demo` end to end on a small world, as a user runs it: output, and no process left."""

import math
import os
import subprocess
import sys

import psutil
import pytest


def test_demo_runs_end_to_end_and_leaves_no_process(tmp_path):
    before = {p.pid for p in psutil.process_iter()}
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "glacier_stac.cli", "demo", "--size-km", "4", "--years", "2021-2022",
         "--seed", "7", "--out", str(tmp_path / "demo"), "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for sensor in ("sentinel-2", "sentinel-1", "landsat", "copdem"):
        assert sensor in out
    assert "glaciers (truth)" in out and "tiles of the global grid" in out
    assert "prediction EPSG32606 2021" in out and "prediction EPSG32606 2022" in out
    iou = float(out.split("IoU glacier")[1].split(",")[0])
    assert iou > 0.7
    assert "glacier_stac.open_predictions" in out
    import geopandas as gpd

    import glacier_stac

    preds = glacier_stac.open_predictions(tmp_path / "results" / "predictions.zarr")
    assert list(preds.year.values) == [2021, 2022] and preds.rio.crs is not None
    inv = gpd.read_parquet(tmp_path / "results" / "inventory.parquet")
    assert set(inv["year"].astype(int)) == {2021, 2022} and len(inv) > 0
    assert (tmp_path / "results" / "run-report.json").is_file()
    assert list((tmp_path / "results").glob("*.png"))
    leftover = [p for p in psutil.process_iter(["pid", "cmdline"])
                if p.info["pid"] not in before and p.info["cmdline"]
                and any(k in " ".join(p.info["cmdline"]) for k in ("rustac", "distributed", "glacier_stac"))]
    assert not leftover, [p.info["cmdline"] for p in leftover]


def test_demo_bad_input_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "glacier_stac.cli", "demo", "--size-km", "-3", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--size-km" in proc.stderr and "> 0 and <= 60" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("size_km", [4.0, 12.0, 20.0])
def test_demo_world_fills_the_fewest_tiles(size_km):
    """The demo moves its world onto the tile lattice: a run computes whole tiles, so a 20 km world costs
    2 x 2 tiles, not the 3 x 3 it straddles at the regime's centre."""
    from glacier_stac import grid
    from glacier_stac.demo import on_lattice
    from glacier_stac.synthetic.terrain import world_geobox
    from glacier_stac.synthetic.world import WorldConfig

    config = on_lattice(WorldConfig(size_km=size_km))
    box = world_geobox(config.size_km, config.resolution, config.center_lon, config.center_lat)
    fewest = math.ceil(size_km * 1000 / config.resolution / grid.TILE_PX)
    assert [len(c) for c in grid.tile_chunks(box)] == [fewest, fewest]
    moved = grid.utm_crs(config.center_lon, config.center_lat)
    assert moved == grid.utm_crs(WorldConfig().center_lon, WorldConfig().center_lat)  # same zone, same place
