"""The synthetic world is physically plausible, deterministic and its yearly change is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from glacier_stac.synthetic import truth
from glacier_stac.synthetic.terrain import slope_deg
from glacier_stac.synthetic.world import Label, Surface, World, WorldConfig, build_world

YEARS = (2019, 2020, 2021, 2022)
LOSS = (0.02, 0.04)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=1, size_km=5.0, years=YEARS, area_loss_per_year=LOSS))


def test_geobox_is_snapped_utm(world: World) -> None:
    gb = world.geobox
    assert gb.crs.epsg == 32606  # -147 E, 61.2 N
    assert gb.shape == (500, 500)
    assert gb.resolution.x == 10 and gb.resolution.y == -10
    assert gb.affine.c % 10 == 0 and gb.affine.f % 10 == 0
    for y in world.years:
        assert world.surface[y].shape == gb.shape and world.surface[y].dtype == np.uint8
        assert world.glacier_id[y].dtype == np.int32
        assert world.ice_thickness[y].dtype == np.float32
    assert world.elevation.dtype == np.float32 and world.elevation.shape == gb.shape


def test_same_seed_same_world_other_seed_other_world(world: World) -> None:
    again = build_world(WorldConfig(seed=1, size_km=5.0, years=YEARS, area_loss_per_year=LOSS))
    np.testing.assert_array_equal(again.elevation, world.elevation)
    for y in YEARS:
        np.testing.assert_array_equal(again.surface[y], world.surface[y])
        np.testing.assert_array_equal(again.glacier_id[y], world.glacier_id[y])
        np.testing.assert_array_equal(again.ice_thickness[y], world.ice_thickness[y])
    other = build_world(WorldConfig(seed=2, size_km=5.0, years=YEARS[:1]))
    assert np.abs(other.elevation - world.elevation).mean() > 50.0


def test_relief_and_slopes_are_mountainous(world: World) -> None:
    z = world.elevation
    assert z.min() < -50.0  # a fjord
    assert 1000.0 < z.max() < 2500.0  # a 5 km world: lower summits than the 20 km default
    land = world.bed >= 0
    s = slope_deg(world.bed.astype(np.float64), 10.0)[land]
    assert 15.0 < np.median(s) < 40.0
    assert np.mean(s > 45.0) < 0.25  # mostly below 45 degrees ...
    assert np.mean(s > 50.0) > 0.005  # ... with cliffs and headwalls


def test_sea_is_on_the_south_edge(world: World) -> None:
    sea = world.surface[YEARS[0]] == Surface.SEA
    assert sea[-1, :].any() and not sea[0, :].any()
    assert (world.elevation[sea] < 0).all()


def test_glaciers_have_accumulation_areas(world: World) -> None:
    """Ice below the ELA only as tongues of glaciers that reach above it: no ice on low isolated spots."""
    for y in YEARS:
        ice = world.glacier_id[y] > 0
        surf = world.bed + world.ice_thickness[y]
        lab, n = ndimage.label(ice, structure=np.ones((3, 3), bool))
        top = np.asarray(ndimage.maximum(surf - world.ela[y], lab, index=np.arange(1, n + 1)))
        assert (top >= 0).all(), f"{y}: ice body entirely below the ELA"
        for g in np.unique(world.glacier_id[y][ice]):
            assert (surf - world.ela[y])[world.glacier_id[y] == g].max() >= 0
        assert ((world.surface[y] == Surface.SNOW) == (ice & (world.surface[y] == Surface.SNOW))).all()


def test_several_distinct_glaciers(world: World) -> None:
    ids = np.unique(world.glacier_id[YEARS[0]])
    assert 4 <= ids[ids > 0].size <= 25


def test_debris_on_lower_tongues(world: World) -> None:
    y = YEARS[0]
    ids, s = world.glacier_id[y], world.surface[y]
    surf = world.bed + world.ice_thickness[y]
    debris = s == Surface.DEBRIS
    assert debris.sum() > 100
    assert (ids[debris] > 0).all()
    assert np.mean(surf[debris] < world.ela[y][debris]) > 0.9
    # One tongue is largely debris-covered.
    below = (ids > 0) & (surf < world.ela[y])
    frac = [debris[below & (ids == g)].mean() for g in np.unique(ids[below]) if (below & (ids == g)).sum() > 200]
    assert max(frac) > 0.5


def test_calving_front_meets_sea_and_sea_ice(world: World) -> None:
    assert world.calving_ids
    g = world.calving_ids[0]
    for y in YEARS:
        s, ids = world.surface[y], world.glacier_id[y]
        front = ndimage.binary_dilation(ids == g, structure=np.ones((3, 3), bool)) & ~(ids == g)
        assert (s[front] == Surface.SEA).any() or (s[front] == Surface.SEA_ICE).any(), y
        sea_ice = s == Surface.SEA_ICE
        assert sea_ice.sum() > 10
        near = ndimage.binary_dilation(ids == g, iterations=10)
        assert (sea_ice & near).any(), f"{y}: no melange at the calving front"
        assert (world.bed[ids == g] < 0).any()  # grounded below sea level


def test_all_surface_classes_present(world: World) -> None:
    seen = set()
    for y in YEARS:
        seen |= set(np.unique(world.surface[y]).tolist())
    # rock glaciers are drawn only in the continental and high-mountain regimes; this world is maritime
    assert seen == {int(c) for c in Surface} - {int(Surface.ROCK_GLACIER)}


def test_moraine_hugs_the_tongues_and_covers_the_forefield(world: World) -> None:
    """Ice-free glacial debris (the optical lookalike of debris-covered ice) sits beside the tongues."""
    first = world.glacier_id[YEARS[0]] > 0
    from_first = ndimage.distance_transform_edt(~first)
    for y in YEARS:
        s, ids = world.surface[y], world.glacier_id[y]
        moraine = s == Surface.MORAINE
        assert moraine.sum() > 500, y
        assert (ids[moraine] == 0).all(), f"{y}: moraine on a glacier"
        assert (world.labels(y)[moraine] == Label.BACKGROUND).all()
        assert (world.bed[moraine] >= 0).all()  # land only: never lake, sea or sea ice
        # Lateral/terminal moraines: a band of at most 8 px outside the first year's tongues.
        assert from_first[moraine].max() <= 8.0 + 1e-6, y
        # ... beside the lower (below-ELA) tongues, and right beside the debris-covered one.
        surf = world.bed + world.ice_thickness[y]
        lower = (ids > 0) & (surf < world.ela[y])
        assert (ndimage.binary_dilation(lower, iterations=2) & moraine).sum() > 200, y
        debris = s == Surface.DEBRIS
        assert (ndimage.binary_dilation(debris, iterations=3) & moraine).sum() > 20, y
        # Forefield: every land pixel that was ice in the first year and is not ice now is moraine.
        forefield = first & (ids == 0) & ~np.isin(s, (Surface.LAKE, Surface.SEA, Surface.SEA_ICE))
        assert (s[forefield] == Surface.MORAINE).all(), y
    assert ((world.surface[YEARS[-1]] == Surface.MORAINE) & first).sum() > 500  # the forefield shows


def test_proglacial_lake_at_a_terminus(world: World) -> None:
    y = YEARS[-1]
    lake = world.surface[y] == Surface.LAKE
    assert lake.sum() > 20
    ice = world.glacier_id[y] > 0
    assert (ndimage.binary_dilation(lake, iterations=2) & ice).any()


def test_area_loss_each_year_in_range_and_ids_stable(world: World) -> None:
    for a, b in zip(YEARS, YEARS[1:], strict=False):
        ia, ib = world.glacier_id[a], world.glacier_id[b]
        loss = 1.0 - (ib > 0).sum() / (ia > 0).sum()
        assert LOSS[0] <= loss <= LOSS[1], (b, loss)
        # Retreat only: this year's ice lies in last year's, with the same glacier id.
        assert ((ib > 0) <= (ia > 0)).all()
        assert (ib[ib > 0] == ia[ib > 0]).all()
        # Every glacier thins or keeps its thickness.
        assert (world.ice_thickness[b][ib > 0] <= world.ice_thickness[a][ib > 0] + 1e-3).mean() > 0.95


def test_outlines_match_pixels(world: World) -> None:
    gdf = truth.outlines_all_years(world)
    assert list(gdf.columns) == truth.COLUMNS
    assert gdf.crs.to_epsg() == 32606
    assert gdf.geometry.is_valid.all()
    px = 100.0
    for y in YEARS:
        ids = world.glacier_id[y]
        rows = gdf[gdf.year == y]
        assert sorted(rows.glacier_id) == sorted(np.unique(ids[ids > 0]).tolist())
        for r in rows.itertuples():
            n = int((ids == r.glacier_id).sum())
            assert r.area_m2 == n * px
            assert abs(r.geometry.area - r.area_m2) < 1e-6 * r.area_m2
            assert r.clean_area_m2 + r.debris_area_m2 == r.area_m2
        assert rows.calving.sum() >= 1
    # Per-glacier change is known: summing per glacier gives the total change.
    ch = truth.area_changes(gdf)
    for a, b in zip(YEARS, YEARS[1:], strict=False):
        total = ch[ch.year == b].change_m2.sum()
        assert total == ((world.glacier_id[b] > 0).sum() - (world.glacier_id[a] > 0).sum()) * px
        assert total < 0
    g = int(ch.glacier_id.iloc[0])
    n = [(world.glacier_id[y] == g).sum() * px for y in YEARS]
    assert ch[ch.glacier_id == g].change_m2.tolist()[1:] == np.diff(n).tolist()


def test_outlines_bad_year(world: World) -> None:
    with pytest.raises(ValueError, match="year 1999"):
        truth.outlines(world, 1999)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size_km": -1.0}, "size_km"),
        ({"area_loss_per_year": (0.05, 0.01)}, "area_loss_per_year"),
        ({"years": (2021, 2020)}, "increasing"),
        ({"difficulty": "extreme"}, "difficulty"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_world(WorldConfig(**kwargs))


@pytest.mark.parametrize("seed, loss", [(7, (0.05, 0.07)), (3, (0.0, 0.0))])
def test_other_seeds_and_loss_ranges(seed: int, loss: tuple[float, float]) -> None:
    """Every seed gets a calving glacier, debris, lakes, and the configured yearly loss."""
    years = (2020, 2021, 2022)
    w = build_world(WorldConfig(seed=seed, size_km=4.0, years=years, area_loss_per_year=loss))
    assert w.calving_ids
    for a, b in zip(years, years[1:], strict=False):
        na, nb = (w.glacier_id[a] > 0).sum(), (w.glacier_id[b] > 0).sum()
        assert loss[0] <= 1.0 - nb / na <= loss[1]
    s = w.surface[years[0]]
    for c in (Surface.DEBRIS, Surface.SEA_ICE, Surface.LAKE, Surface.SNOW, Surface.VEGETATION, Surface.MORAINE):
        assert (s == c).any(), c.name


def test_a_cached_world_is_redrawn_when_what_draws_it_changes_not_when_a_cube_feature_is_added(monkeypatch) -> None:
    """The cache key of generated worlds: a sensor record that only gains a cube feature (issue 13's snow
    persistence) or renames its features draws the same pixels, so every cached world stays valid; a changed band
    scale does not."""
    from dataclasses import replace

    from glacier_stac import sensors
    from glacier_stac.synthetic.writer import generator_fingerprint

    before = generator_fingerprint()
    s2 = sensors.SENTINEL2
    renamed = replace(s2, features=tuple(f"{f}_v2" for f in s2.features), count_feature=f"{s2.count_feature}_v2")
    monkeypatch.setitem(sensors.SENSORS, s2.name, renamed)
    assert generator_fingerprint() == before
    bands = (replace(s2.bands[0], scale=2 * s2.bands[0].scale), *s2.bands[1:])
    monkeypatch.setitem(sensors.SENSORS, s2.name, replace(s2, bands=bands))
    assert generator_fingerprint() != before
