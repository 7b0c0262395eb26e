"""The inventory through the real Zarr store: `add_year` reading `store.open_predictions`, a world that
straddles two UTM zones (a glacier crossing the boundary is one polygon), and GDAL/OGR read-back.

Predictions are a synthetic world's truth with the CNN's errors (`synthetic.noisy`), written with
`store.write` (128 px tiles) and computed by Dask; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import dask
import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import xarray as xr
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import Polygon, box

from glacier_stac import inventory, store
from glacier_stac.grid import geobox_for, pixel_centres
from glacier_stac.labels import CLASSES_VAR, NODATA_CLASS, PROBABILITY, VALID, Label
from glacier_stac.synthetic import noisy, truth
from glacier_stac.synthetic.world import WorldConfig, build_world

YEARS = (2021, 2023)
TILE = 128


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=3, size_km=4, years=YEARS))


@pytest.fixture(scope="module")
def preds(world):
    return noisy.predictions(world)


@pytest.fixture(scope="module")
def reference(world):
    return truth.outlines(world, YEARS[0]).rename(columns={"glacier_id": "glac_id"}).to_crs(4326)


def _store_pred(preds: xr.Dataset, year: int) -> xr.Dataset:
    """A year of predictions as `infer.predict` hands them to `store.write` (glacier_probability named so)."""
    one = preds.sel(year=year)
    return xr.Dataset({"glacier_probability": one[PROBABILITY], CLASSES_VAR: one[CLASSES_VAR], VALID: one[VALID]},
                      attrs={"items": {"sentinel-2": f"S2_{year}_A,S2_{year}_B"}}).rio.write_crs(preds.rio.crs)


def _write(path, pred: xr.Dataset, year: int, only: int | None = None) -> store.WritePlan:
    run_id = store.record_run(path, {"test": "inventory-store"})
    wp = store.write(pred, year, path, run_id=run_id, tile_px=TILE)
    dask.compute(*(wp.tasks if only is None else wp.tasks[:only]), scheduler="threads")
    return wp


@pytest.fixture(scope="module")
def world_store(tmp_path_factory, preds):
    path = tmp_path_factory.mktemp("store") / "preds.zarr"
    for y in YEARS:
        _write(path, _store_pred(preds, y), y)
    return path


def test_add_year_through_the_store_equals_in_memory(tmp_path, world, preds, reference, world_store):
    """add_year reading the store (open_predictions, cut to the world) gives the rows in-memory predictions give."""
    aoi = world.geobox.extent
    from_store, in_memory = tmp_path / "store.parquet", tmp_path / "memory.parquet"
    for y in YEARS:
        feats = noisy.features(world, y)
        got = inventory.add_year(from_store, y, world_store, features=feats, reference=reference, aoi=aoi)
        assert got.added > 0 and not got.skipped
        inventory.add_year(in_memory, y, preds, features=feats, reference=reference)
    a, b = inventory.read(from_store), inventory.read(in_memory)
    assert len(a) == len(b) and a.glac_id.tolist() == b.glac_id.tolist()
    assert a.geometry.to_wkb().tolist() == b.geometry.to_wkb().tolist()
    np.testing.assert_allclose(a.area_km2, b.area_km2, rtol=1e-9)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1 / store.PROB_SCALE)
    # without an AOI the store is read over its planned tiles (no-data around the world): same outlines
    whole = tmp_path / "whole.parquet"
    inventory.add_year(whole, YEARS[0], world_store, reference=reference)
    c = inventory.read(whole)
    assert c.glac_id.tolist() == a[a.year == YEARS[0]].glac_id.tolist()
    assert (c.utm_epsg == 32606).all()


def test_store_path_errors_name_the_problem(tmp_path, preds, world_store):
    path = tmp_path / "inv.parquet"
    with pytest.raises(inventory.InventoryError, match=r"no predictions for year 2019 in the store .*preds\.zarr; "
                                                       r"it holds \[2021, 2023\]"):
        inventory.add_year(path, 2019, world_store)
    assert not path.exists()
    with pytest.raises(inventory.InventoryError, match="no prediction store at"):
        inventory.add_year(path, YEARS[0], tmp_path / "nowhere.zarr")
    inventory.add_year(path, YEARS[0], world_store)
    data = path.read_bytes()
    again = inventory.add_year(path, YEARS[0], world_store)
    assert again.skipped and again.added == 0 and path.read_bytes() == data
    with pytest.raises(inventory.InventoryError, match=f"year {YEARS[0]} is already in the inventory"):
        inventory.add_year(path, YEARS[0], world_store, if_exists="error")
    # a year whose tiles are not all written: refused by the store, naming it; the inventory untouched
    partial = tmp_path / "partial.zarr"
    _write(partial, _store_pred(preds, YEARS[1]), YEARS[1], only=2)
    with pytest.raises(store.StoreError, match=f"incomplete: {YEARS[1]}: .* tile"):
        inventory.add_year(path, YEARS[1], partial)
    assert path.read_bytes() == data
    assert not list(tmp_path.glob(".*part"))


# --------------------------------------------------------------------------- two UTM zones

MERIDIAN = -144.0  # the boundary of UTM zones 6 (EPSG:32606) and 7 (EPSG:32607)
LAT = 61.2


def _glaciers_4326() -> gpd.GeoDataFrame:
    """Three glaciers: one across the zone boundary, one wholly in each zone."""
    def blob(lon, lat, dlon, dlat):
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = 1 + 0.15 * np.sin(3 * t)
        return Polygon(zip(lon + dlon * r * np.cos(t), lat + dlat * r * np.sin(t), strict=True))

    return gpd.GeoDataFrame({"glac_id": ["across", "west", "east"]},
                            geometry=[blob(MERIDIAN + 0.002, LAT, 0.012, 0.004),
                                      blob(MERIDIAN - 0.025, LAT + 0.008, 0.006, 0.003),
                                      blob(MERIDIAN + 0.025, LAT - 0.008, 0.006, 0.003)], crs=4326)


def _zone_prediction(glaciers: gpd.GeoDataFrame, epsg: int, west: bool) -> xr.Dataset:
    """Predictions in one zone's lattice over its side of the boundary (the other side: no data)."""
    area = box(MERIDIAN - 0.045, LAT - 0.02, MERIDIAN + 0.045, LAT + 0.02)
    side = box(MERIDIAN - 0.045, LAT - 0.02, MERIDIAN, LAT + 0.02) if west else \
        box(MERIDIAN, LAT - 0.02, MERIDIAN + 0.045, LAT + 0.02)
    from odc.geo import geom

    gb: GeoBox = geobox_for(geom.Geometry(side, "EPSG:4326"), crs=f"EPSG:{epsg}")
    assert area.contains(side)
    ice = rasterio.features.rasterize(glaciers.to_crs(epsg).geometry, out_shape=gb.shape, transform=gb.affine,
                                      all_touched=False).astype(bool)
    y, x = pixel_centres(gb)
    lon, _ = Transformer.from_crs(epsg, 4326, always_xy=True).transform(*np.meshgrid(x, y))
    mine = (lon < MERIDIAN) if west else (lon >= MERIDIAN)
    prob = np.where(mine, np.where(ice, 0.9, 0.1), np.nan).astype(np.float32)
    cls = np.where(mine, np.where(ice, Label.CLEAN_ICE, Label.BACKGROUND), NODATA_CLASS).astype(np.uint8)
    ds = xr.Dataset({"glacier_probability": (("y", "x"), prob), CLASSES_VAR: (("y", "x"), cls),
                     VALID: (("y", "x"), mine)}, coords={"y": y, "x": x})
    return ds.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(gb.affine)


@pytest.fixture(scope="module")
def two_zone_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("zones") / "preds.zarr"
    glaciers = _glaciers_4326()
    for epsg, west in ((32606, True), (32607, False)):
        _write(path, _zone_prediction(glaciers, epsg, west), 2023)
    return path, glaciers


def test_glacier_across_a_utm_zone_boundary_is_one_polygon(tmp_path, two_zone_store):
    path, glaciers = two_zone_store
    assert store.zones(path) == ["EPSG32606", "EPSG32607"]
    parts = inventory.zone_predictions(path, 2023)
    assert [p.rio.crs.to_epsg() for p in parts] == [32606, 32607]
    inv_path = tmp_path / "inv.parquet"
    inventory.add_year(inv_path, 2023, path, rules=inventory.obia.Rules(mmu_km2=0.01))
    inv = inventory.read(inv_path)
    assert len(inv) == 3, inv[["glac_id", "area_km2", "utm_epsg"]]
    assert inv.is_valid.all() and (inv.geom_type == "Polygon").all()
    truth_area = inventory.obia.geodesic_area_perimeter(glaciers.geometry)[0] / 1e6
    for _, g in inv.iterrows():  # each mapped glacier is one truth glacier, its area within its uncertainty
        hit = glaciers[glaciers.intersects(g.geometry)]
        assert len(hit) == 1
        k = hit.index[0]
        assert abs(g.area_km2 - truth_area[k]) <= g.area_unc_km2, (hit.glac_id.iat[0], g.area_km2, truth_area[k])
        iou = (g.geometry.intersection(hit.geometry.iat[0]).area / g.geometry.union(hit.geometry.iat[0]).area)
        assert iou > 0.9
        # the zone of each glacier is the zone of its centroid
        assert g.utm_epsg == (32606 if g.cenlon < MERIDIAN else 32607)
    meta = inventory.metadata(inv_path)["years"]["2023"]["obia"]
    assert meta["joined"] == 1 and len(meta["zones"]) == 2


def test_merge_zones_joins_only_the_same_reference_glacier():
    """Two pieces across a boundary that belong to different reference glaciers stay two glaciers."""
    from glacier_stac import obia

    def piece(epsg, lon0, lon1, ref):
        g = gpd.GeoSeries([box(lon0, LAT, lon1, LAT + 0.005)], crs=4326).to_crs(epsg)
        row = {c: 1.0 for c in obia.WEIGHTED} | {"n_px": 100, "zmin_m": 1.0, "zmax_m": 2.0, "aspect_deg": 0.0,
                                                   "term_type": 0, "termlon": lon0, "termlat": LAT,
                                                   "area_km2": 1.0, "area_unc_km2": 0.1, "perimeter_km": 1.0,
                                                   "doubt_px": 3.0, "cenlon": lon0, "cenlat": LAT, "obj": 1,
                                                   "ref_id": ref}
        return gpd.GeoDataFrame([row], geometry=g.values, crs=epsg)

    same = obia.merge_zones([piece(32606, MERIDIAN - 0.01, MERIDIAN, "a"),
                             piece(32607, MERIDIAN, MERIDIAN + 0.01, "a")], 10.0)
    assert len(same) == 1 and same.n_px.iat[0] == 200
    assert abs(same.area_km2.iat[0] - obia.geodesic_area_perimeter(
        gpd.GeoSeries([box(MERIDIAN - 0.01, LAT, MERIDIAN + 0.01, LAT + 0.005)], crs=4326))[0][0] / 1e6) < 1e-3
    other = obia.merge_zones([piece(32606, MERIDIAN - 0.01, MERIDIAN, "a"),
                              piece(32607, MERIDIAN, MERIDIAN + 0.01, "b")], 10.0)
    assert len(other) == 2


# --------------------------------------------------------------------------- GDAL / OGR


def _ogr_parquet() -> str | None:
    """How GDAL/OGR can read Parquet here: 'pyogrio', 'ogrinfo', or None."""
    import pyogrio

    if "Parquet" in pyogrio.list_drivers():
        return "pyogrio"
    exe = shutil.which("ogrinfo")
    if exe and "Parquet" in subprocess.run([exe, "--formats"], capture_output=True, text=True).stdout:
        return "ogrinfo"
    return None


def test_gdal_ogr_reads_the_geoparquet(tmp_path, preds, reference):
    how = _ogr_parquet()
    if how is None:
        import pyogrio

        pytest.skip(f"GDAL's Parquet driver is absent: pyogrio's GDAL {pyogrio.__gdal_version_string__} was built "
                    "without Arrow/Parquet and there is no ogrinfo with it on PATH")
    path = tmp_path / "inv.parquet"
    for y in YEARS:
        inventory.add_year(path, y, preds, reference=reference)
    inv = inventory.read(path)
    if how == "pyogrio":
        import pyogrio

        info = pyogrio.read_info(path)
        assert info["features"] == len(inv) and "4326" in info["crs"]
        got = pyogrio.read_dataframe(path, bbox=tuple(inv.total_bounds))
        assert len(got) == len(inv)
    else:
        out = subprocess.run(["ogrinfo", "-so", "-json", str(path)], capture_output=True, text=True, check=True)
        layer = json.loads(out.stdout)["layers"][0]
        assert layer["featureCount"] == len(inv)
