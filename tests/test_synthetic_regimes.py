"""World regimes: each generates, is deterministic, and has its stated physical properties.

Small worlds (4 km at 20 m) so the five regimes build in about a minute; the properties are the ones a
regime promises whatever the size (its height range, ELA, sea or none, debris, sensors and season).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from glacier_stac.synthetic import render as R
from glacier_stac.synthetic import spectra
from glacier_stac.synthetic.config import REGIMES, Thermal, WorldConfig
from glacier_stac.synthetic.world import Surface, World, build_world

YEARS = (2021, 2022)


def _config(regime: str, seed: int = 1) -> WorldConfig:
    return WorldConfig(seed=seed, size_km=4.0, resolution=20.0, years=YEARS, regime=regime)


@pytest.fixture(scope="module")
def worlds() -> dict[str, World]:
    return {r: build_world(_config(r)) for r in REGIMES}


def _digest(w: World) -> str:
    h = hashlib.sha256(w.elevation.tobytes())
    for y in w.years:
        h.update(w.surface[y].tobytes())
        h.update(w.ela[y].tobytes())
    return h.hexdigest()


def _ela(w: World) -> float:
    return float(np.median(w.ela[w.years[0]]))


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_each_regime_generates_glaciers_deterministically(worlds: dict[str, World], regime: str) -> None:
    w = worlds[regime]
    y = w.years[0]
    assert w.config.regime == regime
    assert (w.glacier_id[y] > 0).mean() > 0.05, "a regime without glaciers"
    assert _digest(build_world(_config(regime))) == _digest(w)


def test_regimes_differ_from_each_other(worlds: dict[str, World]) -> None:
    assert len({_digest(w) for w in worlds.values()}) == len(worlds)


def test_height_ranges_and_ela(worlds: dict[str, World]) -> None:
    land = {r: w.elevation[w.elevation > 0] for r, w in worlds.items()}
    ela = {r: _ela(w) for r, w in worlds.items()}
    # inland regimes: valley floors high up, no sea; coastal ones start at sea level
    assert land["continental"].min() >= 1500 and ela["continental"] > 2000
    assert land["high-mountain-asia"].min() >= 3500 and ela["high-mountain-asia"] > 4200
    assert land["high-mountain-asia"].max() > 5000
    assert land["arctic"].max() < 1500 and ela["arctic"] < 600
    # the dry Andes: high floors, a high ELA over small glaciers, the austral summer in a UTM south zone
    assert land["dry"].min() >= 3000 and ela["dry"] > 4000
    for r in ("maritime", "arctic", "southern"):
        assert np.percentile(land[r], 1) < 100, r
    assert ela["arctic"] < ela["maritime"] < ela["continental"] < ela["high-mountain-asia"]


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_snowline_and_debris_follow_the_ela(worlds: dict[str, World], regime: str) -> None:
    w = worlds[regime]
    y = w.years[0]
    s, z, ela = w.surface[y], w.elevation, w.ela[y]
    snow = (s == Surface.SNOW) & (w.glacier_id[y] > 0)
    deb = s == Surface.DEBRIS
    assert np.median(z[snow] - ela[snow]) > 0, "glacier snow lies above the ELA"
    if deb.any():
        assert np.quantile(z[deb] - ela[deb], 0.95) < 50, "debris melts out below the ELA"


def test_sea_and_calving_only_where_the_regime_has_a_coast(worlds: dict[str, World]) -> None:
    for r, w in worlds.items():
        sea = np.isin(w.surface[w.years[0]], (Surface.SEA, Surface.SEA_ICE)).any()
        assert sea == REGIMES[r].tidewater, r
        assert bool(w.calving_ids) == REGIMES[r].tidewater, r
    s = worlds["arctic"].surface[YEARS[0]]
    assert (s == Surface.SEA_ICE).sum() > 0.3 * np.isin(s, (Surface.SEA, Surface.SEA_ICE)).sum(), "fjord sea ice"


def test_high_mountain_asia_tongues_are_debris_covered(worlds: dict[str, World]) -> None:
    def share(w: World) -> float:
        y = w.years[0]
        abl = (w.glacier_id[y] > 0) & (w.elevation < w.ela[y])
        return float((w.surface[y][abl] == Surface.DEBRIS).mean())

    assert share(worlds["high-mountain-asia"]) > 0.4
    assert share(worlds["high-mountain-asia"]) > 1.5 * share(worlds["maritime"])


def test_lapse_rate_reversal_in_high_mountain_asia() -> None:
    """Rock at 5000 m is colder than debris-covered ice at 4000 m, though at one height debris is colder."""
    th = REGIMES["high-mountain-asia"].thermal
    classes = np.array([[Surface.ROCK, Surface.DEBRIS, Surface.ROCK]], dtype=np.uint8)
    z = np.array([[5000.0, 4000.0, 4000.0]], dtype=np.float32)
    cos_i = np.full(z.shape, 0.7, np.float32)  # the same sunlit slope everywhere
    t = spectra.surface_temperature(classes, z, cos_i, np.full(z.shape, 0.5, np.float32), th)
    rock5000, debris4000, rock4000 = t[0]
    assert rock5000 < debris4000 < rock4000
    # a maritime world's 0-3000 m never shows it: rock at its highest is warmer than debris at sea level
    m = Thermal()
    assert m.rock(3000) > m.debris(0)
    for r in REGIMES.values():  # at one height of its ablation areas, in every regime, debris is colder than rock
        for h in np.linspace(r.height(0.0), r.height(800.0), 4):
            assert r.thermal.debris(h, 0.5) < r.thermal.rock(h) - 1.0, (r.name, h)


def test_rendered_landsat_uses_the_regime_climate(worlds: dict[str, World]) -> None:
    """Through the renderer: High Asia's clear bare rock follows its own lapse line, not the maritime one."""
    w = worlds["high-mountain-asia"]
    prep = R.prepare(w)
    acq = next(a for a in R.acquisitions(w.config, prep.lon, prep.lat) if a.sensor == "landsat" and a.index == 0)
    scene = R.render_landsat(w, acq, prep)
    t = scene.assets["lwir11"].data * R.LWIR_SCALE + R.LWIR_OFFSET
    cls = R.block_pick(R.scene_classes(w, acq), 3)[: t.shape[0], : t.shape[1]]
    z = R.block_mean(w.elevation, 3)[: t.shape[0], : t.shape[1]]
    clear = (scene.assets["qa_pixel"].data == R.QA_CLEAR_LAND) & (cls == Surface.ROCK)
    assert clear.sum() > 50
    own = np.median(t[clear] - np.array([w.config.physics.thermal.rock(v) for v in z[clear]]))
    maritime = np.median(t[clear] - np.array([Thermal().rock(v) for v in z[clear]]))
    assert abs(own) < abs(maritime) and abs(maritime) > 3.0


def test_sensors_and_season_follow_the_regime(worlds: dict[str, World]) -> None:
    arctic = worlds["arctic"]
    acqs = R.acquisitions(arctic.config)
    s1 = next(a for a in acqs if a.sensor == "sentinel-1")
    scene = R.render_sentinel1(arctic, s1)
    assert set(scene.assets) == {"hh", "hv"} and scene.properties["sar:polarizations"] == ["HH", "HV"]
    assert all(7 <= a.datetime.month <= 9 for a in acqs)
    south = worlds["southern"]
    assert str(south.geobox.crs.epsg).startswith("327"), "a UTM south zone"
    assert all(1 <= a.datetime.month <= 3 for a in R.acquisitions(south.config))
    dry = worlds["dry"]
    assert str(dry.geobox.crs.epsg).startswith("327")
    assert all(1 <= a.datetime.month <= 4 for a in R.acquisitions(dry.config))  # the south's default season
    mar = worlds["maritime"]
    assert set(R.render_sentinel1(mar, next(a for a in R.acquisitions(mar.config) if a.sensor == "sentinel-1")
                                  ).assets) == {"vv", "vh"}


def test_regime_centre_and_bad_regime() -> None:
    assert WorldConfig().center_lon == -147.0 and WorldConfig().regime == "maritime"
    c = WorldConfig(regime="high-mountain-asia")
    assert (c.center_lon, c.center_lat) == (REGIMES["high-mountain-asia"].center_lon,
                                            REGIMES["high-mountain-asia"].center_lat)
    assert WorldConfig(regime="arctic", center_lon=20.0, center_lat=79.0).center_lon == 20.0
    with pytest.raises(ValueError, match="unknown regime 'tropical'"):
        WorldConfig(regime="tropical")
