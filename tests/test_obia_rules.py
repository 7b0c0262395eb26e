"""OBIA object rules that decide where the CNN's mask is doubtful: debris linked to ice by hysteresis or cut
by the edge of the data, holes closed only by doubtful ice, the MMU on the pieces of one reference glacier."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr

from glacier_stac import obia
from glacier_stac.labels import Label

X0, Y0, RES = 500_000.0, 6_800_000.0, 10.0


def _ds(labels: np.ndarray, prob: np.ndarray | None = None) -> xr.Dataset:
    """A one-year prediction (UTM 6N, 10 m): probability 0.9 on glacier classes, 0.05 elsewhere, or `prob`."""
    h, w = labels.shape
    glacier = np.isin(labels, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
    p = np.where(glacier, 0.9, 0.05) if prob is None else prob
    return xr.Dataset(
        {"probability": (("y", "x"), p.astype(np.float32)),
         "classes": (("y", "x"), labels.astype(np.uint8)),
         "valid": (("y", "x"), np.ones((h, w), bool))},
        coords={"y": Y0 - RES * (np.arange(h) + 0.5), "x": X0 + RES * (np.arange(w) + 0.5)},
    ).rio.write_crs("EPSG:32606")


def _features(labels: np.ndarray, slope: float, debris_k: float) -> xr.DataArray:
    """Flat 1000 m terrain of one slope; debris pixels `debris_k` kelvin off bare ground (NaN: no reading)."""
    h, w = labels.shape
    ds = _ds(labels)
    lwir = np.where(labels == Label.DEBRIS_ICE, 280.0 + debris_k, 280.0)
    data = np.stack([np.full((h, w), 1000.0), np.full((h, w), slope), lwir]).astype(np.float32)
    return xr.DataArray(data, dims=("feature", "y", "x"),
                        coords={"feature": ["elevation", "slope", "lwir11"], "y": ds.y, "x": ds.x})


def _tongue(gap_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Clean ice, a 2-pixel strip under the threshold (probability `gap_prob`), then a debris tongue."""
    lab = np.zeros((80, 80), np.uint8)
    lab[10:40, 20:50] = Label.CLEAN_ICE
    lab[42:60, 25:45] = Label.DEBRIS_ICE  # 360 px = 0.036 km2, parted from the clean ice by rows 40-41
    prob = np.where(lab > 0, 0.9, 0.05)
    prob[40:42, 25:45] = gap_prob
    return lab, prob


def test_cold_steep_debris_joined_to_ice_through_weak_pixels_is_kept():
    """A tongue parted from its clean ice by a strip where the probability dips under the threshold is kept
    (hysteresis at Rules.link_threshold); rock behind a confident gap, just as cold and steep, is not."""
    steep_cold = None
    for gap, expected in ((0.3, 2), (0.05, 1)):
        lab, prob = _tongue(gap)
        steep_cold = _features(lab, 35.0, -4.0)
        got = obia.outlines(_ds(lab, prob), steep_cold)
        assert len(got) == expected, (gap, got.attrs["obia"])
    lab, prob = _tongue(0.3)
    warm = _features(lab, 35.0, 0.0)
    assert len(obia.outlines(_ds(lab, prob), warm)) == 1  # linked but warm: a rock face, not buried ice
    assert steep_cold is not None


def test_cold_debris_cut_by_the_edge_of_the_data_is_kept():
    """Debris cut by the region's edge may belong to ice beyond it: kept when cold, even on a steep slope;
    the same patch inside the region, with nothing around it, is dropped."""
    lab = np.zeros((80, 80), np.uint8)
    lab[0:15, 30:50] = Label.DEBRIS_ICE  # 300 px on the northern edge
    assert len(obia.outlines(_ds(lab), _features(lab, 35.0, -4.0))) == 1
    assert len(obia.outlines(_ds(lab), _features(lab, 35.0, 0.0))) == 0  # warm: rock, edge or not
    inner = np.roll(lab, 30, axis=0)
    assert len(obia.outlines(_ds(inner), _features(inner, 35.0, -4.0))) == 0
    # next to a no-data gap (a cloud, a swath edge) counts as the edge of the data too
    ds = _ds(inner)
    ds["valid"][20:30, :] = False
    assert len(obia.outlines(ds, _features(inner, 35.0, -4.0))) == 1


def test_unknown_temperature_is_no_reason_to_drop_gentle_debris():
    lab = np.zeros((80, 80), np.uint8)
    lab[30:45, 30:50] = Label.DEBRIS_ICE
    assert len(obia.outlines(_ds(lab), _features(lab, 8.0, np.nan))) == 1
    assert len(obia.outlines(_ds(lab), _features(lab, 8.0, 0.0))) == 0  # known and warm: dropped
    assert len(obia.outlines(_ds(lab), _features(lab, 35.0, np.nan))) == 0  # steep, nothing else for it


def test_ground_a_thermal_scene_saw_under_snow_is_no_thermal_reference():
    """Most of the bare ground lay under snow in a Landsat scene (it reads 272 K, not rock's 280 K): the
    reference at that elevation would sink below the debris, and the cold tongue (-4 K against rock) would read
    warm and be dropped as a rock face. Leaving out the ground the thermal scenes flag (`landsat_snow`) keeps it;
    the same snowy readings without the count drop it (the failure the count prevents)."""
    lab, prob = _tongue(0.3)
    feats = _features(lab, 35.0, -4.0)
    snow = np.zeros(lab.shape, np.float32)
    snow[:, :] = (lab == 0) & (np.arange(80)[None, :] < 56)  # 70 % of the ground, left of x = 56
    lwir = feats.sel(feature="lwir11").values
    snowy = feats.copy(data=np.concatenate([feats.values[:2], np.where(snow > 0, 272.0, lwir)[None]]))
    counted = xr.concat([snowy, snowy.isel(feature=[0]).copy(data=snow[None]).assign_coords(feature=["landsat_snow"])],
                        dim="feature")
    assert len(obia.outlines(_ds(lab, prob), counted)) == 2
    assert len(obia.outlines(_ds(lab, prob), snowy)) == 1  # the snowy ground as reference: debris reads warm


def _holed(ring_prob: float) -> gpd.GeoDataFrame:
    lab = np.zeros((60, 60), np.uint8)
    lab[5:55, 5:55] = Label.CLEAN_ICE
    lab[25:30, 25:31] = Label.BACKGROUND  # a 30 px hole, under the MMU
    prob = np.where(lab > 0, 0.95, 0.05)
    ring = np.zeros(lab.shape, bool)
    ring[22:33, 22:34] = True
    prob[ring & (lab > 0)] = ring_prob  # the ice closing it off: 132 px with the hole, over the MMU
    return obia.outlines(_ds(lab, prob))


def test_hole_closed_off_only_by_doubtful_ice_is_not_filled():
    """A hole under the MMU is filled when sure ice closes around it; when the ice around it is doubtful,
    the hole with that ice is over the MMU: a piece of a larger ice-free area, kept as a hole."""
    sure, doubtful = _holed(0.9), _holed(0.6)
    assert len(sure) == len(doubtful) == 1
    assert len(sure.geometry.iloc[0].interiors) == 0
    assert sure.geometry.iloc[0].area == pytest.approx(50 * 50 * 100)
    assert len(doubtful.geometry.iloc[0].interiors) == 1
    assert doubtful.geometry.iloc[0].area == pytest.approx((50 * 50 - 30) * 100)


def test_mmu_applies_to_the_pieces_of_one_reference_glacier_together():
    """Two pieces of 60 px (each under the MMU of 100 px) inside one reference outline are that glacier and
    kept, as one row; without a reference, or with the pieces outside it, each is under the MMU and dropped."""
    lab = np.zeros((60, 60), np.uint8)
    lab[10:16, 10:20] = Label.CLEAN_ICE
    lab[18:24, 10:20] = Label.CLEAN_ICE  # 2 px apart
    ds = _ds(lab)
    ref = shapely.box(X0 + 5 * RES, Y0 - 30 * RES, X0 + 30 * RES, Y0 - 5 * RES)
    divides = gpd.GeoSeries([ref], index=["RGI-1"], crs="EPSG:32606")
    got = obia.outlines(ds, divides=divides)
    assert len(got) == 1 and got.ref_id.iloc[0] == "RGI-1"
    assert got.geometry.iloc[0].area == pytest.approx(120 * 100)
    assert len(obia.outlines(ds)) == 0
    elsewhere = gpd.GeoSeries([shapely.box(X0 + 40 * RES, Y0 - 50 * RES, X0 + 55 * RES, Y0 - 40 * RES)],
                              index=["RGI-2"], crs="EPSG:32606")
    assert len(obia.outlines(ds, divides=elsewhere)) == 0


def test_rule_thresholds_are_checked():
    with pytest.raises(ValueError, match="link_threshold"):
        obia.Rules(link_threshold=0.6)
    with pytest.raises(ValueError, match="hole_confident"):
        obia.Rules(hole_confident=0.4)


def test_hole_outside_every_reference_glacier_stays_open():
    """Two reference glaciers side by side, the mapped ice joined around a small ice-free gap between them
    (under the MMU, closed by sure ice): the gap is no hole of a glacier but ground the reference keeps apart,
    so it stays open; the same hole inside one reference outline, or without a reference, is filled."""
    lab = np.zeros((60, 60), np.uint8)
    lab[10:50, 10:50] = Label.CLEAN_ICE
    lab[28:32, 28:32] = Label.BACKGROUND  # 16 px gap, under the MMU of 100 px
    ds = _ds(lab)
    west = shapely.box(X0 + 10 * RES, Y0 - 50 * RES, X0 + 28 * RES, Y0 - 10 * RES)
    east = shapely.box(X0 + 32 * RES, Y0 - 50 * RES, X0 + 50 * RES, Y0 - 10 * RES)
    apart = gpd.GeoSeries([west, east], index=["RGI-W", "RGI-E"], crs="EPSG:32606")
    one = gpd.GeoSeries([shapely.box(X0 + 10 * RES, Y0 - 50 * RES, X0 + 50 * RES, Y0 - 10 * RES)], index=["RGI-1"],
                        crs="EPSG:32606")
    total = lambda g: float(g.geometry.area.sum())  # noqa: E731
    assert total(obia.outlines(ds)) == pytest.approx(40 * 40 * 100)
    assert total(obia.outlines(ds, divides=one)) == pytest.approx(40 * 40 * 100)
    assert total(obia.outlines(ds, divides=apart)) == pytest.approx((40 * 40 - 16) * 100)
