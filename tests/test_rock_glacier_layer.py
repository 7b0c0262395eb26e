"""The rock-glacier layer of the inventory (issue 14): written with each annual update beside the glacier
inventory, ids kept across years, never glacier area, idempotent, and a rock glacier cut by a UTM zone
boundary joined into one polygon as glaciers are. Predictions go through the real Zarr store.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box
from test_inventory_store import LAT, MERIDIAN, _glaciers_4326, _write, _zone_prediction

from glacier_stac import inventory, obia, store
from glacier_stac.labels import CLASSES_VAR, Label


def _with_rock_glacier(ds, names: list[str], glaciers: gpd.GeoDataFrame, rock: str):
    """A zone's predictions with the outline named `rock` marked a rock glacier instead of ice."""
    import rasterio.features

    g = glaciers[glaciers.glac_id == rock].to_crs(ds.rio.crs)
    mask = rasterio.features.rasterize(g.geometry, out_shape=ds[CLASSES_VAR].shape, transform=ds.rio.transform(),
                                       all_touched=False).astype(bool)
    cls = ds[CLASSES_VAR].values.copy()
    on = mask & (cls == Label.CLEAN_ICE)
    cls[on] = Label.ROCK_GLACIER
    out = ds.copy()
    out[CLASSES_VAR] = (ds[CLASSES_VAR].dims, cls)
    out["glacier_probability"] = ds["glacier_probability"].where(~on, 0.2)
    out.attrs["classes"] = names
    return out


@pytest.fixture(scope="module")
def rock_store(tmp_path_factory):
    """Two years, two UTM zones: the glacier across the boundary is a rock glacier, the others are ice."""
    path = tmp_path_factory.mktemp("rock") / "preds.zarr"
    glaciers = _glaciers_4326()
    names = ["background", "clean_ice", "debris_ice", "water", "rock_glacier"]
    for year in (2021, 2023):
        for epsg, west in ((32606, True), (32607, False)):
            _write(path, _with_rock_glacier(_zone_prediction(glaciers, epsg, west), names, glaciers, "across"), year)
    return path, glaciers


def test_rock_glacier_across_a_zone_boundary_is_one_polygon(rock_store) -> None:
    path, glaciers = rock_store
    assert store.zones(path) == ["EPSG32606", "EPSG32607"]
    rocks = inventory.rock_glaciers_for(path, 2021, rules=obia.Rules(mmu_km2=0.01))
    assert len(rocks) == 1, rocks
    assert rocks.crs.to_epsg() == 4326 and rocks.is_valid.all() and (rocks.geom_type == "Polygon").all()
    truth = glaciers[glaciers.glac_id == "across"]
    area = obia.geodesic_area_perimeter(truth.geometry)[0][0] / 1e6
    assert rocks.area_km2.iat[0] == pytest.approx(area, rel=0.05)
    g, t = rocks.geometry.iat[0], truth.geometry.iat[0]
    assert g.intersection(t).area / g.union(t).area > 0.9
    assert rocks.utm_epsg.iat[0] == (32606 if g.centroid.x < MERIDIAN else 32607)


def test_merge_rock_glacier_zones_joins_touching_pieces_only() -> None:
    def piece(epsg: int, lon0: float, lon1: float, lat: float = LAT) -> gpd.GeoDataFrame:
        g = gpd.GeoSeries([box(lon0, lat, lon1, lat + 0.003)], crs=4326).to_crs(epsg)
        return gpd.GeoDataFrame({"obj": [1], "primeclass": ["rock_glacier"], "n_px": [100], "zmin_m": [10.0],
                                 "zmed_m": [20.0], "zmax_m": [30.0], "area_km2": [1.0]}, geometry=g.values, crs=epsg)

    joined = obia.merge_rock_glacier_zones([piece(32606, MERIDIAN - 0.01, MERIDIAN),
                                            piece(32607, MERIDIAN, MERIDIAN + 0.01)], 10.0)
    assert len(joined) == 1 and joined.n_px.iat[0] == 200
    whole = obia.geodesic_area_perimeter(gpd.GeoSeries([box(MERIDIAN - 0.01, LAT, MERIDIAN + 0.01, LAT + 0.003)],
                                                       crs=4326))[0][0] / 1e6
    assert joined.area_km2.iat[0] == pytest.approx(whole, abs=1e-3)  # reprojected straight edges
    apart = obia.merge_rock_glacier_zones([piece(32606, MERIDIAN - 0.01, MERIDIAN),
                                           piece(32607, MERIDIAN, MERIDIAN + 0.01, LAT + 0.01)], 10.0)
    assert len(apart) == 2
    empty = obia.merge_rock_glacier_zones([piece(32606, MERIDIAN - 0.01, MERIDIAN).iloc[:0]], 10.0)
    assert len(empty) == 0 and empty.crs.to_epsg() == 4326


def test_each_update_saves_the_rock_glacier_layer(tmp_path, rock_store) -> None:
    path, glaciers = rock_store
    inv_path = tmp_path / "inv.parquet"
    rules = obia.Rules(mmu_km2=0.01)
    inventory.add_year(inv_path, 2021, path, rules=rules)
    layer_path = inventory.rock_glacier_path(inv_path)
    assert layer_path.exists()
    one = inventory.read_rock_glaciers(inv_path)
    assert list(one.year) == [2021] and list(one.primeclass) == ["rock_glacier"]
    inventory.add_year(inv_path, 2023, path, rules=rules)
    both = inventory.read_rock_glaciers(inv_path)
    assert sorted(both.year) == [2021, 2023]
    assert both.rg_id.nunique() == 1, "the same rock glacier keeps its id across years"
    assert both.change_type.tolist() == ["new", "continued"]
    assert both.crs.to_epsg() == 4326
    # never glacier area: the glacier inventory holds the two ice glaciers, not the rock glacier
    inv = inventory.read(inv_path)
    assert (inv.groupby("year").size() == 2).all()
    assert not inv.geometry.intersects(both.geometry.iat[0]).any()
    meta = inventory.metadata(layer_path)
    assert meta["primeclass"] == "rock_glacier" and meta["years"]["2023"]["rock_glaciers"] == 1
    # rerunning a year adds nothing
    data = layer_path.read_bytes()
    assert inventory.add_year(inv_path, 2023, path, rules=rules).skipped
    assert layer_path.read_bytes() == data


def test_an_interrupted_update_leaves_no_duplicate_rock_glaciers(tmp_path, rock_store) -> None:
    """The layer is written before the inventory: an update that died between the two is redone whole,
    its rock glaciers replaced, not appended twice."""
    path, _ = rock_store
    inv_path = tmp_path / "inv.parquet"
    rules = obia.Rules(mmu_km2=0.01)
    inventory.add_year(inv_path, 2021, path, rules=rules)
    rocks = inventory.rock_glaciers_for(path, 2023, rules=rules)
    inventory._add_rock_glacier_year(inventory.rock_glacier_path(inv_path), 2023, rocks, "00")  # died after this
    assert sorted(inventory.read(inv_path).year.unique()) == [2021]
    inventory.add_year(inv_path, 2023, path, rules=rules)
    layer = inventory.read_rock_glaciers(inv_path)
    assert layer.groupby("year").size().to_dict() == {2021: 1, 2023: 1}


def test_a_four_class_model_gives_an_empty_layer_per_year(tmp_path) -> None:
    path = tmp_path / "preds.zarr"
    glaciers = _glaciers_4326()
    _write(path, _zone_prediction(glaciers, 32606, True), 2022)
    inv_path = tmp_path / "inv.parquet"
    inventory.add_year(inv_path, 2022, path, rules=obia.Rules(mmu_km2=0.01))
    layer = inventory.read_rock_glaciers(inv_path)
    assert len(layer) == 0 and list(layer.columns) == inventory.ROCK_GLACIER_COLUMNS
    assert inventory.metadata(inventory.rock_glacier_path(inv_path))["years"]["2022"]["rock_glaciers"] == 0
    assert np.isclose(inventory.read(inv_path).area_km2.sum(), inventory.read(inv_path).area_km2.sum())
