"""Derived cube features that carry across regimes: temperature relative to bare ground at the same
elevation (a robust per-tile lapse fit) and elevation relative to the tile's snowline. Pure NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from glacier_stac import cube
from glacier_stac import sensors as S


def _tile(z0: float, z1: float, t0: float, lapse: float, seed: int = 0, n: int = 200):
    """A tile whose elevation rises west to east, bare rock on a lapse line, debris-covered ice in a
    low valley (colder than rock at its height), NDSI/NDWI of bare land."""
    rng = np.random.default_rng(seed)
    z = np.linspace(z0, z1, n, dtype=np.float32)[None, :].repeat(n, 0) + rng.normal(0, 20, (n, n)).astype(np.float32)
    t = (t0 - lapse * z + rng.normal(0, 1.0, (n, n))).astype(np.float32)
    debris = np.zeros((n, n), bool)
    debris[60:140, : n // 3] = True  # the low third of the tile, part of it a debris-covered tongue
    t[debris] -= 6.0
    ndsi = np.full((n, n), -0.2, np.float32)
    ndwi = np.full((n, n), -0.1, np.float32)
    return t, z, ndsi, ndwi, debris


def test_lapse_fit_is_robust_to_debris_on_the_low_ground() -> None:
    t, z, ndsi, ndwi, debris = _tile(0, 3000, 298.0, 0.005)
    a, b = cube.lapse_fit(t, z, np.ones(t.shape, bool))
    assert b == pytest.approx(-0.005, abs=3e-4) and a == pytest.approx(298.0, abs=0.8)


@pytest.mark.parametrize("z0,z1,t0,lapse", [(0, 3000, 298.0, 0.005), (3500, 7000, 315.0, 0.0075)])
def test_debris_reads_colder_than_bare_ground_in_any_range(z0: float, z1: float, t0: float, lapse: float) -> None:
    t, z, ndsi, ndwi, debris = _tile(z0, z1, t0, lapse)
    anom = cube.lst_anomaly(t, z, ndsi, ndwi)
    assert np.median(anom[debris]) == pytest.approx(-6.0, abs=0.8)
    assert abs(np.median(anom[~debris])) < 0.5


def test_anomaly_undoes_the_lapse_rate_reversal() -> None:
    """High Asia: raw rock at ~5000 m is colder than debris at ~4000 m; the anomaly orders them right."""
    t, z, ndsi, ndwi, debris = _tile(3500, 7000, 315.0, 0.0075)
    rock_high = ~debris & (np.abs(z - 5500) < 100)
    deb_low = debris & (z < 4200)
    assert np.median(t[rock_high]) < np.median(t[deb_low])  # the raw cue reverses
    anom = cube.lst_anomaly(t, z, ndsi, ndwi)
    assert np.median(anom[deb_low]) < np.median(anom[rock_high]) - 4.0


def test_snow_and_water_are_not_ground() -> None:
    t, z, ndsi, ndwi, _ = _tile(0, 3000, 298.0, 0.005)
    t[:, -90:] = 273.0  # snow on the upper half: at melting point, far off the rock line
    ndsi[:, -90:] = 0.9
    anom = cube.lst_anomaly(t, z, ndsi, ndwi)
    assert abs(np.median(anom[:, :100])) < 0.5


def test_ground_seen_bare_once_reads_as_ground_in_its_warmest_scene() -> None:
    """A glacier and a seasonal snow patch on rock, both at melting point in two of three scenes: their
    medians read alike; from the warmest scene the patch reads as the ground it is, the glacier far below."""
    rng = np.random.default_rng(0)
    _, z, ndsi, ndwi, _ = _tile(0, 3000, 298.0, 0.005)
    glacier = np.zeros(z.shape, bool)
    glacier[20:80, 100:160] = True
    patch = np.zeros(z.shape, bool)
    patch[120:180, 100:160] = True
    scenes = []
    for k in range(3):
        t = (298.0 - 0.005 * z + rng.normal(0, 1.0, z.shape)).astype(np.float32)
        t[glacier] = 273.0
        if k != 1:
            t[patch] = 272.6
        scenes.append(t[None])
    ok = [np.ones(z.shape, bool)] * 3
    med, _ = cube.composite(scenes, ok)
    hot = cube.warmest(scenes, ok)[0]
    ndsi[glacier | patch] = 0.9  # snow in the median optical composite too
    median_anom = cube.lst_anomaly(med[0], z, ndsi, ndwi)
    assert abs(np.median(median_anom[patch]) - np.median(median_anom[glacier])) < 1.5  # alike
    warm_anom = next(d for d in cube.DERIVED if d.name == "lst_max_anomaly").kernel(hot, z, ndsi, ndwi)
    assert abs(np.median(warm_anom[patch])) < 1.0
    assert np.median(warm_anom[glacier]) < np.median(warm_anom[patch]) - 8.0


def test_flat_or_empty_tiles() -> None:
    t, z, ndsi, ndwi, _ = _tile(1000, 1100, 290.0, 0.005)
    a, b = cube.lapse_fit(t, z, np.ones(t.shape, bool))
    assert b == cube.LAPSE_DEFAULT  # too little height to fit a lapse rate
    none = np.full(t.shape, np.nan, np.float32)
    assert np.isnan(cube.lst_anomaly(none, z, ndsi, ndwi)).all()
    assert np.isnan(cube.lst_anomaly(t, z, np.full(t.shape, 0.9, np.float32), ndwi)).all()  # no bare ground


def test_neighbouring_tiles_fit_nearly_the_same_line() -> None:
    """Fitted per tile: at the border of two tiles of one slope, the two fits differ by little."""
    t, z, ndsi, ndwi, _ = _tile(0, 3000, 298.0, 0.005, n=400)
    left = cube.lst_anomaly(t[:, :200], z[:, :200], ndsi[:, :200], ndwi[:, :200])
    right = cube.lst_anomaly(t[:, 200:], z[:, 200:], ndsi[:, 200:], ndwi[:, 200:])
    assert abs(np.median(left[:, -5:]) - np.median(right[:, :5])) < 0.3


def test_snowline_splits_snow_from_bare_land() -> None:
    rng = np.random.default_rng(1)
    z = np.linspace(1000, 3500, 300, dtype=np.float32)[None, :].repeat(300, 0)
    ndsi = np.where(z + rng.normal(0, 60, z.shape) > 2500, 0.8, -0.1).astype(np.float32)
    ndsi[rng.random(z.shape) < 0.03] = 0.8  # seasonal snow patches low down
    ndsi[:50, :] = np.nan  # cloud
    assert cube.snowline(z, ndsi) == pytest.approx(2500, abs=50)
    rel = cube.elevation_above_snowline(z, ndsi)
    assert rel[0, -1] == pytest.approx(1000, abs=50) and rel[0, 0] == pytest.approx(-1500, abs=50)
    assert cube.snowline(z, np.full(z.shape, -0.1, np.float32)) >= 3500 - 25  # no snow: its top
    assert np.isnan(cube.elevation_above_snowline(z, np.full(z.shape, np.nan, np.float32))).all()


def test_tile_features_carry_the_derived_features_after_the_sensors() -> None:
    plan = tuple(cube.SensorTile(s) for s in S.SENSORS.values())
    out = cube.tile_features(plan=plan, shape=(8, 8))
    assert out.shape[0] == len(cube.FEATURES)
    assert list(cube.FEATURES[-len(cube.DERIVED):]) == [d.name for d in cube.DERIVED]
    assert [d.name for d in cube.derived_for(["elevation", "ndsi"])] == ["elev_above_snowline"]
    assert [d.name for d in cube.derived_for(["lwir11_max", "elevation", "ndsi", "ndwi", "landsat_snow"])] == [
        "lst_max_anomaly", "elev_above_snowline", "lst_max_anomaly_hist"]  # a derived one from a derived one
    optical = cube.tile_features(plan=(cube.SensorTile(S.SENTINEL2),), shape=(8, 8))
    # no elevation: no temperature anomaly, no snowline; only the optical history feature
    assert optical.shape[0] == len(S.SENTINEL2.features) + 1


def test_fitted_derived_features_read_sensor_features_only() -> None:
    """A fitted feature's sample is taken from the read task's block, before any derived row is filled."""
    derived = {d.name for d in cube.DERIVED}
    fitted = [d for d in cube.DERIVED if d.fit is not None]
    assert {d.name for d in fitted} == {"lst_anomaly", "lst_max_anomaly", "elev_above_snowline", "lst_lit_anomaly",
                                        "lst_max_lit_anomaly"}
    for d in fitted:
        assert not set(d.inputs) & derived, d.name


def test_pooled_samples_fit_as_the_whole_does() -> None:
    """Two halves' samples pooled give the lapse line of the whole, and `derive` applies it in place."""
    t, z, ndsi, ndwi, _ = _tile(0, 3000, 298.0, 0.005, n=400)
    halves = [(t[:, :200], z[:, :200], ndsi[:, :200], ndwi[:, :200]), (t[:, 200:], z[:, 200:], ndsi[:, 200:],
                                                                          ndwi[:, 200:])]
    fits = cube.pooled_fits([{"lst_anomaly": cube.lapse_sample(*h)} for h in halves])
    whole = cube.lapse_solve(cube.lapse_sample(t, z, ndsi, ndwi))
    assert fits["lst_anomaly"] == pytest.approx(whole, rel=1e-4)
    block = np.stack([t, z, ndsi, ndwi, np.zeros(t.shape, np.float32), np.full(t.shape, np.nan, np.float32)])
    cube.derive(block, ["lwir11", "elevation", "ndsi", "ndwi", "landsat_snow", "lst_anomaly"], fits)
    np.testing.assert_allclose(block[5], cube.lst_anomaly(t, z, ndsi, ndwi), atol=1e-3)


def test_ground_under_snow_in_a_thermal_scene_is_not_bare_ground() -> None:
    """The optical composite calls the top fifth bare (NDSI -0.2), but the thermal scene saw it under snow at
    0 degC (its QA flags snow): given the thermal scenes' snow count, the lapse line is the rock's, bare ground
    reads 0 and debris its 6 K below; without it the snow drags the line down and bare ground reads kelvins warm."""
    t, z, ndsi, ndwi, debris = _tile(0, 3000, 298.0, 0.005)
    snow = np.zeros(t.shape, np.float32)
    snow[:, -40:] = 1
    t[:, -40:] = 272.6
    bare = ~debris & (snow == 0)
    with_mask = cube.lst_anomaly(t, z, ndsi, ndwi, snow)
    assert np.median(with_mask[debris]) == pytest.approx(-6.0, abs=0.8)
    assert abs(np.median(with_mask[bare])) < 0.5
    assert np.median(cube.lst_anomaly(t, z, ndsi, ndwi)[bare]) > 2.0  # the failure the mask removes


def test_thermal_kernel_counts_the_usable_scenes_flagged_snow() -> None:
    """Two scenes: the first flags snow on the left half, the second is clouded there (its snow bit set too, but
    the pixel is unusable): the count is of usable scenes only."""
    shape = (4, 6)
    lwir = [np.full((1, *shape), 40000, np.uint16), np.full((1, *shape), 41000, np.uint16)]
    qa1 = np.full(shape, 1 << 6, np.uint16)
    qa1[:, :3] |= np.uint16(1 << S.LANDSAT_QA_SNOW_BIT)
    qa2 = np.full(shape, 1 << 6, np.uint16)
    qa2[:, :3] = np.uint16((1 << 3) | (1 << S.LANDSAT_QA_SNOW_BIT))  # cloud, and flagged snow
    out = np.empty((4, *shape), np.float32)
    scaling = np.array([[[0.00341802, 149.0]], [[0.00341802, 149.0]]])
    cube.thermal_features(lwir, [qa1[None], qa2[None]], scaling, out=out, usable=S.LANDSAT.usable,
                          snowy=S.LANDSAT.snowy)
    names = S.LANDSAT.features
    np.testing.assert_array_equal(out[names.index("landsat_snow")][:, :3], 1)
    np.testing.assert_array_equal(out[names.index("landsat_snow")][:, 3:], 0)
    np.testing.assert_array_equal(out[names.index("landsat_count")][:, :3], 1)
    assert S.SENTINEL2.snowy(np.array([11, 4], np.uint8)).tolist() == [True, False]


def _sunlit_tile(sun_azimuth: float = 130.0, sun_elevation: float = 50.0, n: int = 240, seed: int = 2):
    """Ridges and valleys rising eastwards; rock 9 K warmer per unit of illumination (as the generator draws it),
    a debris-covered tongue 6 K below rock of its height and light. Returns temperature, the terrain features,
    NDSI, NDWI, the debris mask and the illumination."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n + 2, 0:n + 2].astype(np.float32)
    elev = 1500 + 6.0 * xx + 180 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 2, yy.shape)
    slope, asin, acos, _ = cube.terrain(elev, 10.0)
    *_, cos_i = cube.terrain(elev, 10.0, sun_azimuth, sun_elevation)
    z = elev[1:-1, 1:-1]
    t = 300.0 - 0.0065 * z + 9.0 * (cos_i - 0.6) + rng.normal(0, 0.5, z.shape)
    debris = np.zeros(z.shape, bool)
    debris[100:140, :60] = True
    t[debris] -= 6.0
    ndsi, ndwi = np.full(z.shape, -0.2, np.float32), np.full(z.shape, -0.1, np.float32)
    return t.astype(np.float32), z.astype(np.float32), slope, asin, acos, ndsi, ndwi, debris, cos_i


def test_shaded_ground_reads_as_ground_once_the_fit_knows_the_sun() -> None:
    """Against bare ground of the same height alone, shade reads several kelvin cold, like debris; against
    bare ground of the same height, slope and aspect it reads ~0 and debris keeps its -6 K. The sun is learnt
    from the temperatures: the fitted illumination terms point to the azimuth the tile was lit from."""
    t, z, slope, asin, acos, ndsi, ndwi, debris, cos_i = _sunlit_tile()
    shade = ~debris & (cos_i < 0.35)
    assert shade.sum() > 1000
    plain = cube.lst_anomaly(t, z, ndsi, ndwi)
    lit = cube.lst_lit_anomaly(t, z, slope, asin, acos, ndsi, ndwi)
    assert np.median(plain[shade]) < -2.0  # the old anomaly: shade as cold as thin debris
    assert abs(np.median(lit[shade])) < 0.5 and abs(np.median(lit[~debris])) < 0.3
    assert np.median(lit[debris]) == pytest.approx(-6.0, abs=0.6)
    fit = cube.terrain_lapse_solve(cube.terrain_lapse_sample(t, z, slope, asin, acos, ndsi, ndwi))
    assert fit[1] == pytest.approx(-0.0065, abs=5e-4)
    assert np.degrees(np.arctan2(fit[4], fit[3])) % 360 == pytest.approx(130.0, abs=10.0)


def test_lit_anomaly_on_flat_empty_snowy_and_pooled_tiles() -> None:
    t, z, slope, asin, acos, ndsi, ndwi, debris, _ = _sunlit_tile()
    none = np.full(t.shape, np.nan, np.float32)
    assert np.isnan(cube.lst_lit_anomaly(none, z, slope, asin, acos, ndsi, ndwi)).all()
    snow = np.full(t.shape, 0.9, np.float32)
    assert np.isnan(cube.lst_lit_anomaly(t, z, slope, asin, acos, snow, ndwi)).all()  # no bare ground
    flat = np.full(z.shape, 1000.0, np.float32) + (z - z.mean()) * 0.01  # a few metres of relief
    fit = cube.terrain_lapse_solve(cube.terrain_lapse_sample(t, flat, slope, asin, acos, ndsi, ndwi))
    assert fit[1] == cube.LAPSE_DEFAULT
    thermal_snow = np.zeros(t.shape, np.float32)
    thermal_snow[:, :120] = 1  # snow in a thermal scene: not bare ground, so not in the sample
    args = (t, z, slope, asin, acos, ndsi, ndwi)
    assert cube.terrain_lapse_sample(*args, thermal_snow).shape[1] < 0.6 * cube.terrain_lapse_sample(*args).shape[1]
    halves = [tuple(a[:, :120] for a in args), tuple(a[:, 120:] for a in args)]
    pooled = cube.pooled_fits([{"lst_lit_anomaly": cube.terrain_lapse_sample(*h)} for h in halves])
    whole = cube.terrain_lapse_solve(cube.terrain_lapse_sample(*args))
    np.testing.assert_allclose(pooled["lst_lit_anomaly"], whole, rtol=1e-4, atol=1e-6)
