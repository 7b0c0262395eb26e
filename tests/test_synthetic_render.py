"""Sensor rendering and the world writer: physics that a glacier mapper relies on, and the file contract.

Small worlds (~4 km) from a hand-made DEM (a ridge with two glacier valleys, one calving into a fjord)
through `from_user`, so the classes the assertions need are known to exist; plus one smoke test of
`generate` over the physics engineer's `build_world`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import Polygon

from glacier_stac import sensors
from glacier_stac.synthetic import render as R
from glacier_stac.synthetic import spectra, writer
from glacier_stac.synthetic.user import from_user
from glacier_stac.synthetic.world import Surface, WorldConfig

FIXTURES = Path(__file__).parent / "fixtures" / "planetary-computer"
COLLECTIONS = ("sentinel-2-l2a", "sentinel-1-rtc", "landsat-c2-l2", "cop-dem-glo-30")
YEARS = (2021, 2022)  # both sides of the Sentinel-2 processing baseline 04.00 (25 Jan 2022)


def make_inputs(folder: Path, size_km: float = 4.0, lon: float = -147.0, lat: float = 61.2) -> tuple[Path, Path]:
    """A DEM GeoTIFF in EPSG:4326 (ridge to the east, fjord to the west) and outlines in UTM (GeoPackage)."""
    n = 400
    dlat = size_km / 111.0 / n
    dlon = dlat / np.cos(np.radians(lat))
    tf = Affine(dlon, 0, lon - n / 2 * dlon, 0, -dlat, lat + n / 2 * dlat)
    yy, xx = np.mgrid[0:n, 0:n] / n
    z = -80 + 2400 * xx**1.3
    for yc in (0.3, 0.72):
        z -= 500 * np.exp(-(((yy - yc) / 0.07) ** 2)) * (0.3 + xx)
    z += 40 * np.random.default_rng(1).standard_normal((n, n)).cumsum(0).cumsum(1) / n
    dem = folder / "dem.tif"
    profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="float32", crs="EPSG:4326", transform=tf)
    with rasterio.open(dem, "w", **profile) as ds:
        ds.write(z.astype("float32"), 1)
    polys = []
    for yc, x0 in ((0.3, -0.05), (0.72, 0.35)):
        pts = [(x0, yc - 0.06), (0.95, yc - 0.12), (0.95, yc + 0.12), (x0, yc + 0.06)]
        polys.append(Polygon([tf * (x * n, y * n) for x, y in pts]))
    outlines = folder / "outlines.gpkg"
    gpd.GeoDataFrame({"name": ["a", "b"]}, geometry=polys, crs="EPSG:4326").to_crs("EPSG:32606").to_file(outlines)
    return dem, outlines


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("user-inputs"))


@pytest.fixture(scope="module")
def world(inputs):
    return from_user(*inputs, years=YEARS, seed=5, difficulty="hard")


@pytest.fixture(scope="module")
def world_dir(world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return writer.write_world(world, tmp_path_factory.mktemp("render") / "w", progress=False)


def items_of(root: Path, collection: str) -> list[dict]:
    return json.loads((root / "stac" / collection / "items.json").read_text())["features"]


def read_asset(item: dict, key: str) -> np.ndarray:
    with rasterio.open(item["assets"][key]["href"].removeprefix("file://")) as ds:
        return ds.read(1)


def acquisition_of(world, item: dict) -> R.Acquisition:
    """The acquisition an item was rendered from (matched on datetime)."""
    lon, lat = R.world_center(world)
    for acq in R.acquisitions(world.config, lon, lat):
        if acq.datetime.strftime("%Y-%m-%dT%H:%M:%S") == item["properties"]["datetime"][:19]:
            return acq
    raise AssertionError(f"no acquisition for item {item['id']}")


def pure_blocks(classes: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Class of each f x f block and whether the block holds one class only (no mixed edge pixels)."""
    h, w = (classes.shape[0] // f) * f, (classes.shape[1] // f) * f
    b = classes[:h, :w].reshape(h // f, f, w // f, f)
    return b[:, 0, :, 0], (b.min(axis=(1, 3)) == b.max(axis=(1, 3)))


def decode(item: dict, key: str) -> np.ndarray:
    scale, offset = sensors.SENTINEL2.scaling(item, key)
    return read_asset(item, key).astype(np.float64) * scale + offset


# ------------------------------------------------------------------------------------------ optics


def test_ndsi_separates_snow_and_ice_from_debris_and_rock(world, world_dir):
    items = items_of(world_dir, "sentinel-2-l2a")
    baselines = {sensors._baseline_tuple(i["properties"]["s2:processing_baseline"]) >= (4, 0) for i in items}
    assert baselines == {True, False}, "both DN conventions must be exercised"
    counts = dict.fromkeys(("snowice", "bare"), 0)
    for item in items:
        acq = acquisition_of(world, item)
        green = R.block_mean(decode(item, "B03"), 2)
        swir = decode(item, "B11")
        ndsi = (green - swir) / (green + swir)
        cls, pure = pure_blocks(R.scene_classes(world, acq), 2)
        scl = read_asset(item, "SCL")[: cls.shape[0], : cls.shape[1]]
        clear = pure & sensors.scl_valid(scl) & (scl != sensors.SCL["dark_area"])
        ndsi = ndsi[: cls.shape[0], : cls.shape[1]]
        snowice = clear & np.isin(cls, (Surface.SNOW, Surface.ICE))
        bare = clear & np.isin(cls, (Surface.DEBRIS, Surface.ROCK, Surface.SCREE))
        assert (ndsi[snowice] > 0.4).mean() > 0.98, item["id"]
        assert (ndsi[bare] < 0.2).mean() > 0.98, item["id"]
        counts["snowice"] += int(snowice.sum())
        counts["bare"] += int(bare.sum())
        debris = clear & (cls == Surface.DEBRIS)
        if debris.sum() > 50:
            assert np.median(ndsi[debris]) < 0.2
    assert counts["snowice"] > 1000 and counts["bare"] > 1000


def test_acquisitions_fall_in_the_end_of_ablation_season():
    north = WorldConfig(seed=1, years=(2020, 2021), s2_per_year=4, s1_per_year=2, landsat_per_year=3)
    south = dataclasses.replace(north, center_lon=-73.5, center_lat=-49.3)  # Southern Patagonian Icefield
    for config, months in ((north, range(7, 11)), (south, range(1, 5))):
        acqs = R.acquisitions(config)
        assert acqs == R.acquisitions(config)  # deterministic
        for sensor, n in (("sentinel-2", 4), ("sentinel-1", 2), ("landsat", 3)):
            for year in config.years:
                these = [a for a in acqs if a.sensor == sensor and a.year == year]
                assert len(these) == n
                assert all(a.datetime.year == year and a.datetime.month in months for a in these), these
                assert len({a.datetime for a in these}) == n
    assert {a.platform for a in R.acquisitions(north) if a.sensor == "sentinel-1" and a.year >= 2022} <= {"SENTINEL-1A"}


def test_reflectance_decodes_the_same_on_both_baselines(world):
    """The same surface read through `scaling` gives the same reflectance before and after baseline 04.00."""
    r = np.array([[0.05, 0.3], [0.9, 0.0]])
    for baseline, offset in (("02.12", 0.0), ("05.10", -0.1)):
        dn = R.s2_encode(r, baseline)
        item = {"properties": {"s2:processing_baseline": baseline}, "assets": {"B03": {}}}
        scale, off = sensors.SENTINEL2.scaling(item, "B03")
        assert off == offset
        np.testing.assert_allclose(dn * scale + off, r, atol=1e-4)
        assert dn.min() >= 1  # 0 is nodata


def test_scl_marks_clouds_where_the_cloud_field_is(world, world_dir):
    items = items_of(world_dir, "sentinel-2-l2a")
    covers = []
    for item in items:
        acq = acquisition_of(world, item)
        opacity = R.cloud_field(world.elevation.shape, R.rng_for(world.config.seed, acq, "clouds"), acq.cloud_target)
        cloudy = R.block_mean(opacity, 2) >= R.CLOUD_MASK_OPACITY
        scl = read_asset(item, "SCL")
        flagged = np.isin(scl, (sensors.SCL["cloud_medium"], sensors.SCL["cloud_high"]))
        np.testing.assert_array_equal(flagged, cloudy)
        assert not sensors.scl_valid(scl)[cloudy].any()
        pct = 100.0 * np.isin(scl, (8, 9, 10)).mean()
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(pct, abs=1e-3)
        covers.append(pct)
        if cloudy.mean() > 0.05:  # clouds are bright in the SWIR, unlike snow
            assert decode(item, "B11")[cloudy & (R.block_mean(opacity, 2) > 0.8)].mean() > 0.35
    assert max(covers) > 10 and min(covers) < 10, covers


def test_landsat_debris_is_colder_than_rock(world, world_dir):
    seen = 0
    for item in items_of(world_dir, "landsat-c2-l2"):
        acq = acquisition_of(world, item)
        scale, offset = sensors.LANDSAT.scaling(item, "lwir11")
        assert (scale, offset) == (0.00341802, 149.0)
        t = read_asset(item, "lwir11") * scale + offset
        qa = read_asset(item, "qa_pixel")
        fill = qa == 1
        np.testing.assert_array_equal(fill, read_asset(item, "lwir11") == sensors.LANDSAT.nodata(item, "lwir11"))
        cloud = (qa[~fill] & (1 << 3)) > 0
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(100 * cloud.mean(), abs=0.01)
        cls, pure = pure_blocks(R.scene_classes(world, acq), 3)
        t, qa = t[: cls.shape[0], : cls.shape[1]], qa[: cls.shape[0], : cls.shape[1]]
        clear = pure & sensors.landsat_qa_valid(qa)
        debris = clear & (cls == Surface.DEBRIS)
        rock = clear & np.isin(cls, (Surface.ROCK, Surface.SCREE))
        ice = clear & (cls == Surface.ICE)
        if debris.sum() < 20 or rock.sum() < 20:
            continue
        seen += 1
        assert t[debris].mean() < t[rock].mean() - 3.0
        assert 276 < t[debris].mean() < 287
        assert abs(np.median(t[ice]) - 273.0) < 1.5
    assert seen >= 2


@pytest.fixture(scope="module")
def moraine_world():
    """A generated world (the physics' `build_world`): moraines beside a debris-covered tongue."""
    from glacier_stac.synthetic.world import build_world

    return build_world(WorldConfig(seed=3, size_km=4.0, years=(2021, 2022), s1_per_year=2, landsat_per_year=2))


def test_moraine_looks_like_debris_in_optics_but_not_in_thermal_or_sar(moraine_world):
    """Debris-covered ice and ice-free moraine: same reflectance, NDSI < 0.2, SCL 5; moraine 4+ K warmer
    and without the ice-cliff/pond outliers in SAR."""
    w = moraine_world
    prep = R.prepare(w)
    lon, lat = R.world_center(w)
    thermal_scenes = 0
    for acq in R.acquisitions(w.config, lon, lat):
        cls = R.scene_classes(w, acq)
        debris, moraine = cls == Surface.DEBRIS, cls == Surface.MORAINE
        if acq.sensor == "sentinel-2":
            zen, _, cos_i = R.sun(w, acq, prep)
            lit = cos_i > 0.2
            d, m = debris & lit, moraine & lit
            assert d.sum() > 500 and m.sum() > 500
            refl = R.s2_reflectance(w, acq, prep, cls, zen, cos_i)  # the clear-sky surface of the scene
            illum = spectra.illumination_factor(cos_i, zen)
            for key, r in refl.items():  # topography aside, the two are the same rock
                r = r / illum
                assert abs(np.median(r[d]) - np.median(r[m])) < 0.01, (acq, key)
                q = np.percentile(r[d], (10, 90))
                assert 0.7 < np.mean((r[m] > q[0]) & (r[m] < q[1])) < 0.9, (acq, key)  # overlapping spreads
            ndsi = (refl["B03"] - refl["B11"]) / (refl["B03"] + refl["B11"])
            assert (ndsi[d] < 0.2).mean() > 0.99 and (ndsi[m] < 0.2).mean() > 0.99
            scl = R.render_sentinel2(w, acq, prep).assets["SCL"].data
            cls20, pure = pure_blocks(cls, 2)
            scl = scl[: cls20.shape[0], : cls20.shape[1]]
            clear = pure & sensors.scl_valid(scl) & (scl != sensors.SCL["dark_area"])
            assert (scl[clear & (cls20 == Surface.MORAINE)] == sensors.SCL["not_vegetated"]).all()
        elif acq.sensor == "sentinel-1":  # moraine backscatters like rock, without cliffs and ponds
            vv = R.render_sentinel1(w, acq, prep).assets["vv"].data
            ok = vv != sensors.S1_NODATA

            def odd(c, cls=cls, ok=ok, vv=vv):
                v = vv[ok & (cls == c)]
                med = np.median(v)
                return 10 * np.log10(med), np.mean((v > 4 * med) | (v < 0.05 * med))

            (m_db, m_odd), (d_db, d_odd), (r_db, _) = odd(Surface.MORAINE), odd(Surface.DEBRIS), odd(Surface.ROCK)
            assert abs(m_db - r_db) < 1.5 and abs(m_db - d_db) < 1.5, (m_db, d_db, r_db)
            assert d_odd > 3 * m_odd, (d_odd, m_odd)
        elif acq.sensor == "landsat":
            scene = R.render_landsat(w, acq, prep)
            t = scene.assets["lwir11"].data * R.LWIR_SCALE + R.LWIR_OFFSET
            cls30, pure = pure_blocks(cls, 3)
            clear = pure & sensors.landsat_qa_valid(scene.assets["qa_pixel"].data)[: cls30.shape[0], : cls30.shape[1]]
            t = t[: cls30.shape[0], : cls30.shape[1]]
            d, m = clear & (cls30 == Surface.DEBRIS), clear & (cls30 == Surface.MORAINE)
            if d.sum() < 20 or m.sum() < 20:
                continue
            thermal_scenes += 1
            assert t[d].mean() < t[m].mean() - 4.0, acq
            assert 276 < t[d].mean() < 287 and t[m].mean() > 287, acq
    assert thermal_scenes >= 2


def test_sentinel1_backscatter_and_nodata(world, world_dir):
    items = items_of(world_dir, "sentinel-1-rtc")
    nodata_scenes = 0
    for item in items:
        acq = acquisition_of(world, item)
        vv = read_asset(item, "vv")
        vh = read_asset(item, "vh")
        assert vv.dtype == np.float32 and vh.dtype == np.float32
        nodata = vv == sensors.S1_NODATA
        np.testing.assert_array_equal(nodata, vh == sensors.S1_NODATA)
        nodata_scenes += bool(nodata.any())
        cls = R.scene_classes(world, acq)
        ok = ~nodata

        def med_db(c, cls=cls, ok=ok, vv=vv):
            return 10 * np.log10(np.median(vv[ok & np.isin(cls, c)]))

        assert med_db((Surface.SNOW,)) < med_db((Surface.ROCK,)) - 6  # wet snow is dark
        assert med_db((Surface.SEA_ICE,)) > med_db((Surface.SEA,)) + 6  # ice melange is rough
        assert abs(med_db((Surface.DEBRIS,)) - med_db((Surface.ROCK,))) < 3  # debris ~ rock in SAR
    assert nodata_scenes >= 1


# ---------------------------------------------------------------------------------------- contract


def test_items_follow_the_planetary_computer_contract(world_dir):
    fixtures = [json.loads((FIXTURES / "sentinel-2-l2a.item.S2B_T06VVN_20190629.json").read_text())]
    fixtures += [i for i in json.loads((FIXTURES / "landsat-c2-l2.items.json").read_text()) if "lwir11" in i["assets"]]
    synthetic = [i for c in COLLECTIONS for i in items_of(world_dir, c)]
    assert {i["collection"] for i in synthetic} == set(COLLECTIONS)
    for item in fixtures + synthetic:
        sensor = sensors.get(item["collection"])
        for key in sensor.asset_keys():
            assert key in item["assets"], (item["id"], key)
            scale, offset = sensor.scaling(item, key)
            assert isinstance(scale, float) and isinstance(offset, float)
            sensor.nodata(item, key)
    for item in synthetic:
        sensor = sensors.get(item["collection"])
        assert item["properties"]["proj:code"].startswith("EPSG:")
        assert "datetime" in item["properties"] and "platform" in item["properties"]
        for key in sensor.asset_keys():
            a = item["assets"][key]
            assert a["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
            assert a["href"].startswith("file:///") and Path(a["href"][7:]).is_file()
            assert len(a["proj:shape"]) == 2 and len(a["proj:transform"]) == 6
            rb = a["raster:bands"][0]
            assert rb["data_type"] == sensor.band(key).dtype
            assert rb.get("nodata") == sensor.band(key).nodata
            with rasterio.open(a["href"][7:]) as ds:
                assert list(ds.shape) == a["proj:shape"]
                assert list(ds.transform)[:6] == pytest.approx(a["proj:transform"])
                assert ds.dtypes[0] == sensor.band(key).dtype
        if sensor.name == "sentinel-2":
            p = item["properties"]
            assert p["s2:mgrs_tile"] == "06VVN" and p["sat:orbit_state"] in ("ascending", "descending")
            assert "eo:cloud_cover" in p and item["assets"]["B03"]["eo:bands"][0]["common_name"] == "green"
            assert "scale" not in item["assets"]["B03"]["raster:bands"][0]  # as on PC: the baseline decides
            assert item["id"].startswith(("S2A_MSIL2A_", "S2B_MSIL2A_"))
        if sensor.name == "sentinel-1":
            assert item["properties"]["sar:polarizations"] == ["VV", "VH"]
        if sensor.name == "landsat":
            assert item["assets"]["lwir11"]["raster:bands"][0]["scale"] == 0.00341802
    import pystac

    for item in synthetic:
        pystac.Item.from_dict(item)
    for c in COLLECTIONS:
        coll = pystac.Collection.from_dict(json.loads((world_dir / "stac" / c / "collection.json").read_text()))
        assert coll.id == c


def test_dem_item_is_epsg4326_at_one_arcsecond(world_dir):
    (item,) = items_of(world_dir, "cop-dem-glo-30")
    assert item["properties"]["proj:code"] == "EPSG:4326"
    assert item["properties"]["datetime"].startswith("2021-04-22")
    t = item["assets"]["data"]["proj:transform"]
    assert t[0] == 1 / 3600 and t[4] == -1 / 3600
    for edge in (t[2], t[5]):
        assert abs(edge * 3600 - round(edge * 3600)) < 1e-6  # whole arc-seconds
    with rasterio.open(item["assets"]["data"]["href"][7:]) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.res == pytest.approx((1 / 3600, 1 / 3600), rel=1e-12)
        z = ds.read(1)
    assert (z != -32767).all() and z.max() > 1500 and z.min() >= 0


def test_cogs_are_valid_cloud_optimized(world_dir):
    from rio_cogeo.cogeo import cog_validate

    paths = sorted((world_dir / "cogs").rglob("*.tif"))[:6] + sorted((world_dir / "truth").glob("labels_*.tif"))
    for p in paths:
        valid, errors, _ = cog_validate(str(p), quiet=True)
        assert valid, (p, errors)
        with rasterio.open(p) as ds:
            assert ds.profile["compress"] == "deflate"


def test_truth_is_written_per_year(world, world_dir):
    gdf = gpd.read_parquet(world_dir / "truth" / "outlines.parquet")
    assert set(gdf["year"]) == set(YEARS)
    a = gdf.groupby("year")["area_m2"].sum()
    assert a[YEARS[1]] < a[YEARS[0]]  # glaciers shrink
    for year in YEARS:
        with rasterio.open(world_dir / "truth" / f"labels_{year}.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), world.labels(year))
    meta = json.loads((world_dir / "world.json").read_text())
    assert meta["years"] == list(YEARS) and meta["collections"]["sentinel-2-l2a"] == 3 * len(YEARS)


def test_same_seed_same_bytes(world, world_dir, tmp_path):
    again = writer.write_world(world, tmp_path / "again", progress=False)

    def digests(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "cogs").rglob("*.tif")) + sorted((root / "truth").glob("*.tif"))
        }

    assert digests(again) == digests(world_dir)
    for c in ("sentinel-2-l2a", "landsat-c2-l2"):
        a = (world_dir / "stac" / c / "items.json").read_text().replace(str(world_dir), "ROOT")
        b = (again / "stac" / c / "items.json").read_text().replace(str(again), "ROOT")
        assert a == b
    other = dataclasses.replace(world, config=dataclasses.replace(world.config, seed=6))
    acq = R.acquisitions(other.config)[0]
    assert not np.array_equal(R.render(world, acq).assets["B03"].data, R.render(other, acq).assets["B03"].data)


def test_generated_terrain_same_seed_same_world():
    """`test_same_seed_same_bytes` starts from a user DEM; this one goes through the generated terrain."""
    from glacier_stac.synthetic.world import build_world

    config = WorldConfig(seed=3, size_km=2, years=(2021, 2022))
    a, b = build_world(config), build_world(config)
    np.testing.assert_array_equal(a.bed, b.bed)
    np.testing.assert_array_equal(a.elevation, b.elevation)
    for year in config.years:
        np.testing.assert_array_equal(a.surface[year], b.surface[year])
    acq = R.acquisitions(config)[0]
    np.testing.assert_array_equal(R.render(a, acq).assets["B03"].data, R.render(b, acq).assets["B03"].data)


# --------------------------------------------------------------------------- interruption, cache, errors


def test_world_json_absent_when_writing_is_interrupted(world, world_dir, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    writer.write_world(world, out, progress=False)
    assert (out / "world.json").is_file()
    real = writer.write_cog
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "write_cog", flaky)
    with pytest.raises(KeyboardInterrupt):
        writer.write_world(world, out, progress=False)
    assert not (out / "world.json").exists()
    assert writer.read_world_json(out) is None
    assert not list(out.rglob("*.part")) or all(p.name.startswith(".") for p in out.rglob("*.part"))


def test_world_json_absent_when_the_writer_is_killed(inputs, tmp_path):
    """A real SIGKILL in the middle of writing leaves no completion marker behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    dem, outlines = inputs
    out = tmp_path / "killed"
    code = (
        "from glacier_stac.synthetic.user import from_user; from glacier_stac.synthetic.writer import write_world; "
        f"write_world(from_user({str(dem)!r}, {str(outlines)!r}, range(2013, 2025)), {str(out)!r}, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not ((out / "cogs").exists() and any((out / "cogs").rglob("*.tif"))):
            assert proc.poll() is None, "writer ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list((out / "cogs").rglob("*.tif"))
    assert not (out / "world.json").exists()
    assert writer.read_world_json(out) is None


def test_generate_reuses_a_complete_world(world, tmp_path, monkeypatch):
    import glacier_stac.synthetic.world as world_mod

    config = WorldConfig(
        seed=5, size_km=4.0, years=YEARS, center_lon=world.config.center_lon, center_lat=world.config.center_lat
    )
    built = []

    def fake_build(cfg):
        built.append(cfg)
        return dataclasses.replace(world, config=cfg)

    monkeypatch.setattr(world_mod, "build_world", fake_build, raising=False)
    out = writer.generate(config, tmp_path / "g", progress=False)
    stamp = (out / "world.json").stat().st_mtime_ns
    assert writer.generate(config, out, progress=False) == out and len(built) == 1
    assert (out / "world.json").stat().st_mtime_ns == stamp
    writer.generate(dataclasses.replace(config, seed=9), out, progress=False)  # other config: rewritten
    assert len(built) == 2 and json.loads((out / "world.json").read_text())["config"]["seed"] == 9
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthetic world"):
        writer.generate(config, tmp_path / "foreign", progress=False)


def test_user_render_bad_input(inputs, tmp_path):
    dem, outlines = inputs
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        from_user(tmp_path / "missing.tif", outlines, YEARS)
    with pytest.raises(FileNotFoundError, match="nothing.gpkg"):
        from_user(dem, tmp_path / "nothing.gpkg", YEARS)
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(ValueError, match="junk.tif"):
        from_user(junk, outlines, YEARS)
    with pytest.raises(ValueError, match="dem.tif"):
        from_user(dem, dem, YEARS)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[Polygon([(10, 45), (10.1, 45), (10.1, 45.1)])], crs="EPSG:4326").to_file(far)
    with pytest.raises(ValueError, match="do not overlap the DEM"):
        from_user(dem, far, YEARS)
    with pytest.raises(ValueError, match="empty"):
        from_user(dem, outlines, [])
    with pytest.raises(ValueError, match="increasing"):
        from_user(dem, outlines, [2022, 2021])


def test_cli_synthetic_commands(inputs, tmp_path):
    from typer.testing import CliRunner

    from glacier_stac.cli import app

    dem, outlines = inputs
    runner = CliRunner()
    for cmd in (["synthetic", "--help"], ["synthetic", "generate", "--help"], ["synthetic", "render", "--help"]):
        assert runner.invoke(app, cmd).exit_code == 0

    def render(dem_path: Path, *extra: str):
        args = [
            "synthetic",
            "render",
            "--dem",
            str(dem_path),
            "--outlines",
            str(outlines),
            "--out",
            str(tmp_path / "o"),
        ]
        return runner.invoke(app, [*args, *extra])

    bad = render(tmp_path / "x.tif")
    assert bad.exit_code == 2 and "x.tif" in bad.output
    bad = render(dem, "--years", "2023-2019")
    assert bad.exit_code == 2 and "reversed" in bad.output
    ok = render(dem, "--years", "2022")
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "world.json").is_file()
    ql = runner.invoke(app, ["synthetic", "quicklook", str(tmp_path / "o")])
    assert ql.exit_code == 0, ql.output
    pngs = sorted((tmp_path / "o" / "quicklook").glob("*.png"))
    assert {p.name for p in pngs} >= {"sentinel-2_2022.png", "sentinel-1_2022.png", "landsat_2022.png", "copdem.png"}
    bad = runner.invoke(app, ["synthetic", "quicklook", str(tmp_path)])
    assert bad.exit_code == 2 and "world.json" in bad.output


def test_generate_with_build_world(tmp_path):
    """The real physics through the real writer (skipped only while build_world has not landed)."""
    import glacier_stac.synthetic.world as world_mod

    if not hasattr(world_mod, "build_world"):
        pytest.skip("build_world has not landed yet")
    config = WorldConfig(seed=3, size_km=4, years=(2021, 2022), s2_per_year=1, s1_per_year=1, landsat_per_year=1)
    out = writer.generate(config, tmp_path / "gen", progress=False)
    meta = json.loads((out / "world.json").read_text())
    assert meta["collections"] == {"cop-dem-glo-30": 1, "landsat-c2-l2": 2, "sentinel-1-rtc": 2, "sentinel-2-l2a": 2}
    assert (out / "truth" / "outlines.parquet").is_file()


def test_generate_takes_turns_with_another_process_drawing_the_same_world(world, tmp_path, monkeypatch):
    """A process drawing a world holds its lock file: a second `generate` of the same world waits for it,
    then reuses the complete world instead of writing over half-written files (two trainings drawing one
    world crashed each other before)."""
    import threading

    import glacier_stac.synthetic.world as world_mod
    from glacier_stac.locking import locked

    config = WorldConfig(seed=5, size_km=4.0, years=YEARS, center_lon=world.config.center_lon,
                         center_lat=world.config.center_lat)
    built = []
    monkeypatch.setattr(world_mod, "build_world",
                        lambda cfg: built.append(cfg) or dataclasses.replace(world, config=cfg), raising=False)
    out = tmp_path / "g"
    done = threading.Event()
    with locked(out.resolve()):  # another process is drawing it
        t = threading.Thread(target=lambda: (writer.generate(config, out, progress=False), done.set()))
        t.start()
        assert not done.wait(1.5), "generate drew the world while another process held its lock"
        assert not built
    t.join(60)
    assert done.is_set() and len(built) == 1
    assert writer.generate(config, out, progress=False) == out.resolve() and len(built) == 1  # reused
