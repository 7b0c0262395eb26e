"""History features: a pixel summarised over this season and the earlier ones (`cube.HISTORY`).

Pure joins on arrays, then the cube over the session's two-year world searched through the real local STAC
API: the 2022 cube with one earlier season joined holds exactly the fmin / fmax of the two one-season cubes.
"""

from __future__ import annotations

import numpy as np
import pytest

from glacier_stac import catalog, cube, sensors
from glacier_stac.demo import world_aoi, world_grid
from glacier_stac.testing.predictions import Region

NAMES = ["snow_persistence", "lst_max_anomaly", "snow_persistence_hist", "lst_max_anomaly_hist", "elevation"]


def _block(sp: float, anom: float, elev: float = 1000.0) -> np.ndarray:
    return np.array([sp, anom, sp, anom, elev], np.float32).reshape(5, 1, 1)


def test_ground_bare_in_any_earlier_season_is_in_the_history_features():
    """Snow all this summer (persistence 1, 4 K below bare ground) but melted out last summer: the history
    features read the least snowy and the warmest season; a season with no observation (NaN) changes nothing."""
    now = _block(1.0, -4.0)
    last = np.array([0.25, 0.5], np.float32).reshape(2, 1, 1)
    blank = np.full((2, 1, 1), np.nan, np.float32)
    out = cube.join_seasons(now, [last, blank], NAMES, ["snow_persistence", "lst_max_anomaly"])
    assert out[NAMES.index("snow_persistence_hist"), 0, 0] == pytest.approx(0.25)
    assert out[NAMES.index("lst_max_anomaly_hist"), 0, 0] == pytest.approx(0.5)
    # this season's own features are untouched, and so is the input block
    assert out[0, 0, 0] == 1.0 and out[1, 0, 0] == -4.0 and out[4, 0, 0] == 1000.0
    assert now[2, 0, 0] == 1.0
    # no observation this season: the earlier season stands alone
    out = cube.join_seasons(_block(np.nan, np.nan), [last], NAMES, ["snow_persistence", "lst_max_anomaly"])
    assert out[2, 0, 0] == pytest.approx(0.25) and out[3, 0, 0] == pytest.approx(0.5)
    # a glacier: snow or ice and cold in every season, whatever the order
    out = cube.join_seasons(_block(1.0, -6.0), [np.array([1.0, -9.0], np.float32).reshape(2, 1, 1)], NAMES,
                            ["snow_persistence", "lst_max_anomaly"])
    assert out[2, 0, 0] == 1.0 and out[3, 0, 0] == pytest.approx(-6.0)


def test_history_features_are_in_every_cube_and_read_by_name():
    assert {"snow_persistence_hist", "lst_max_anomaly_hist"} <= set(cube.FEATURES)
    # derived from a derived feature: lst_max_anomaly_hist needs lst_max_anomaly, itself derived
    names = [d.name for d in cube.derived_for(["lwir11_max", "landsat_snow", "elevation", "ndsi", "ndwi",
                                                "snow_persistence"])]
    assert names.index("lst_max_anomaly") < names.index("lst_max_anomaly_hist")
    assert cube.history_for(["B03", "lst_max_anomaly_hist"]) == cube.HISTORY_YEARS
    assert cube.history_for(["B03", "lst_max_anomaly"]) == 0
    with pytest.raises(ValueError, match="history must be >= 0"):
        cube.build({}, Region(tiles=1).geobox, 2022, history=-1)


@pytest.fixture(scope="module")
def seasons(world_dir, rustac_url):
    found = catalog.search(world_aoi(world_dir), [2021, 2022], catalog=catalog.open_catalog(rustac_url))
    gb = world_grid(world_dir)
    return {"found": found, "gb": gb,
            "2021": cube.build(found, gb, 2021).compute(scheduler="threads"),
            "2022": cube.build(found, gb, 2022).compute(scheduler="threads"),
            "joined": cube.build(found, gb, 2022, history=2).compute(scheduler="threads")}


def test_the_cube_joins_the_earlier_seasons_of_the_search(seasons):
    a, b, j = seasons["2021"], seasons["2022"], seasons["joined"]
    assert j.attrs["history_years"] == [2021]  # 2020 was not searched: skipped, not an error
    assert b.attrs["history_years"] == []
    for h in cube.HISTORY:
        now, then = b.sel(feature=h.source).values, a.sel(feature=h.source).values
        # one season only: the history feature is this season's
        np.testing.assert_array_equal(b.sel(feature=h.name).values, now)
        np.testing.assert_array_equal(j.sel(feature=h.name).values, h.reduce(now, then))
        assert not np.array_equal(np.isfinite(now) & (now != then), np.zeros_like(now, bool)), (
            f"{h.source}: the two seasons differ somewhere, or this test could not tell joined from not")
    # the other features are this season's, bit for bit
    rest = [f for f in j["feature"].values if f not in {h.name for h in cube.HISTORY}]
    np.testing.assert_array_equal(j.sel(feature=rest).values, b.sel(feature=rest).values)
    # provenance: the earlier season's scenes are named, by sensor and year
    assert any(k.endswith("/2021") for k in j.attrs["items"])


def test_a_first_season_has_no_history(seasons):
    first = cube.build(seasons["found"], seasons["gb"], 2021, history=2)
    assert first.attrs["history_years"] == []
    got = first.compute(scheduler="threads")
    for h in cube.HISTORY:
        np.testing.assert_array_equal(got.sel(feature=h.name).values, got.sel(feature=h.source).values)


def test_earlier_seasons_keep_only_what_the_join_reads(seasons):
    """An earlier season's cube reads only the sensors the history features come from and keeps, tile by tile,
    only the features the join reads (two of them, not the season's ~20: a tile-year holds two earlier seasons
    until its own tile joins them), equal to those features of that season's full cube."""
    names = [str(f) for f in seasons["2022"]["feature"].values]
    earlier = cube.earlier_seasons(seasons["found"], seasons["gb"], [2021, 2020], names,
                                   sensors.resolve(None), {})
    assert [y for y, _ in earlier] == [2021]  # 2020 has no scenes: skipped
    e = earlier[0][1]
    sources = [h.source for h in cube.HISTORY]
    assert [str(f) for f in e["feature"].values] == sources
    assert e.data.chunks[0] == (len(sources),)
    assert "sentinel-1" not in e.attrs["sensors"] and "sentinel-2" in e.attrs["sensors"]
    np.testing.assert_array_equal(e.compute(scheduler="threads").values, seasons["2021"].sel(feature=sources).values)


def test_keep_gives_those_features_of_the_full_cube(seasons):
    kept = cube.build(seasons["found"], seasons["gb"], 2021, keep=["elevation", "ndsi"])
    assert [str(f) for f in kept["feature"].values] == ["ndsi", "elevation"]  # the cube's order
    np.testing.assert_array_equal(kept.compute(scheduler="threads").values,
                                  seasons["2021"].sel(feature=["ndsi", "elevation"]).values)
    with pytest.raises(ValueError, match=r"keep: features \['vv_hh'\] are not made by sensors"):
        cube.build(seasons["found"], seasons["gb"], 2021, keep=["ndsi", "vv_hh"])


def test_more_years_searches_those_sensors_only(world_dir, rustac_url):
    """An annual update's search: every sensor for the year, and the seasons before it for the sensors its
    history features come from only (`catalog.search(more_years=)`); a sensor not searched is named."""
    aoi = world_aoi(world_dir)
    found = catalog.search(aoi, [2022], catalog=catalog.open_catalog(rustac_url), missing="record",
                           more_years={"sentinel-2": [2021], "landsat": [2021]})
    both = catalog.search(aoi, [2021, 2022], catalog=catalog.open_catalog(rustac_url))
    assert sorted(found.items["sentinel-2"]) == sorted(found.items["landsat"]) == [2021, 2022]
    assert sorted(found.items["sentinel-1"]) == [2022]
    for s in ("sentinel-2", "landsat"):
        assert [i.id for i in found.items[s][2021]] == [i.id for i in both.items[s][2021]]
    with pytest.raises(ValueError, match=r"more_years names sensors \['sentinel-3'\] that are not searched"):
        catalog.search(aoi, [2022], ["sentinel-2"], catalog=catalog.open_catalog(rustac_url),
                       more_years={"sentinel-3": [2021]})
