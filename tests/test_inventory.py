"""The glacier inventory: against a synthetic world's truth, GeoParquet read back by geopandas and DuckDB,
idempotent / concurrent / atomic annual updates, clear errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time

import dask.array as da
import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
from shapely.geometry import Polygon

from glacier_stac import inventory
from glacier_stac.synthetic import noisy, truth
from glacier_stac.synthetic.world import WorldConfig, build_world

YEARS = (2021, 2023)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=3, size_km=4, years=YEARS))


@pytest.fixture(scope="module")
def preds(world):
    return noisy.predictions(world)


@pytest.fixture(scope="module")
def reference(world):
    """Truth outlines of the first year, in another CRS than the predictions (EPSG:4326)."""
    return truth.outlines(world, YEARS[0]).rename(columns={"glacier_id": "glac_id"}).to_crs(4326)


def test_inventory_matches_truth_and_reads_back(tmp_path, world, preds, reference):
    path = tmp_path / "inv.parquet"
    for y in YEARS:
        inventory.add_year(path, y, preds, features=noisy.features(world, y), reference=reference)
    inv = gpd.read_parquet(path)
    assert inv.crs.to_epsg() == 4326
    assert set(inventory.COLUMNS) <= set(inv.columns)
    assert not inv.duplicated(["glac_id", "year"]).any()
    assert set(inv.glac_id) == {str(g) for g in reference.glac_id}  # ids kept from the reference
    assert inv.is_valid.all()
    # per-glacier change rate within truth ± uncertainty for >= 90% of glaciers larger than 0.1 km2
    tr = truth.outlines_all_years(world).pivot_table(index="glacier_id", columns="year", values="area_m2") / 1e6
    ch = inventory.change_table(inv).set_index("glac_id")
    big = [g for g in tr.index if tr.at[g, YEARS[0]] > 0.1]
    assert len(big) >= 4
    ok = [abs(ch.at[str(g), "rate_km2_yr"] - (tr.at[g, YEARS[1]] - tr.at[g, YEARS[0]]) / (YEARS[1] - YEARS[0]))
          <= ch.at[str(g), "rate_unc_km2_yr"] for g in big]
    assert np.mean(ok) >= 0.9, ok
    # per-glacier area within 3% of the truth
    for _, r in inv.iterrows():
        assert abs(r.area_km2 / tr.at[int(r.glac_id), int(r.year)] - 1) < 0.03, (r.glac_id, r.year)
    # metadata: GeoParquet 1.1 with a bbox covering column, the area uncertainty method
    geo = pq.read_schema(path).metadata[b"geo"].decode()
    assert '"version": "1.1.0"' in geo and '"covering"' in geo and '"bbox"' in geo
    assert "buffer" in inventory.metadata(path)["area_uncertainty"]
    # DuckDB: a bbox-filtered query on the covering column (built-in read_parquet, no extension)
    west = float(inv.cenlon.median())
    got = duckdb.execute("SELECT glac_id, year FROM read_parquet(?) WHERE bbox.xmax < ? ORDER BY year, glac_id",
                         [str(path), west]).fetchall()
    want = inv[inv.geometry.bounds.maxx < west].sort_values(["year", "glac_id"])
    assert got == list(zip(want.glac_id, want.year, strict=True)) and 0 < len(got) < len(inv)
    # region summary and plots
    s = inventory.summary(inv)
    assert len(s) == 1 and s.rate_km2_yr.iloc[0] < 0
    for png in inventory.plot(inv, tmp_path / "plots"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _counting(preds, computed: list[int]):
    """The predictions with every block computation recorded by year (to count what an update reads)."""
    out = preds.copy()
    for name in ("probability", "classes", "valid"):
        arr = da.from_array(preds[name].values, chunks=(1, 200, 200))

        def record(block, block_info=None):
            computed.append(int(preds.year.values[block_info[0]["chunk-location"][0]]))
            return block

        out[name] = (preds[name].dims, arr.map_blocks(record, dtype=arr.dtype))
    return out


def test_update_idempotent_and_never_recomputes_earlier_years(tmp_path, preds):
    path = tmp_path / "inv.parquet"
    computed: list[int] = []
    counted = _counting(preds, computed)
    first = inventory.add_year(path, YEARS[0], counted)
    assert first.added > 0 and set(computed) == {YEARS[0]}
    before = inventory.read(path)
    computed.clear()
    inventory.add_year(path, YEARS[1], counted)
    assert computed and set(computed) == {YEARS[1]}  # the earlier year was not read again
    after = inventory.read(path)
    old_rows = after[after.year == YEARS[0]].reset_index(drop=True)
    assert old_rows.drop(columns="geometry").equals(before.drop(columns="geometry"))
    assert old_rows.geometry.to_wkb().tolist() == before.geometry.to_wkb().tolist()
    # ids without a reference: from the first year, kept by overlap
    assert set(after[after.year == YEARS[1]].glac_id) <= set(before.glac_id)
    # rerun: nothing added, the file's bytes unchanged, no leftovers
    data = path.read_bytes()
    computed.clear()
    again = inventory.add_year(path, YEARS[1], counted)
    assert again.skipped and again.added == 0 and computed == []
    assert path.read_bytes() == data
    with pytest.raises(inventory.InventoryError, match=f"year {YEARS[1]} is already in the inventory"):
        inventory.add_year(path, YEARS[1], counted, if_exists="error")
    assert not list(tmp_path.glob(".*part"))


CHILD = textwrap.dedent("""
    import pickle, sys, time
    from pathlib import Path
    from glacier_stac import inventory
    inv, preds_file, year, flags = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    preds = pickle.loads(Path(preds_file).read_bytes())
    (flags / f"ready-{sys.argv[5]}").touch()
    while not (flags / "go").exists():
        time.sleep(0.01)
    print(inventory.add_year(inv, year, preds))
""")


def test_two_processes_updating_at_once(tmp_path, preds):
    """Three real processes start updates at the same moment (two of the same year): no lost year, no duplicate."""
    path = tmp_path / "inv.parquet"
    pfile = tmp_path / "preds.pkl"
    pfile.write_bytes(pickle.dumps(preds.load()))
    flags = tmp_path / "flags"
    flags.mkdir()
    years = [YEARS[0], YEARS[1], YEARS[1]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(pfile), str(y), str(flags), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, y in enumerate(years)]
    deadline = time.monotonic() + 120
    while len(list(flags.glob("ready-*"))) < len(procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (flags / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    inv = inventory.read(path)
    assert sorted(set(inv.year)) == list(YEARS)
    assert not inv.duplicated(["glac_id", "year"]).any()
    assert sum("skipped=True" in o for o, _ in outs) == 1


def test_clear_errors_and_nothing_half_written(tmp_path, preds, reference):
    path = tmp_path / "inv.parquet"
    with pytest.raises(inventory.InventoryError, match=r"no predictions for year 2019; the predictions hold \[2021"):
        inventory.add_year(path, 2019, preds)
    assert not path.exists()
    with pytest.raises(inventory.InventoryError, match="empty"):
        inventory.add_year(path, YEARS[0], preds, reference=reference.iloc[:0])
    bowtie = reference.copy()
    bowtie.loc[bowtie.index[0], "geometry"] = Polygon([(-147, 61.2), (-146.99, 61.21), (-146.99, 61.2),
                                                       (-147, 61.21)])
    with pytest.raises(inventory.InventoryError, match=r"invalid geometries for \['1'\]"):
        inventory.add_year(path, YEARS[0], preds, reference=bowtie)
    empty_geom = reference.copy()
    empty_geom.loc[empty_geom.index[1], "geometry"] = Polygon()
    with pytest.raises(inventory.InventoryError, match=r"empty geometries for \['2'\]"):
        inventory.add_year(path, YEARS[0], preds, reference=empty_geom)
    with pytest.raises(inventory.InventoryError, match="no CRS"):
        inventory.add_year(path, YEARS[0], preds, reference=reference.set_crs(None, allow_override=True))
    assert not path.exists()
    # a corrupt inventory: a clear error, the file untouched, no temporary file left
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(inventory.InventoryError, match="cannot read inventory .*inv.parquet"):
        inventory.add_year(path, YEARS[0], preds)
    assert path.read_bytes() == b"PAR1 this is not a parquet file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.parquet", "inv.parquet.lock"]


def test_split_and_merge_recorded():
    """Identity by overlap without a reference: one parent, two children = split; two parents, one child = merge."""
    crs = "EPSG:32606"
    prev = gpd.GeoDataFrame({"glac_id": ["GS-00-00001", "GS-00-00002"]},
                            geometry=[Polygon([(0, 0), (100, 0), (100, 100), (0, 100)]),
                                      Polygon([(300, 0), (400, 0), (400, 100), (300, 100)])], crs=crs)
    new = gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (60, 0), (60, 100), (0, 100)]),  # larger half of 1
                                     Polygon([(70, 0), (100, 0), (100, 100), (70, 100)]),  # smaller half of 1
                                     Polygon([(250, 0), (400, 0), (400, 100), (250, 100)])], crs=crs)
    got = inventory.assign_ids(new, prev, "00", 3)
    assert got.glac_id.tolist() == ["GS-00-00001", "GS-00-00003", "GS-00-00002"]
    assert got.change_type.tolist() == ["split", "split", "continued"]
    assert got.parent_ids.tolist() == ["GS-00-00001", "GS-00-00001", ""]
    merged = gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (400, 0), (400, 100), (0, 100)])], crs=crs)
    got = inventory.assign_ids(merged, prev, "00", 3)
    assert got.change_type.tolist() == ["merge"]
    assert got.parent_ids.tolist() == ["GS-00-00001,GS-00-00002"]


def test_cli_inventory_summary_and_plot(tmp_path, preds):
    path = tmp_path / "inv.parquet"
    for y in YEARS:
        inventory.add_year(path, y, preds, region="01")
    cmd = [sys.executable, "-m", "glacier_stac.cli", "inventory"]
    out = subprocess.run([*cmd, "summary", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split()[:2] == ["region", "years"] and "rate_km2_yr" in header
    assert row.split()[:2] == ["01", "2021-2023"] and float(row.split()[5]) < 0
    plots = subprocess.run([*cmd, "plot", str(path), "--out", str(tmp_path / "png")], capture_output=True, text=True,
                           timeout=120)
    assert plots.returncode == 0, plots.stderr
    assert sorted(p.name for p in (tmp_path / "png").glob("*.png")) == ["area_by_year.png", "change_map.png"]
    bad = subprocess.run([*cmd, "summary", str(tmp_path / "missing.parquet")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "no inventory at" in bad.stderr and "Traceback" not in bad.stderr
