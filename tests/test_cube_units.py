"""Cube maths on arrays, the tile grid, and the cube graph of real Planetary Computer items (no pixels read)."""

from __future__ import annotations

import http.server
import json
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
from odc.geo import geom
from shapely.geometry import box

from glacier_stac import catalog, cube, grid, reader, scenes, sensors

FIX = Path(__file__).parent / "fixtures" / "planetary-computer"


def test_composite_is_median_of_valid_and_counts():
    v = np.array([1.0, 2.0, 100.0, 3.0], dtype=np.float32).reshape(4, 1, 1, 1)
    valid = np.array([True, True, False, True]).reshape(4, 1, 1)
    med, n = cube.composite(v, valid)
    assert med[0, 0, 0] == 2.0 and n[0, 0] == 3
    none, n0 = cube.composite(v, np.zeros((4, 1, 1), bool))
    assert np.isnan(none[0, 0, 0]) and n0[0, 0] == 0  # no valid obs: NaN, never zero


def test_snow_persistence_counts_snow_over_usable_acquisitions_only():
    """Glacier ice is snow or ice in every scene (1); a seasonal patch melts out in some (below 1); rock
    never (0); a clouded or no-data scene is not an observation, and a pixel without one is NaN, not 0."""
    # five pixels x three acquisitions; stored DNs with S2's offset: reflectance = DN / 1e4 - 0.1
    snow_dn, rock_dn = (9000, 1500), (2500, 3500)  # (green, swir16) -> NDSI 0.98 and -0.2
    scenes = [["snow", "snow", "rock", "snow", "snow"],
              ["snow", "rock", "rock", "cloud", "nodata"],
              ["snow", "rock", "rock", "snow", "nodata"]]
    refl, usable = [], []
    for row in scenes:
        r = np.full((6, 1, 5), 3000, np.uint16)
        for i, what in enumerate(row):
            g, sw = snow_dn if what in ("snow", "cloud") else rock_dn
            r[1, 0, i], r[4, 0, i] = g, sw
            if what == "nodata":
                r[:, 0, i] = 0
        refl.append(r)
        usable.append(np.array([[w != "cloud" for w in row]]))
    usable[0][0, 4] = False  # the last pixel's only scene with data is clouded
    scaling = np.tile(np.array([1e-4, -0.1], np.float32), (3, 6, 1))
    got = cube.snow_persistence(refl, usable, scaling)[0]
    np.testing.assert_allclose(got[:4], [1.0, 1 / 3, 0.0, 1.0], rtol=1e-6)
    assert np.isnan(got[4])


@pytest.mark.parametrize("kind", ["float", "dn"])
def test_warmest_is_the_largest_usable_observation(kind):
    """Clouded and no-data observations never count, however warm; a pixel without one is NaN, not 0;
    DNs decode after the maximum exactly as decoded values would before it."""
    rng = np.random.default_rng(3)
    dn = rng.integers(0, 40000, (4, 1, 13, 11)).astype(np.uint16)
    dn[:, :, 0, 0] = 0  # no data in any scene
    valid = rng.random((4, 13, 11)) > 0.3
    dn[0][:, ~valid[0]] = 65000  # a clouded observation is the warmest
    scaling = np.tile([[0.00341802, 149.0]], (4, 1, 1))
    decoded = cube.decode(dn, scaling)
    ok = valid & np.isfinite(decoded).all(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        expect = np.nanmax(np.where(ok[:, None], decoded, np.nan), axis=0)
    got = cube.warmest(list(dn), list(valid), scaling[0]) if kind == "dn" else cube.warmest(list(decoded), list(valid))
    np.testing.assert_allclose(got, expect, rtol=1e-6, equal_nan=True)
    assert np.isnan(got[:, ~ok.any(axis=0)]).all() and np.isnan(got[0, 0, 0])


def test_thermal_features_keep_the_scene_that_saw_the_ground_bare():
    """Seasonal snow on rock in two of three scenes: its median is the snow's 0 degC, like a glacier's;
    its warmest observation is the rock's. A clouded warm scene is not an observation."""
    kelvin = {"snow": 272.6, "ice": 273.0, "rock": 284.0, "cloud": 300.0}
    pixels = [("ice", "ice", "ice"), ("snow", "rock", "snow"), ("ice", "ice", "cloud")]
    dn = [np.array([[[round((kelvin[p[k]] - 149.0) / 0.00341802) for p in pixels]]], np.uint16) for k in range(3)]
    qa = [np.array([[[1 if p[k] == "cloud" else 2 if p[k] in ("snow", "ice") else 0 for p in pixels]]], np.uint16)
          for k in range(3)]
    out = np.empty((4, 1, 3), np.float32)
    cube.thermal_features(dn, qa, np.tile([[0.00341802, 149.0]], (3, 1, 1)), out, usable=lambda q: q != 1,
                          snowy=lambda q: q == 2)
    np.testing.assert_allclose(out[0, 0], [273.0, 272.6, 273.0], atol=0.01)  # medians: all at melting point
    np.testing.assert_allclose(out[1, 0], [273.0, 284.0, 273.0], atol=0.01)  # warmest: the bare scene shows
    np.testing.assert_array_equal(out[2, 0], [3, 2, 2])  # usable scenes flagged snow or ice
    np.testing.assert_array_equal(out[3, 0], [3, 3, 2])


@pytest.mark.parametrize("t", [1, 2, 3, 4, 7, 8, 9, 15])
@pytest.mark.parametrize("kind", ["float", "dn"])
def test_composite_equals_nanmedian_for_any_scene_count(t, kind):
    """The sorting network (t <= 8) and the sort (t > 8), on floats (NaN no-data) and DNs (0 no-data)."""
    rng = np.random.default_rng(t)
    dn = rng.integers(0, 40, (t, 3, 17, 19)).astype(np.uint16)  # many ties, many no-data zeros
    valid = rng.random((t, 17, 19)) > 0.25
    as_float = np.where(dn == 0, np.nan, dn.astype(np.float32))
    ok = valid & np.isfinite(as_float).all(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        expect = np.nanmedian(np.where(ok[:, None], as_float, np.nan), axis=0)
    med, n = cube.composite(as_float if kind == "float" else dn, valid)
    np.testing.assert_array_equal(n, ok.sum(axis=0))
    np.testing.assert_allclose(med, expect, rtol=1e-6, equal_nan=True)
    assert np.isnan(med[:, n == 0]).all()


def test_composite_on_dns_then_decode_equals_decode_then_composite():
    rng = np.random.default_rng(1)
    dn = rng.integers(0, 12000, (5, 2, 30, 30)).astype(np.uint16)
    valid = rng.random((5, 30, 30)) > 0.2
    scaling = np.tile([[1e-4, -0.1], [0.00341802, 149.0]], (5, 1, 1))
    med, n = cube.composite(dn, valid, scaling[0])
    ref, n_ref = cube.composite(cube.decode(dn, scaling), valid)
    np.testing.assert_array_equal(n, n_ref)
    np.testing.assert_allclose(med, ref, atol=1e-4, equal_nan=True)
    values, decoding = cube._for_median(list(dn), scaling)
    assert decoding is not None and np.shares_memory(values[0], dn)  # the DNs as they are
    scaling[2, 0, 1] = 0.0  # one item of another processing baseline: decode first
    values, decoding = cube._for_median(list(dn), scaling)
    assert decoding is None
    np.testing.assert_allclose(values[2], cube.decode(dn, scaling)[2], equal_nan=True)


def test_mosaic_acquisitions_first_scene_with_data_wins():
    dn = np.zeros((3, 2, 1, 4), np.uint16)
    dn[0, :, 0, :2] = 10  # scene A of pass 0 covers the left half
    dn[1, :, 0, 1:] = 20  # scene B of pass 0 (the next tile) overlaps it by one pixel
    dn[2] = 30  # pass 1
    mask = np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1).repeat(4, axis=3)  # which scene each mask is
    out, m = (np.stack(x) for x in cube.mosaic_acquisitions([list(dn), list(mask)], np.array([0, 0, 1])))
    assert out.shape == (2, 2, 1, 4)
    np.testing.assert_array_equal(out[0, 0, 0], [10, 10, 20, 20])  # the overlap pixel keeps scene A
    np.testing.assert_array_equal(m[0, 0, 0], [0, 0, 1, 1])  # each pixel's mask comes from its own scene
    np.testing.assert_array_equal(out[1], dn[2])


def test_acquisitions_group_by_platform_track_and_solar_day():
    def item(i, when, lon, platform="Sentinel-2A", orbit=72):
        return pystac.Item(f"s{i}", None, [lon - 0.5, -45, lon + 0.5, -44], datetime.fromisoformat(when),
                           {"platform": platform, "sat:relative_orbit": orbit})

    items = [item(0, "2022-02-01T23:59:58+00:00", 170.0),  # New Zealand, 10:40 solar time
             item(1, "2022-02-02T00:00:03+00:00", 170.0),  # the next scene tile of the same pass
             item(2, "2022-02-02T00:00:03+00:00", 170.0, platform="Sentinel-2B"),
             item(3, "2022-02-02T00:00:03+00:00", 170.0, orbit=100),
             item(4, "2022-02-12T00:00:03+00:00", 170.0)]
    ids = scenes.acquisition_ids(items)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 4


def test_best_acquisitions_least_cloudy_or_spread_in_time():
    def item(i, cloud, day):
        props = {"platform": "p", "sat:relative_orbit": 1}
        if cloud is not None:
            props["eo:cloud_cover"] = cloud
        return pystac.Item(f"s{i}", None, [0, 0, 1, 1], datetime(2022, 7, day), props)

    optical = [item(0, 50, 1), item(1, 5, 5), item(2, 5, 5), item(3, 80, 9), item(4, 10, 13)]
    groups = scenes.acquisition_ids(optical)  # items 1 and 2: one pass over two scene tiles
    assert scenes.best_acquisitions(optical, groups, 2) == [1, 2, 4]
    assert scenes.best_acquisitions(optical, groups, 9) == [0, 1, 2, 3, 4]
    sar = [item(k, None, 1 + 2 * k) for k in range(9)]
    assert scenes.best_acquisitions(sar, scenes.acquisition_ids(sar), 3) == [0, 4, 8]  # start, middle, end


def test_scl_classes_masked_are_esas_clouds_shadows_and_bad_pixels():
    """From ESA's L2A legend (not from sensors.SCL_INVALID): both code paths, table lookup and isin."""
    codes = np.arange(12)
    usable = [2, 4, 5, 6, 7, 11]  # dark area, vegetation, not vegetated, water, unclassified, snow
    for dtype in (np.uint8, np.int32):
        np.testing.assert_array_equal(sensors.scl_valid(codes.astype(dtype)), np.isin(codes, usable))


def test_decode_applies_per_item_scale_offset():
    dn = np.full((2, 1, 1, 1), 2000.0, dtype=np.float32)
    scaling = np.array([[[1e-4, 0.0]], [[1e-4, -0.1]]])
    np.testing.assert_allclose(cube.decode(dn, scaling).ravel(), [0.2, 0.1], rtol=1e-6)


def test_indices_and_db():
    refl = np.zeros((6, 1, 1), np.float32)
    refl[1], refl[2], refl[3], refl[4] = 0.8, 0.7, 0.7, 0.05  # snow: green bright, SWIR dark
    ndsi, ndwi, ndvi = cube.spectral_indices(refl)[:, 0, 0]
    assert ndsi == pytest.approx((0.8 - 0.05) / 0.85)
    assert ndwi == pytest.approx(0.1 / 1.5) and ndvi == pytest.approx(0.0)
    np.testing.assert_allclose(cube.to_db(np.array([1.0, 0.1, 0.0])), [0.0, -10.0, np.nan])


def test_terrain_on_a_known_plane():
    res = 10.0
    yy, xx = np.mgrid[0:7, 0:7].astype(float)
    # rises 1 m per pixel eastwards: slope atan(0.1), faces west (downslope direction west)
    out = cube.terrain(xx * 1.0, res)
    slope, s, c, shade = out[:, 2, 2]
    assert slope == pytest.approx(np.degrees(np.arctan(0.1)), abs=1e-4)
    assert s == pytest.approx(-1.0, abs=1e-6) and c == pytest.approx(0.0, abs=1e-6)
    # rises towards the north (rows grow southwards): faces south
    out = cube.terrain(-yy * 1.0, res)
    assert out[2, 2, 2] == pytest.approx(-1.0, abs=1e-6)
    assert 0 <= shade <= 1


def test_tile_chunks_cut_on_global_tile_edges():
    gb = grid.geobox_for(geom.box(-147.3, 61.1, -147.0, 61.25, "EPSG:4326"))
    ych, xch = grid.tile_chunks(gb, 1024)
    row, col = grid.global_origin(gb)
    assert sum(ych) == gb.shape[0] and sum(xch) == gb.shape[1]
    assert (row + ych[0]) % 1024 == 0 and (col + xch[0]) % 1024 == 0
    # the same place falls in the same global pixel, whatever AOI asked for it
    gb2 = grid.geobox_for(geom.box(-147.25, 61.12, -147.1, 61.2, "EPSG:4326"))
    x, y = 490005.0, 6785005.0
    p1 = gb.wld2pix(x, y)
    p2 = gb2.wld2pix(x, y)
    assert (p1[0] + col, p1[1] + row) == pytest.approx((p2[0] + grid.global_origin(gb2)[1],
                                                        p2[1] + grid.global_origin(gb2)[0]))


def test_tile_planner_from_outlines_across_zones():
    g = gpd.GeoDataFrame({"rgi_id": ["a", "b"]},
                         geometry=[box(-147.05, 61.15, -147.0, 61.2), box(10.0, 46.0, 10.05, 46.05)], crs=4326)
    plan = grid.plan_tiles(g, buffer_m=500)
    assert set(plan.crs) == {"EPSG:32606", "EPSG:32632"}
    assert (plan.buffered_px >= plan.glacier_px).all() and plan.glacier_px.sum() > 0
    # glacier a (~2.7 km x 5.6 km) in pixels at 10 m, within 10 %
    area_a = g.iloc[[0]].to_crs(32606).area.iloc[0] / 100
    assert plan[plan.crs == "EPSG:32606"].glacier_px.sum() == pytest.approx(area_a, rel=0.1)
    with pytest.raises(ValueError, match="no glacier outlines"):
        grid.plan_tiles(g.iloc[:0])


def test_off_lattice_geobox_refused():
    from affine import Affine
    from odc.geo.geobox import GeoBox

    gb = GeoBox((100, 100), Affine(10, 0, 500003, 0, -10, 6710000), "EPSG:32606")
    with pytest.raises(ValueError, match="lattice"):
        cube.build({}, gb, 2021)


@pytest.fixture()
def pc_token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Planetary Computer's SAS token endpoint on loopback: signing runs offline, in milliseconds.

    Why: offline, planetary_computer retries the real endpoint for minutes (issue 16). The paths asked
    for are yielded, so a test can tell whether anything signed.
    """
    from planetary_computer import sas
    from planetary_computer.settings import Settings

    asked: list[str] = []

    class Tokens(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):  # keep test output quiet
            pass

        def do_GET(self):
            asked.append(self.path)
            expiry = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = json.dumps({"msft:expiry": expiry, "token": "st=2026&sp=rl&sig=OFFLINE"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tokens)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setattr(Settings.get(), "sas_url", f"http://127.0.0.1:{srv.server_address[1]}/api/sas/v1/token")
    monkeypatch.setattr(sas, "TOKEN_CACHE", {})
    yield asked
    srv.shutdown()
    srv.server_close()


def test_real_pc_items_give_a_correct_lazy_graph(monkeypatch, pc_token_endpoint):
    """Sentinel-2 and Landsat items from Planetary Computer build a cube without reading a pixel.

    Opening is refused and every read counted: the reader turns a failed open into recorded no-data, so
    refusing alone would let an eager read pass. Signing goes to a token endpoint on loopback.
    """
    import rasterio

    def no_reads(*a, **k):
        raise AssertionError("a pixel read happened while building the cube")

    reads: list[object] = []
    real_read = reader.CogReader.read
    monkeypatch.setattr(rasterio, "open", no_reads)
    monkeypatch.setattr(reader.CogReader, "read", lambda self, w, **k: reads.append(w) or real_read(self, w, **k))
    n_errors = len(reader.process_state().errors)
    s2 = catalog.normalise_item(json.loads((FIX / "sentinel-2-l2a.item.S2B_T06VVN_20190629.json").read_text()))
    gb = grid.geobox_for(geom.box(-147.3, 61.1, -147.0, 61.25, "EPSG:4326"))
    c = cube.build({"sentinel-2": [s2]}, gb, 2019, signer="planetary-computer")
    assert c.dtype == np.float32 and c.dims == ("feature", "y", "x")
    assert tuple(c.feature.values) == cube.FEATURES
    assert c.rio.crs.to_epsg() == 32606 and c.shape[1:] == gb.shape
    assert c.chunks[0] == (len(cube.FEATURES),) and c.chunks[1:] == grid.tile_chunks(gb)
    assert c.rio.transform() == gb.affine
    assert set(c.attrs["missing_sensors"]) == {"sentinel-1", "landsat", "copdem"}
    assert "https" not in json.dumps(c.attrs)  # provenance is item ids, not URLs

    landsat = [catalog.normalise_item(d) for d in json.loads((FIX / "landsat-c2-l2.items.json").read_text())
               if "lwir11" in d["assets"]]
    lb = landsat[0].bbox
    gb2 = grid.geobox_for(geom.box(lb[0] + 1, lb[1] + 1, lb[0] + 1.2, lb[1] + 1.2, "EPSG:4326"))
    c2 = cube.build({"landsat": landsat[:3]}, gb2, 2023, sensors=["landsat"])
    assert list(c2.feature.values) == ["lwir11", "lwir11_max", "landsat_snow", "landsat_count"]
    assert c2.rio.crs.to_epsg() == gb2.crs.epsg
    assert reads == [] and len(reader.process_state().errors) == n_errors, "building the cubes read pixels"
    # signing, when a read does happen, uses the loopback endpoint (so the lines above cannot hang)
    signed = reader.sign_planetary_computer(s2.assets["B02"].href)
    assert signed.endswith("?st=2026&sp=rl&sig=OFFLINE") and pc_token_endpoint


def test_missing_asset_is_a_named_gap_in_a_real_item():
    """A real Planetary Computer item without B11 still builds (no pixels read); the gap names item and asset."""
    d = json.loads((FIX / "sentinel-2-l2a.item.S2B_T06VVN_20190629.json").read_text())
    del d["assets"]["B11"]
    item = catalog.normalise_item(d)
    gb = grid.geobox_for(geom.box(-147.3, 61.1, -147.0, 61.25, "EPSG:4326"))
    c = cube.build({"sentinel-2": [item]}, gb, 2019)
    assert c.attrs["gaps"] == {f"sentinel-2/{item.id}": "no-data: lacks asset(s) B11"}
    assert c.attrs["items"]["sentinel-2"] == item.id
    del d["assets"]["SCL"]  # without its cloud mask the item is left out: the sensor is missing
    c = cube.build({"sentinel-2": [catalog.normalise_item(d)]}, gb, 2019)
    assert "lacks its mask asset SCL" in c.attrs["gaps"][f"sentinel-2/{item.id}"]
    assert "sentinel-2" in c.attrs["missing_sensors"]


def test_temporal_cv():
    v = np.array([1.0, 2.0, 3.0, 50.0], dtype=np.float32).reshape(4, 1, 1, 1)
    valid = np.array([True, True, True, False]).reshape(4, 1, 1)
    assert cube.temporal_cv(v, valid)[0, 0, 0] == pytest.approx(1.0 / 2.0)  # std 1, mean 2
    one = np.array([True, False, False, False]).reshape(4, 1, 1)
    assert np.isnan(cube.temporal_cv(v, one)[0, 0, 0])  # one look says nothing about change
