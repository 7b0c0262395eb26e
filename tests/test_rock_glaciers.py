"""Rock glaciers in the synthetic worlds (issue 14): where they are drawn, their shape, how sensors see them.

Continental and high-mountain worlds (4 km at 20 m, as the regime tests) carry them as their own truth
class, never as glacier; the maritime, arctic and southern worlds are byte for byte what they were before
rock glaciers existed (pinned digests), so every other test and benchmark keeps its figures.
`synthetic render` draws them from a user's outlines given a class column.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from scipy import ndimage

from glacier_stac.labels import Label
from glacier_stac.synthetic import render as R
from glacier_stac.synthetic import rock_glaciers, spectra, truth
from glacier_stac.synthetic.config import REGIMES, Thermal, WorldConfig
from glacier_stac.synthetic.user import from_user
from glacier_stac.synthetic.world import Surface, World, build_world

YEARS = (2021, 2022)
RG_REGIMES = ("continental", "high-mountain-asia", "dry")
# sha256 (first 16 hex) of elevation, surface, ELA, glacier ids, thickness and truth labels of each year of
# the 4 km / 20 m seed-1 worlds, measured before rock glaciers were added (commit 361d74b)
PINNED = {"maritime-1": "b0588877da6978c5", "arctic-1": "401ab09935619e2b", "southern-1": "7b3f6d36cbedb0ba"}


def _config(regime: str, seed: int = 1) -> WorldConfig:
    return WorldConfig(seed=seed, size_km=4.0, resolution=20.0, years=YEARS, regime=regime)


@pytest.fixture(scope="module")
def worlds() -> dict[str, World]:
    return {r: build_world(_config(r)) for r in RG_REGIMES}


def world_digest(w: World) -> str:
    h = hashlib.sha256(w.elevation.tobytes())
    for y in w.years:
        for a in (w.surface[y], w.ela[y], w.glacier_id[y], w.ice_thickness[y], w.labels(y)):
            h.update(a.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_regimes_without_rock_glaciers_are_byte_identical(name: str) -> None:
    regime, seed = name.rsplit("-", 1)
    assert REGIMES[regime].rock_glaciers == 0
    w = build_world(_config(regime, int(seed)))
    assert w.rock_glacier_id is None
    assert world_digest(w) == PINNED[name]


@pytest.mark.parametrize("regime", RG_REGIMES)
def test_rock_glaciers_are_their_own_class_below_the_ela_never_glacier(worlds: dict[str, World], regime: str) -> None:
    w = worlds[regime]
    ids = w.rock_glacier_id
    assert ids is not None and ids.max() >= 2, "a rock-glacier regime without rock glaciers"
    rg = ids > 0
    px_m2 = 20.0 * 20.0
    for y in w.years:
        lab = w.labels(y)
        np.testing.assert_array_equal(lab == Label.ROCK_GLACIER, rg)  # the truth carries the class
        assert not (w.glacier_id[y][rg] > 0).any()  # never glacier ice
        assert (w.surface[y][rg] == Surface.ROCK_GLACIER).all()
        ela = float(np.median(w.ela[y]))
        assert np.median(w.elevation[rg]) < ela  # the permafrost belt under the ELA
        # kept off glaciers and their moraines: rock glaciers are periglacial landforms
        near = ndimage.binary_dilation(w.glacier_id[y] > 0, iterations=2)
        assert not (near & rg).any()
    sizes = np.bincount(ids[rg])[1:] * px_m2
    assert sizes.min() >= 0.02e6 and np.median(sizes) < 0.6e6  # 0.02-0.6 km2 tongues, not ice sheets
    out = truth.rock_glacier_outlines(w)
    assert set(out["primeclass"]) == {"rock_glacier"}
    assert out.groupby("year")["area_m2"].sum().tolist() == pytest.approx([rg.sum() * px_m2] * len(w.years))
    assert "rock_glacier_id" not in truth.outlines(w, w.years[0]).columns  # glacier outlines stay glaciers


def test_deterministic_by_seed(worlds: dict[str, World]) -> None:
    again = build_world(_config("continental"))
    np.testing.assert_array_equal(again.rock_glacier_id, worlds["continental"].rock_glacier_id)
    assert world_digest(again) == world_digest(worlds["continental"])


def test_lobe_has_a_steep_front_and_transverse_ridges() -> None:
    """One rock glacier down a uniform 20° slope at 5 m: a steep front, ridges across the flow."""
    res, n = 5.0, 400
    gy = np.full((n, n), math.tan(math.radians(20.0)))  # elevation falls towards larger rows
    gy = -gy
    gx = np.zeros((n, n))
    taken = np.zeros((n, n), dtype=bool)
    rng = np.random.default_rng(3)
    shape = None
    while shape is None:
        shape = rock_glaciers._draw(rng, (60, 200), gy, gx, taken, res, np.zeros((n, n)))
    mask, height = shape
    rows = np.nonzero(mask.any(axis=1))[0]
    assert rows.max() - rows.min() > 30  # it flowed downhill (towards larger rows)
    # steepest rise of the body over its margins: ~38 degrees, far steeper than its 20-degree bed
    hy, hx = np.gradient(height, res)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=int(60 / res))
    assert np.degrees(np.arctan(np.hypot(hy, hx)[edge].max())) > 30.0
    # along the centre line the top undulates: ridges and furrows of 1-2.5 m, tens of metres apart
    col = int(round(np.median(np.nonzero(mask)[1])))
    line = height[:, col][mask[:, col]]
    top = line[len(line) // 3: -len(line) // 4]
    wiggle = top - ndimage.uniform_filter1d(top, int(80 / res))
    assert 0.5 < wiggle.std() < 3.0
    crossings = np.sum(np.diff(np.sign(wiggle)) != 0)
    assert crossings >= 4


def test_rock_glaciers_are_scree_in_optics_and_a_few_kelvin_cooler() -> None:
    table = spectra.reflectance_table()
    np.testing.assert_array_equal(table[Surface.ROCK_GLACIER], table[Surface.SCREE])
    z = np.full((2, 2), 2600.0, np.float32)
    classes = np.array([[Surface.ROCK, Surface.ROCK_GLACIER], [Surface.SCREE, Surface.ROCK_GLACIER]], np.uint8)
    th = REGIMES["continental"].thermal
    t = spectra.surface_temperature(classes, z, np.full((2, 2), 0.7, np.float32), np.zeros((2, 2), np.float32), th)
    assert t[0, 0] - t[0, 1] == pytest.approx(th.rock_glacier_dt, abs=1e-3)
    assert 2.0 <= Thermal().rock_glacier_dt <= 5.0


def test_creep_changes_the_radar_texture_between_years_not_within_one(worlds: dict[str, World]) -> None:
    w = worlds["high-mountain-asia"]
    prep = R.prepare(w)
    acqs = [a for a in R.acquisitions(w.config, prep.lon, prep.lat) if a.sensor == "sentinel-1"]
    by = {(a.year, a.index): a for a in acqs}
    rg = w.rock_glacier_id > 0

    def texture(acq: R.Acquisition) -> np.ndarray:
        """log backscatter over 3x3 pixels (speckle averaged down), NaN where any is no-data."""
        vv = R.render_sentinel1(w, acq, prep).assets["vv"].data
        good = ndimage.binary_erosion(vv > 0, border_value=0)
        out = ndimage.uniform_filter(np.log(np.where(vv > 0, vv, 1.0)), 3)  # NaN would run along the rows
        return np.where(good, out, np.nan)

    # descending passes (index 0 and 2) of one year, and of the next: same geometry, other year
    same = (texture(by[(2021, 0)]), texture(by[(2021, 2)]))
    other = texture(by[(2022, 0)])
    ok = ndimage.binary_erosion(rg, iterations=1) & np.all(np.isfinite(np.stack([*same, other])), axis=0)
    assert ok.sum() > 100

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a[ok], b[ok])[0, 1])

    assert corr(*same) > corr(same[0], other) + 0.1


def test_render_draws_rock_glaciers_from_a_class_column(tmp_path: Path) -> None:
    from test_synthetic_render import make_inputs

    dem, outlines = make_inputs(tmp_path)
    g = gpd.read_file(outlines)
    rock = g.geometry.iloc[0].centroid.buffer(150.0)
    g2 = gpd.GeoDataFrame({"name": ["a", "b", "r"], "kind": ["glacier", "glacier", "Rock glacier"]},
                          geometry=[g.geometry.iloc[0].difference(rock.buffer(50)), g.geometry.iloc[1], rock],
                          crs=g.crs)
    path = tmp_path / "classed.gpkg"
    g2.to_file(path)
    w = from_user(dem, path, YEARS, class_column="kind", regime="continental")
    rg = w.rock_glacier_id > 0
    assert rg.sum() * 100.0 == pytest.approx(rock.area, rel=0.1)
    for y in YEARS:
        assert ((w.labels(y) == Label.ROCK_GLACIER) == rg).all()
        assert not (w.glacier_id[y][rg] > 0).any()
    assert (w.glacier_id[YEARS[0]] > 0).any()
    plain = from_user(dem, path, YEARS)  # no class column: every polygon is a glacier, as before
    assert plain.rock_glacier_id is None and (plain.glacier_id[YEARS[0]][rg] > 0).all()
    with pytest.raises(ValueError, match="no class column 'klass'.*kind"):
        from_user(dem, path, YEARS, class_column="klass")
