"""Training pieces on hand-made data: labels from outlines, sampling weights, splits, normalisation."""

import geopandas as gpd
import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox
from shapely.geometry import box

from glacier_stac import train
from glacier_stac.labels import Label


def geobox():
    return GeoBox.from_bbox((500000, 6700000, 502000, 6702000), crs="EPSG:32606", resolution=10)


def test_labels_from_outlines_with_debris_class():
    g = gpd.GeoDataFrame({"kind": ["glacier", "debris"]},
                         geometry=[box(500200, 6700200, 501800, 6701800), box(500200, 6700200, 500800, 6700800)],
                         crs="EPSG:32606").to_crs(4326)
    lab = train.labels_from_outlines(g, geobox(), class_column="kind")
    assert lab.shape == (200, 200)
    assert (lab == Label.DEBRIS_ICE).sum() == pytest.approx(60 * 60, rel=0.05)
    assert (lab == Label.CLEAN_ICE).sum() == pytest.approx(160 * 160 - 60 * 60, rel=0.05)
    with pytest.raises(ValueError, match="no column"):
        train.labels_from_outlines(g, geobox(), class_column="nope")


def test_sampling_prefers_edges_and_debris():
    lab = np.zeros((200, 200), np.uint8)
    lab[50:150, 50:150] = Label.CLEAN_ICE
    lab[120:150, 50:150] = Label.DEBRIS_ICE
    w = train.sample_weights(lab)
    assert w[50, 100] > w[100, 100] > 0 and w[135, 100] > w[100, 100]
    rng = np.random.default_rng(0)
    corners = train.sample_patches(lab, 500, 32, rng)
    assert corners.min() >= 0 and corners.max() <= 200 - 32
    centres = corners + 16
    on_debris = (lab[centres[:, 0], centres[:, 1]] == Label.DEBRIS_ICE).mean()
    assert on_debris > (lab == Label.DEBRIS_ICE).mean()  # oversampled
    with pytest.raises(ValueError, match="smaller than"):
        train.sample_patches(lab[:10], 1, 32, rng)


def test_spatial_split_leaves_a_gap():
    f = xr.DataArray(np.zeros((1, 100, 400), np.float32), dims=("feature", "y", "x"),
                     coords={"feature": ["a"], "y": np.arange(100), "x": np.arange(400) * 10.0})
    r = train.Region("r", f, np.zeros((100, 400), np.uint8))
    a, b = train.spatial_split(r, 0.3, gap=64)
    assert float(b.features.x[0]) - float(a.features.x[-1]) > 64 * 10
    with pytest.raises(ValueError, match="too narrow"):
        train.spatial_split(train.Region("s", f.isel(x=slice(0, 100)), np.zeros((100, 100), np.uint8)))


def test_normalise_fills_missing():
    x = np.array([[1.0, np.nan, 3.0]], np.float32)
    out = train.normalise(x, [2.0], [1.0])
    np.testing.assert_array_equal(out, [[-1.0, 0.0, 1.0]])


def test_augment_keeps_pairs_aligned():
    rng = np.random.default_rng(3)
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    y = np.arange(16).reshape(4, 4)
    for _ in range(8):
        xa, ya = train.augment(x, y, rng)
        np.testing.assert_array_equal(xa[0], ya)
