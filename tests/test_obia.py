"""OBIA: seam-free objects, object rules, MMU, holes, valid polygons, areas — against a synthetic world's truth."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from glacier_stac import obia
from glacier_stac.labels import Label
from glacier_stac.synthetic import noisy, truth
from glacier_stac.synthetic.world import WorldConfig, build_world

YEAR = 2021


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=3, size_km=4, years=(YEAR, 2023)))


def _ds(labels: np.ndarray, chunks: int | None = None, res: float = 10.0) -> xr.Dataset:
    """A one-year prediction Dataset (UTM 6N, 10 m) from a label array."""
    h, w = labels.shape
    glacier = np.isin(labels, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
    ds = xr.Dataset(
        {"probability": (("y", "x"), np.where(glacier, 0.9, 0.05).astype(np.float32)),
         "classes": (("y", "x"), labels.astype(np.uint8)),
         "valid": (("y", "x"), np.ones((h, w), bool))},
        coords={"y": 6_800_000 - res * (np.arange(h) + 0.5), "x": 500_000 + res * (np.arange(w) + 0.5)},
    ).rio.write_crs("EPSG:32606")
    return ds.chunk({"y": chunks, "x": chunks}) if chunks else ds


def _features(labels: np.ndarray, slope: float, lwir_offset: np.ndarray) -> xr.DataArray:
    h, w = labels.shape
    ds = _ds(labels)
    data = np.stack([np.full((h, w), 1000.0), np.full((h, w), slope), 280.0 + lwir_offset]).astype(np.float32)
    return xr.DataArray(data, dims=("feature", "y", "x"),
                        coords={"feature": ["elevation", "slope", "lwir11"], "y": ds.y, "x": ds.x})


def test_seam_free_byte_identical_whatever_the_chunking(world):
    """A glacier across chunk faces is one polygon, and the bytes do not depend on the chunking."""
    ds = noisy.predictions(world, (YEAR,)).sel(year=YEAR)
    feats = noisy.features(world, YEAR)
    chunkings = [64, (100, 150), 137]
    results = []
    for c in chunkings:
        cy, cx = (c, c) if isinstance(c, int) else c
        dsc = ds.chunk({"y": cy, "x": cx})
        results.append((dsc.probability.chunks, obia.outlines(dsc, feats)))
    assert len({chunks for chunks, _ in results}) == len(chunkings)  # the chunkings really differ
    ref = obia.outlines(ds, feats)  # NumPy, one block
    big = ref.loc[ref.area_km2.idxmax()].geometry
    minx, miny, maxx, maxy = big.bounds
    x0 = float(ds.x[0]) - 5
    assert any(minx < x0 + k * 64 * 10 < maxx for k in range(1, 7))  # the largest glacier crosses chunk faces
    for _, got in results:
        assert got.geometry.to_wkb().tolist() == ref.geometry.to_wkb().tolist()
        assert got.drop(columns="geometry").equals(ref.drop(columns="geometry"))


def test_label_joins_objects_across_chunks():
    mask = np.zeros((40, 40), bool)
    mask[5:35, 18:22] = True  # one bar across the horizontal and vertical chunk faces at 20
    mask[19:21, 5:35] = True
    import dask.array as da

    lab, n = obia.label(da.from_array(mask, chunks=20))
    assert n == 1 and (lab[mask] == 1).all() and (lab[~mask] == 0).all()


def test_obia_removes_spurious_debris_that_thresholding_keeps(world):
    noise = noisy.Noise(seed=1, blobs=4)
    ds = noisy.predictions(world, (YEAR,), noise).sel(year=YEAR)
    tr = truth.outlines(world, YEAR)
    truth_union = tr.union_all()
    raw = obia.threshold_polygons(ds)
    raw_big = raw[raw.area_km2 >= 0.01]
    raw_spurious = raw_big[~raw_big.intersects(truth_union)]
    assert len(raw_spurious) >= noise.blobs  # thresholding keeps the blobs (above the MMU: only a rule removes them)
    got = obia.outlines(ds, noisy.features(world, YEAR), divides=tr.set_index("glacier_id").geometry)
    assert not (~got.intersects(truth_union)).any()
    assert len(got) < len(raw)
    # and the glaciers themselves are right: IoU and area per truth glacier
    for gid, t in tr.set_index("glacier_id").geometry.items():
        g = got[got.ref_id == gid]
        assert len(g) == 1, gid
        geom = g.geometry.iloc[0]
        assert geom.intersection(t).area / geom.union(t).area > 0.93, gid
        assert abs(geom.area / t.area - 1) < 0.03, gid


def test_debris_touching_clean_ice_is_kept_isolated_debris_only_if_gentle_and_cold():
    lab = np.zeros((80, 80), np.uint8)
    lab[10:40, 10:40] = Label.CLEAN_ICE
    lab[40:50, 10:40] = Label.DEBRIS_ICE  # a tongue: kept through its clean ice
    lab[60:75, 55:75] = Label.DEBRIS_ICE  # isolated "debris": 300 px = 0.03 km2
    ds = _ds(lab)
    warm = np.zeros(lab.shape, np.float32)
    cold = np.where(lab == Label.DEBRIS_ICE, -4.0, 0.0).astype(np.float32)

    def n_objects(features):
        return len(obia.outlines(ds, features))

    assert n_objects(None) == 1  # no features: isolated debris has nothing for it
    assert n_objects(_features(lab, 8.0, warm)) == 1  # gentle but warm: rock
    assert n_objects(_features(lab, 35.0, cold)) == 1  # cold but steep: a rock face in shadow
    assert n_objects(_features(lab, 8.0, cold)) == 2  # gentle and cold: debris-covered ice on its own
    tongue = obia.outlines(ds)
    assert tongue.debris_frac.iloc[0] == pytest.approx(300 / 1200)


def test_minimum_mapping_unit():
    lab = np.zeros((60, 60), np.uint8)
    lab[5:14, 5:16] = Label.CLEAN_ICE  # 99 px = 0.0099 km2: under the MMU
    lab[30:40, 30:41] = Label.CLEAN_ICE  # 110 px: kept
    got = obia.outlines(_ds(lab))
    assert len(got) == 1
    assert got.geometry.iloc[0].area == pytest.approx(11_000)
    assert got.attrs["obia"]["glaciers_under_mmu"] == 1


def test_small_holes_filled_nunataks_kept():
    lab = np.zeros((80, 80), np.uint8)
    lab[5:75, 5:75] = Label.CLEAN_ICE
    lab[10:13, 10:13] = Label.BACKGROUND  # 9 px hole: noise, filled
    lab[30:45, 30:45] = Label.BACKGROUND  # 225 px = 0.0225 km2: a nunatak, kept
    got = obia.outlines(_ds(lab))
    geom = got.geometry.iloc[0]
    assert geom.geom_type == "Polygon" and len(geom.interiors) == 1
    assert geom.area == pytest.approx((70 * 70 - 225) * 100)


def test_polygons_valid_and_areas_on_the_ellipsoid(world):
    ds = noisy.predictions(world, (YEAR,)).sel(year=YEAR)
    got = obia.outlines(ds)
    assert got.is_valid.all() and got.crs.to_epsg() == 32606
    wgs = obia.to_wgs84(got)
    assert wgs.crs.to_epsg() == 4326 and wgs.is_valid.all()
    # an equal-area projection centred on the world agrees with the ellipsoidal areas
    c = wgs.union_all().centroid
    laea = got.to_crs(f"+proj=laea +lat_0={c.y} +lon_0={c.x} +datum=WGS84")
    np.testing.assert_allclose(got.area_km2, laea.area / 1e6, rtol=1e-3)
    assert (got.area_unc_km2 > 0).all() and (got.area_unc_km2 < got.area_km2).all()


def test_simplified_within_half_a_pixel():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    blob = ndimage.gaussian_filter(rng.random((60, 60)), 3) > 0.5
    blob = ndimage.label(blob)[0] == 1
    lab = np.where(ndimage.binary_fill_holes(blob), Label.CLEAN_ICE, Label.BACKGROUND).astype(np.uint8)
    got = obia.outlines(_ds(lab), rules=obia.Rules(mmu_km2=0.0)).geometry.iloc[0]
    exact = obia.threshold_polygons(_ds(lab)).geometry.iloc[0]
    assert got.is_valid and len(got.exterior.coords) < len(exact.exterior.coords)
    assert got.hausdorff_distance(exact) <= 5.0 + 1e-6


def test_bad_input_gets_clear_errors():
    lab = np.zeros((30, 30), np.uint8)
    ds = _ds(lab)
    with pytest.raises(ValueError, match="no CRS"):
        obia.outlines(_no_crs(ds))
    with pytest.raises(ValueError, match="lack the 'valid'"):
        obia.outlines(ds.drop_vars("valid"))
    two = xr.concat([ds, ds], dim="year").assign_coords(year=[2020, 2021])
    with pytest.raises(ValueError, match="no predictions for year 2019"):
        obia.outlines(two, year=2019)
    with pytest.raises(ValueError, match="say which one"):
        obia.outlines(two)
    other = _features(np.zeros((20, 30), np.uint8), 5.0, np.zeros((20, 30), np.float32))
    with pytest.raises(ValueError, match="different grids"):
        obia.outlines(ds, other)


def _no_crs(ds: xr.Dataset) -> xr.Dataset:
    out = ds.drop_vars("spatial_ref")
    for v in out.data_vars:
        out[v].attrs.pop("grid_mapping", None)
        out[v].encoding.pop("grid_mapping", None)
    return out
