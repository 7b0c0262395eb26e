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


def fjord() -> np.ndarray:
    """A tidewater tongue ending at row 100; sea ice (background in the truth) in rows 100-108 before it,
    open water beyond, bare rock on land far from both."""
    lab = np.zeros((200, 200), np.uint8)
    lab[20:100, 60:140] = Label.CLEAN_ICE
    lab[100:200, 40:160] = Label.WATER
    lab[100:108, 60:140] = Label.BACKGROUND  # sea ice / melange against the front
    return lab


def test_sample_weights_rise_on_sea_ice_before_a_calving_front():
    lab = fjord()
    zone = train.front_zone(lab)
    assert zone[104, 100] and not zone[30, 10] and not zone[150, 100] and not zone[50, 100]
    w = train.sample_weights(lab)
    assert w[104, 100] > w[30, 10] + 3.0  # sea ice before the front vs bare rock far away
    assert train.sample_weights(lab, front_weight=0.0)[104, 100] < w[104, 100]
    # known sea ice anywhere (the generator's Surface.SEA_ICE) counts too, never on glacier ice
    sea_ice = np.zeros(lab.shape, bool)
    sea_ice[0:10, 0:10] = True
    sea_ice[50, 100] = True
    w2 = train.sample_weights(lab, sea_ice=sea_ice)
    assert w2[5, 5] > w[5, 5] and w2[50, 100] == w[50, 100]
    with pytest.raises(ValueError, match="sea_ice mask"):
        train.front_zone(lab, sea_ice=sea_ice[:10])


def test_front_loss_weight_counts_sea_ice_more_and_matches_plain_ce_at_one():
    import torch

    cw = torch.tensor([1.0, 2.0, 0.5, 1.5])
    y = torch.tensor([[[0, 1], [3, 255]]])
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 1] = 3.0  # everything predicted clean ice: the background pixel (sea ice) is wrong
    per = torch.nn.CrossEntropyLoss(weight=cw, ignore_index=255, reduction="none")(logits, y)
    plain = torch.nn.CrossEntropyLoss(weight=cw, ignore_index=255)(logits, y)
    ones = torch.ones(1, 2, 2)
    assert float(train.weighted_loss(per, y, ones, cw)) == pytest.approx(float(plain), rel=1e-6)
    heavy = ones.clone()
    heavy[0, 0, 0] = 5.0
    expected = (5 * per[0, 0, 0] + per[0, 0, 1] + per[0, 1, 0]) / (5 * cw[0] + cw[1] + cw[3])
    assert float(train.weighted_loss(per, y, heavy, cw)) == pytest.approx(float(expected), rel=1e-6)
    assert float(expected) > float(plain) + 0.1  # the wrong sea-ice pixel weighs more


def test_class_weights_follow_inverse_frequency_to_a_power():
    """Square root by default; a lower power weighs a rare class less (fewer false alarms of it), 0 none."""
    lab = np.zeros((100, 100), np.uint8)
    lab[:10, :10] = Label.ROCK_GLACIER
    feats = xr.DataArray(np.zeros((1, 100, 100), np.float32), dims=("feature", "y", "x"), coords={"feature": ["B03"]})
    r = train.Region("a", feats, lab)
    served = np.bincount(lab.ravel(), weights=train.sample_weights(lab).ravel(), minlength=5)
    ratio = served[0] / served[4]  # background served per rock-glacier pixel
    for power in (0.5, 0.25):
        w = train.class_weights([r], 5, power).numpy()
        assert w[4] / w[0] == pytest.approx(ratio**power, rel=1e-5)
        assert w[[0, 4]].mean() == pytest.approx(1.0) and (w[1:4] == 0).all()  # mean 1 over present classes
    np.testing.assert_allclose(train.class_weights([r], 5, 0.0).numpy()[[0, 4]], 1.0)
    np.testing.assert_allclose(train.class_weights([r], 5).numpy(), train.class_weights([r], 5, 0.5).numpy())


def test_loss_weights_rise_on_snow_off_glaciers_and_on_both_sides_of_their_edges():
    """Issue 13's worst errors: snow off the glaciers called clean ice, ground just past the edge called
    debris (and, weighting that side alone, debris margins lost). Each zone gets its extra weight and nothing
    else does; the band is as deep on both sides; a region without the snow feature has no snow zone."""
    lab = np.zeros((60, 60), np.uint8)
    lab[20:40, 20:40] = Label.CLEAN_ICE
    lab[20:40, 30:40] = Label.DEBRIS_ICE
    snow = np.zeros((60, 60), np.float32)
    snow[:, :10] = 0.5  # seasonal snow off the glacier
    snow[25:35, 22:28] = 1.0  # snow on the glacier: not the zone
    snow[0, 0] = np.nan
    feats = xr.DataArray(np.stack([np.zeros_like(snow), snow]), dims=("feature", "y", "x"),
                         coords={"feature": ["B03", "snow_persistence"]})
    r = train.Region("a", feats, lab)
    zone = train.snow_zone(r)
    assert zone[:, 1:10].all() and not zone[:, 10:].any() and not zone[0, 0]
    band = train.edge_band(lab, reach_px=5)
    yy, xx = np.mgrid[:60, :60]
    cheb = np.maximum(np.maximum(20 - yy, yy - 39), np.maximum(20 - xx, xx - 39))  # px outside the square
    inside = np.minimum(np.minimum(yy - 20, 39 - yy), np.minimum(xx - 20, 39 - xx))  # px inside, 0 on the edge
    np.testing.assert_array_equal(band, ((cheb >= 1) & (cheb <= 5)) | ((inside >= 0) & (inside <= 4)))
    front = np.zeros((60, 60), bool)
    w = train.pixel_weights(r, front, 4.0, snow_loss_weight=3.0, margin_loss_weight=2.0)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, 1.0 + 3.0 * zone + 2.0 * train.edge_band(lab))  # 10 px by default
    np.testing.assert_allclose(train.pixel_weights(r, front, 4.0), 1.0)  # both off by default
    optical = train.Region("b", feats.sel(feature=["B03"]), lab)
    assert not train.snow_zone(optical).any()


def test_forefield_zone_is_warm_ice_free_ground_beside_the_glaciers():
    """Ground within reach of a glacier that reads as warm as bare ground (no ice beneath) gets the extra
    weight; cold ground there (debris-like, ice under it perhaps), warm ground far off, ice itself and pixels
    without thermal do not; a region without the feature has no zone."""
    lab = np.zeros((60, 60), np.uint8)
    lab[20:40, 20:40] = Label.DEBRIS_ICE
    anom = np.zeros((60, 60), np.float32)  # as warm as bare ground everywhere ...
    anom[20:40, 20:40] = -3.0  # ... but on the debris-covered ice
    anom[40:45, 20:40] = -2.0  # a cold apron below the tongue: not the zone
    anom[15:20, 25] = np.nan  # no thermal: not the zone
    feats = xr.DataArray(np.stack([np.zeros_like(anom), anom]), dims=("feature", "y", "x"),
                         coords={"feature": ["B03", "lst_max_anomaly"]})
    r = train.Region("a", feats, lab)
    zone = train.forefield_zone(r, reach_px=5)
    near = train.near(lab == Label.DEBRIS_ICE, 5) & (lab == Label.BACKGROUND)
    np.testing.assert_array_equal(zone, near & (anom > -1.0))
    assert zone[15:20, 20:25].all() and not zone[40:45, 20:40].any() and not zone[15:20, 25].any()
    assert not zone[:10].any() and not zone[lab == Label.DEBRIS_ICE].any()
    w = train.pixel_weights(r, np.zeros((60, 60), bool), 4.0, forefield_loss_weight=3.0)
    np.testing.assert_allclose(w, 1.0 + 3.0 * train.forefield_zone(r))
    assert not train.forefield_zone(train.Region("b", feats.sel(feature=["B03"]), lab)).any()


def test_thermal_bare_snow_zone_is_off_glacier_snow_every_thermal_scene_saw_bare():
    """Issue 13's false glacier on never-used seeds: snow in the optics that every Landsat scene saw bare.
    The zone is that snow off the glaciers only: not snow a thermal scene also saw, not ground no thermal
    scene saw, not snow on the glaciers; its weight goes on top of the snow zone's; a region without the
    thermal snow count has no zone."""
    lab = np.zeros((40, 40), np.uint8)
    lab[20:40, 20:40] = Label.CLEAN_ICE
    snow = np.zeros((40, 40), np.float32)
    snow[:20, :] = 1.0  # optical snow on the upper half, off the glacier ...
    snow[20:40, 20:40] = 1.0  # ... and on the glacier
    count = np.full((40, 40), 2.0, np.float32)
    count[:20, :5] = 0  # no usable thermal scene: not the zone
    lsnow = np.zeros((40, 40), np.float32)
    lsnow[:20, 30:] = 1  # a thermal scene saw snow there too: not the zone
    lsnow[5, 10] = np.nan  # unknown: not the zone
    feats = xr.DataArray(np.stack([snow, count, lsnow]), dims=("feature", "y", "x"),
                         coords={"feature": ["snow_persistence", "landsat_count", "landsat_snow"]})
    r = train.Region("a", feats, lab)
    zone = train.thermal_bare_snow_zone(r)
    expect = np.zeros((40, 40), bool)
    expect[:20, 5:30] = True
    expect[5, 10] = False
    np.testing.assert_array_equal(zone, expect)
    front = np.zeros((40, 40), bool)
    w = train.pixel_weights(r, front, 4.0, snow_loss_weight=2.0, bare_snow_loss_weight=5.0)
    np.testing.assert_allclose(w, 1.0 + 2.0 * train.snow_zone(r) + 5.0 * expect)
    assert not train.thermal_bare_snow_zone(train.Region("b", feats.sel(feature=["snow_persistence"]), lab)).any()
