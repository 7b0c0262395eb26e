"""The cube over the generated synthetic world, searched through the real local STAC API.

Values are checked against direct rasterio reads of the same COGs; sensors against each other with a
marker planted at one spot in every sensor's native grid; clouds against SCL; bad input against the
messages it must produce.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from glacier_stac import catalog, cube, reader, sensors, stac_server
from glacier_stac.demo import world_aoi, world_grid

YEAR = 2022
# ESA's Sentinel-2 L2A scene classification: no data, saturated, cloud shadow, cloud medium/high, thin cirrus.
# Written out here, not taken from `sensors`, so a changed class list in the code cannot move the expectation.
SCL_NOT_USABLE = (0, 1, 3, 8, 9, 10)


@pytest.fixture(scope="module")
def found(world_dir, rustac_url):
    return catalog.search(world_aoi(world_dir), [2021, YEAR], catalog=catalog.open_catalog(rustac_url))


def _read_on_grid(href: str, geobox, resampling=Resampling.nearest) -> np.ndarray:
    with rasterio.open(href) as src, WarpedVRT(src, crs=geobox.crs.to_wkt(), transform=geobox.affine,
                                               width=geobox.shape[1], height=geobox.shape[0],
                                               resampling=resampling) as vrt:
        return vrt.read(1, masked=True).astype(np.float32).filled(np.nan)


def test_search_finds_every_sensor_and_year(found):
    for sensor in ("sentinel-2", "sentinel-1", "landsat"):
        assert found.items[sensor][2021] and found.items[sensor][YEAR]
        for it in found.items[sensor][YEAR]:
            assert it.datetime.year == YEAR and 7 <= it.datetime.month <= 10  # northern ablation season
    assert found.items["copdem"][0]
    assert not found.gaps


def test_search_and_build_read_no_pixels(world_dir, rustac_url, monkeypatch):
    """The counters are installed before the search (a module-scoped result would be searched unobserved)."""
    gb, aoi = world_grid(world_dir), world_aoi(world_dir)  # the world's own files say where it is
    reads = []
    orig = reader.CogReader.read
    monkeypatch.setattr(reader.CogReader, "read", lambda self, w, **k: reads.append(1) or orig(self, w, **k))
    orig_open = rasterio.open
    monkeypatch.setattr(rasterio, "open", lambda *a, **k: reads.append(1) or orig_open(*a, **k))
    found = catalog.search(aoi, [YEAR], catalog=catalog.open_catalog(rustac_url))
    assert reads == [], "searching read pixels"
    c = cube.build(found, gb, YEAR)
    assert reads == [], "building the cube read pixels"
    assert c.dtype == np.float32 and tuple(c.feature.values) == cube.FEATURES
    c.isel(x=slice(0, 8), y=slice(0, 8)).compute(scheduler="sync")
    assert reads, "computing read nothing: the counter is broken"


def test_values_equal_direct_rasterio_reads(world_dir, found):
    """Composite = median of decoded, SCL-masked reads; 20 m bands through the same bilinear warp."""
    gb = world_grid(world_dir)
    items = found.items["sentinel-2"][YEAR]
    c = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"]).compute(scheduler="threads")
    for key, rs in (("B03", Resampling.bilinear), ("B11", Resampling.bilinear)):
        stack, valid = [], []
        for it in items:
            scale, offset = sensors.SENTINEL2.scaling(it, key)
            stack.append(_read_on_grid(it.assets[key].href, gb, rs) * scale + offset)
            scl = _read_on_grid(it.assets["SCL"].href, gb, Resampling.nearest)
            valid.append(~np.isin(np.nan_to_num(scl), SCL_NOT_USABLE))
        x, ok = np.stack(stack), np.stack(valid) & np.isfinite(np.stack(stack))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices where every scene is masked
            expect = np.nanmedian(np.where(ok, x, np.nan), axis=0)
        got = c.sel(feature=key).values
        both = np.isfinite(expect) & np.isfinite(got)
        assert both.mean() > 0.5
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expect))
        np.testing.assert_allclose(got[both], expect[both], atol=2e-4)
        np.testing.assert_array_equal(c.sel(feature="s2_count").values, ok.sum(axis=0))


def test_composites_exclude_cloudy_pixels(world_dir, found):
    gb = world_grid(world_dir)
    items = found.items["sentinel-2"][YEAR]
    c = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"]).compute(scheduler="threads")
    scl = np.stack([_read_on_grid(it.assets["SCL"].href, gb) for it in items])
    cloudy = np.isin(scl, (8, 9, 10))
    assert cloudy.any(), "the test world has no clouds to exclude"
    b02 = np.stack([_read_on_grid(it.assets["B02"].href, gb) * 1e-4 + sensors.SENTINEL2.scaling(it, "B02")[1]
                    for it in items])
    count = c.sel(feature="s2_count").values
    np.testing.assert_array_equal(count, (~np.isin(scl, SCL_NOT_USABLE)).sum(0))
    # where one acquisition is cloudy and the others clear, the composite is not pulled to the cloud
    one = cloudy.sum(0) == 1
    k = np.argmax(cloudy, axis=0)
    cloud_val = np.take_along_axis(b02, k[None], 0)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices where every scene is cloudy
        clear_med = np.nanmedian(np.where(cloudy | np.isin(scl, SCL_NOT_USABLE), np.nan, b02), axis=0)
    got = c.sel(feature="B02").values
    sel = one & np.isfinite(clear_med) & (cloud_val - clear_med > 0.1)
    assert sel.sum() > 50
    np.testing.assert_allclose(got[sel], clear_med[sel], atol=1e-4)


def test_thermal_snow_counts_the_scenes_whose_qa_flags_snow(world_dir, found):
    """`landsat_snow`: per pixel, the usable Landsat scenes whose QA_PIXEL flags snow or ice (bit 5), as read
    straight from the COGs; the bare-ground lapse fit leaves those pixels out."""
    gb = world_grid(world_dir)
    items = found.items["landsat"][YEAR]
    c = cube.build({"landsat": items}, gb, YEAR, sensors=["landsat"]).compute(scheduler="threads")
    qa = np.stack([_read_on_grid(it.assets["qa_pixel"].href, gb) for it in items])
    qa = np.nan_to_num(qa, nan=1).astype(np.uint16)  # outside a scene: its fill (bit 0)
    usable = (qa & 0b11111) == 0  # fill, dilated cloud, cirrus, cloud, shadow: written out, not taken from sensors
    snow = usable & ((qa & (1 << 5)) > 0)
    assert snow.any() and (~snow & usable).any(), "the test world's thermal scenes need snow and bare pixels"
    np.testing.assert_array_equal(c.sel(feature="landsat_snow").values, snow.sum(0))
    np.testing.assert_array_equal(c.sel(feature="landsat_count").values, usable.sum(0))


def test_sensors_align_on_one_pixel(world_dir, found, tmp_path):
    """A marker planted at one map position in every sensor's native grid lands on the same cube pixel."""
    gb = world_grid(world_dir)
    x0, y0 = gb.affine * (gb.shape[1] * 0.5, gb.shape[0] * 0.5)
    x0, y0 = round(x0 / 30) * 30 + 15, round(y0 / 30) * 30 - 15  # centre of a 30 m Landsat cell
    chosen = {s: found.for_year(YEAR)[s][:1] for s in ("sentinel-2", "sentinel-1", "landsat", "copdem")}
    planted, truth = {}, {}
    for s, (it,) in chosen.items():
        it = it.clone()
        for key in sensors.get(s).asset_keys():
            src_path = Path(it.assets[key].href.replace("file://", ""))
            dst = tmp_path / s / src_path.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(src_path) as src:
                prof, arr = src.profile, src.read(1)
                if key in ("SCL",):
                    arr[:] = 4  # vegetation: clear everywhere, so the marker is not masked
                elif key == "qa_pixel":
                    arr[:] = 0
                else:
                    xs, ys = src.transform.a, -src.transform.e
                    if src.crs.to_epsg() == 4326:
                        lon, lat = Transformer.from_crs(gb.crs.to_wkt(), 4326, always_xy=True).transform(x0, y0)
                        cx, cy = lon, lat
                        half_x, half_y = 45 / (111320 * np.cos(np.radians(lat))), 45 / 110540
                    else:
                        cx, cy, half_x, half_y = x0, y0, 45, 45
                    r0, c0 = rasterio.transform.rowcol(src.transform, cx - half_x + xs / 2, cy + half_y - ys / 2)
                    r1, c1 = rasterio.transform.rowcol(src.transform, cx + half_x - xs / 2, cy - half_y + ys / 2)
                    base = {"lwir11": 40000, "vv": 0.05, "vh": 0.01, "data": 1000.0}.get(key, 1000)
                    peak = {"lwir11": 45000, "vv": 5.0, "vh": 1.0, "data": 3000.0}.get(key, 9000)
                    arr[:] = base
                    arr[r0:r1 + 1, c0:c1 + 1] = peak
                    # where the marker really is, in cube pixels (native grids need not share a lattice)
                    mx, my = src.transform * ((c0 + c1 + 1) / 2, (r0 + r1 + 1) / 2)
                    if src.crs.to_epsg() == 4326:
                        mx, my = Transformer.from_crs(4326, gb.crs.to_wkt(), always_xy=True).transform(mx, my)
                    truth[s] = ~gb.affine * (mx, my)
            prof.pop("blockxsize", None), prof.pop("blockysize", None)
            with rasterio.open(dst, "w", **{**prof, "tiled": False}) as out:
                out.write(arr, 1)
            it.assets[key].href = dst.as_uri()
        planted[s] = [it]
    c = cube.build(planted, gb, YEAR).compute(scheduler="threads")
    centroids = {}
    for f in ("B03", "B11", "vv_db", "lwir11", "elevation"):
        a = c.sel(feature=f).values
        m = a > (np.nanmin(a) + np.nanmax(a)) / 2
        assert m.any(), f
        rows, cols = np.nonzero(m)
        centroids[f] = (rows.mean() + 0.5, cols.mean() + 0.5)  # pixel centres in edge coordinates
    owner = {"B03": "sentinel-2", "B11": "sentinel-2", "vv_db": "sentinel-1", "lwir11": "landsat",
             "elevation": "copdem"}
    for f, (r, col) in centroids.items():
        want = truth[owner[f]]
        assert abs(col - want[0]) <= 0.6 and abs(r - want[1]) <= 0.6, (f, (r, col), want)
        # and every sensor's marker is within one 30 m Landsat cell of the spot asked for
        assert np.hypot(*(np.subtract(want, ~gb.affine * (x0, y0)))) <= 3.0


def test_missing_asset_is_recorded_nodata(world_dir, found, tmp_path):
    gb = world_grid(world_dir)
    items = [it.clone() for it in found.items["sentinel-1"][YEAR]]
    src = Path(items[0].assets["vv"].href.replace("file://", ""))
    gone = tmp_path / "gone.tif"
    items[0].assets["vv"].href = gone.as_uri()
    assert src.exists() and not gone.exists()
    state = reader.ReaderState()
    lazy = cube.build({"sentinel-1": items}, gb, YEAR, sensors=["sentinel-1"], state=state)
    c = lazy.compute(scheduler="threads")
    errs = reader.label_errors(state.errors.records(), lazy.attrs["assets"])
    assert errs and all(e["asset"] == gone.as_uri() for e in errs)
    assert {(e["item"], e["asset_key"]) for e in errs} == {(items[0].id, "vv")}  # which item, which asset
    assert all("No such file" in e["error"] or "not recognized" in e["error"] or "exist" in e["error"]
               for e in errs), errs[0]["error"]
    # the acquisition with the missing asset is not counted; nothing became zero
    assert c.sel(feature="s1_count").max() <= len(items) - 1
    assert np.nanmin(c.sel(feature="vv_db").values) > -60
    # SAR power 0 is invalid anyway, so a zero-filling reader would pass the lines above; 0 m is a valid
    # elevation (sea level), so a missing DEM tile must come out as NaN, not as a silent zero
    dem = [it.clone() for it in found.items["copdem"][0]]
    for it in dem:
        it.assets["data"].href = (tmp_path / "gone-dem.tif").as_uri()
    state = reader.ReaderState()
    e = cube.build({"copdem": dem}, gb.crop((64, 64)), YEAR, sensors=["copdem"], state=state).compute(
        scheduler="threads")
    assert state.errors.records(), "the missing DEM tile was not recorded"
    assert np.isnan(e.sel(feature="elevation").values).all()


def _as_hh_hv(item):
    """A Sentinel-1 item as a polar HH/HV acquisition: same pixels, other asset keys."""
    it = item.clone()
    it.assets["hh"], it.assets["hv"] = it.assets.pop("vv"), it.assets.pop("vh")
    it.properties["sar:polarizations"] = ["HH", "HV"]
    return it


def test_read_errors_on_worker_processes_name_item_and_asset(world_dir, found, tmp_path):
    """On a cluster the failure is logged by a worker process; the client's record names item and asset."""
    from glacier_stac import cluster

    gb = world_grid(world_dir).crop((128, 128))
    items = [it.clone() for it in found.items["sentinel-1"][YEAR]]
    items[1].assets["vh"].href = (tmp_path / "gone-vh.tif").as_uri()
    c = cube.build({"sentinel-1": items}, gb, YEAR, sensors=["sentinel-1"])
    with cluster.connect(cluster.ClusterSpec(workers=1, threads_per_worker=1)) as client:
        client.compute(c.data).result()
        errs = [e for e in cluster.read_errors(client, c.attrs["assets"]) if "gone-vh" in e["asset"]]
    assert errs and {(e["item"], e["asset_key"]) for e in errs} == {(items[1].id, "vh")}


def test_hh_hv_scenes_stand_in_for_vv_vh(world_dir, found):
    """Polar acquisitions carry only HH/HV: the cube composites them and says so."""
    gb = world_grid(world_dir).crop((256, 256))  # a corner is enough: same tiles, fewer pixels
    items = found.items["sentinel-1"][YEAR]
    vv = cube.build({"sentinel-1": items}, gb, YEAR, sensors=["sentinel-1"])
    hh = cube.build({"sentinel-1": [_as_hh_hv(it) for it in items]}, gb, YEAR, sensors=["sentinel-1"])
    assert hh.attrs["alternate_assets"] == {"sentinel-1": "HH+HV"} and vv.attrs["alternate_assets"] == {}
    np.testing.assert_array_equal(hh.values, vv.values)
    assert np.isfinite(hh.sel(feature="vv_db").values).mean() > 0.9


def test_polarisations_are_not_mixed(world_dir, found):
    """Two HH/HV scenes and one VV/VH: the pair most scenes carry is composited, the other scene left out."""
    gb = world_grid(world_dir).crop((256, 256))
    items = found.items["sentinel-1"][YEAR]
    assert len(items) == 3
    mixed = [_as_hh_hv(items[0]), _as_hh_hv(items[1]), items[2]]
    c = cube.build({"sentinel-1": mixed}, gb, YEAR, sensors=["sentinel-1"])
    assert c.attrs["alternate_assets"] == {"sentinel-1": "HH+HV"}
    assert list(c.attrs["gaps"]) == [f"sentinel-1/{items[2].id}"]
    assert "left out" in c.attrs["gaps"][f"sentinel-1/{items[2].id}"]
    assert c.attrs["items"]["sentinel-1"] == ",".join(i.id for i in mixed[:2])
    assert int(c.sel(feature="s1_count").max()) == 2


def test_asset_missing_from_an_item_is_a_recorded_gap(world_dir, found):
    """An S2 item without B11 (and one without SCL): no crash, that acquisition becomes no-data, said in attrs."""
    gb = world_grid(world_dir).crop((256, 256))
    items = [it.clone() for it in found.items["sentinel-2"][YEAR]]
    full = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"]).compute()
    del items[0].assets["B11"]
    del items[1].assets["SCL"]
    c = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"]).compute()
    assert c.attrs["gaps"] == {f"sentinel-2/{items[0].id}": "no-data: lacks asset(s) B11",
                               f"sentinel-2/{items[1].id}": "left out: lacks its mask asset SCL"}
    assert c.attrs["items"]["sentinel-2"] == ",".join(i.id for i in (items[0], items[2]))
    n_full, n = full.sel(feature="s2_count").values, c.sel(feature="s2_count").values
    assert n.max() <= 1 and (n <= n_full).all() and n_full.max() == 3  # two acquisitions out of three gone
    assert np.isnan(c.sel(feature="B11").values[n == 0]).all()  # nothing became zero


def test_a_tile_gathers_only_the_scenes_over_it(world_dir, found):
    """A scene elsewhere in the AOI's search result is never fetched, stacked or counted on these tiles."""
    from shapely.affinity import translate
    from shapely.geometry import mapping, shape

    gb = world_grid(world_dir)
    items = [it.clone() for it in found.items["sentinel-2"][YEAR]]
    far = items[0].clone()
    far.id = "S2A_far_away"
    far.geometry = mapping(translate(shape(far.geometry), xoff=3.0))  # 3 degrees east: another valley
    far.bbox = list(shape(far.geometry).bounds)
    c = cube.build({"sentinel-2": items + [far]}, gb, YEAR, sensors=["sentinel-2"])
    deps = c.data.__dask_graph__().get_all_dependencies()
    tiles = [k for k in deps if k[0] == c.data.name]
    assert len(tiles) == c.data.npartitions
    reads = {d for k in tiles for d in deps[k] if str(d[0]).startswith("cube-")}  # each tile's read task
    assert len(reads) == len(tiles)
    times = {d[1] for k in reads for d in deps[k] if str(d[0]).startswith("fetch_raster_window")}
    assert times == {0, 1, 2}, times  # the fourth acquisition (index 3) is no tile's input
    near = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"])
    window = dict(x=slice(0, 300), y=slice(0, 300))
    np.testing.assert_array_equal(c.isel(window).values, near.isel(window).values)


def test_a_sliver_tile_gets_the_fit_of_the_ground_around_it(world_dir, found):
    """The area's edge cuts global tiles into slivers (26 x 40 px here: too few bare pixels for a lapse line of
    their own). Each tile's lapse lines and snowline are fitted on its own and its neighbours' samples pooled:
    with 2 x 2 tiles every tile's neighbourhood is the whole area, so the derived features equal one fit over the
    whole cube, with no step at the seams."""
    gb = world_grid(world_dir)
    c = cube.build(found, gb, YEAR, tile_px=380)
    assert c.data.chunks[1:] == ((26, 374), (360, 40))
    v = c.values
    ix = list(c["feature"].values).index
    elev, ndsi, ndwi = v[ix("elevation")], v[ix("ndsi")], v[ix("ndwi")]
    for name, source in (("lst_anomaly", "lwir11"), ("lst_max_anomaly", "lwir11_max")):
        whole = cube.lst_anomaly(v[ix(source)], elev, ndsi, ndwi, v[ix("landsat_snow")])
        assert np.isfinite(whole).mean() > 0.5
        np.testing.assert_allclose(v[ix(name)], whole, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(v[ix("elev_above_snowline")], cube.elevation_above_snowline(elev, ndsi), atol=1e-3)
    again = cube.build(found, gb, YEAR, tile_px=380).values  # built again: the pooled fit is deterministic
    np.testing.assert_array_equal(again, v)


def test_a_whole_tile_fits_on_itself_and_a_cut_one_on_its_neighbours_too(world_dir, found):
    """With 200 px tiles the area holds two whole tiles (rows 106-306) and cut ones around them: a whole tile's
    fit reads its own pixels only (computing it reads no neighbour); a cut one's its neighbourhood's."""
    gb = world_grid(world_dir)
    c = cube.build(found, gb, YEAR, tile_px=200)
    assert c.data.chunks[1:] == ((106, 200, 94), (200, 200))
    v = c.values
    ix = list(c["feature"].values).index
    names = ("lwir11", "elevation", "ndsi", "ndwi", "landsat_snow")

    def own(rows: slice, cols: slice) -> np.ndarray:
        return cube.lst_anomaly(*(v[ix(n)][rows, cols] for n in names))

    whole = (slice(106, 306), slice(0, 200))
    np.testing.assert_allclose(v[ix("lst_anomaly")][whole], own(*whole), atol=1e-3)
    cut = (slice(0, 106), slice(0, 200))  # its neighbours: the tiles of rows 0-306
    np.testing.assert_allclose(v[ix("lst_anomaly")][cut], own(slice(0, 306), slice(0, 400))[cut], atol=1e-3)
    assert np.nanmax(np.abs(v[ix("lst_anomaly")][cut] - own(*cut))) > 0.01  # alone it would fit otherwise
    deps = c.data.__dask_graph__().get_all_dependencies()
    key = (c.data.name, 0, 1, 0)
    assert len([d for d in deps[key] if str(d[0]).startswith("fit-samples-")]) == 1


def test_one_acquisition_over_two_scene_tiles_counts_once(world_dir, found):
    """The same pass delivered as two overlapping scene tiles (MGRS/WRS overlap) is one observation."""
    gb = world_grid(world_dir).crop((300, 300))
    items = list(found.items["sentinel-2"][YEAR])
    twin = items[0].clone()
    twin.id = items[0].id.replace("_T06", "_T07")  # the neighbouring tile of the same datatake
    one = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"]).values
    two = cube.build({"sentinel-2": items + [twin]}, gb, YEAR, sensors=["sentinel-2"]).values
    np.testing.assert_array_equal(two, one)
    other_day = twin.clone()
    other_day.datetime = items[0].datetime.replace(day=items[0].datetime.day % 28 + 1)
    three = cube.build({"sentinel-2": items + [other_day]}, gb, YEAR, sensors=["sentinel-2"])
    count = list(cube.FEATURES).index("s2_count")
    assert three.values[count].max() == one[count].max() + 1  # another day is another observation


def test_a_tile_composites_at_most_max_acquisitions(world_dir, found):
    gb = world_grid(world_dir).crop((300, 300))
    items = list(found.items["sentinel-2"][YEAR])
    clearest = sorted(items, key=lambda it: it.properties["eo:cloud_cover"])[:2]
    c = cube.build({"sentinel-2": items}, gb, YEAR, sensors=["sentinel-2"], max_acquisitions=2)
    two = cube.build({"sentinel-2": clearest}, gb, YEAR, sensors=["sentinel-2"], max_acquisitions=None)
    assert int(c.sel(feature="s2_count").max()) == 2 and c.attrs["max_acquisitions"] == 2
    np.testing.assert_array_equal(c.values, two.values)  # the two least cloudy, nothing else
    with pytest.raises(ValueError, match="max_acquisitions"):
        cube.build({"sentinel-2": items}, gb, YEAR, max_acquisitions=0)


def test_whole_sensor_missing_is_said(world_dir, found):
    items = found.for_year(YEAR)
    items.pop("landsat")
    c = cube.build(items, world_grid(world_dir), YEAR)
    assert c.attrs["missing_sensors"] == ["landsat"]
    part = c.sel(feature=["lwir11", "landsat_count"]).isel(x=slice(0, 16), y=slice(0, 16)).compute()
    assert np.isnan(part.sel(feature="lwir11")).all() and (part.sel(feature="landsat_count") == 0).all()


def test_no_items_for_a_year_names_sensor_year_and_aoi(world_dir, rustac_url):
    aoi = world_aoi(world_dir)
    cat = catalog.open_catalog(rustac_url)
    with pytest.raises(catalog.NoItemsError) as e:
        catalog.search(aoi, [2015], sensors=["sentinel-2"], catalog=cat)
    msg = str(e.value)
    assert "sentinel-2" in msg and "2015" in msg and aoi.name in msg
    rec = catalog.search(aoi, [2015, YEAR], sensors=["sentinel-1"], catalog=cat, missing="record")
    assert rec.gaps == [("sentinel-1", 2015)] and rec.items["sentinel-1"][YEAR]


def test_client_side_cloud_filter_where_server_lacks_query(world_dir, rustac_url):
    cat = catalog.open_catalog(rustac_url)
    assert not cat.supports_query and not cat.supports_filter  # rustac memory backend
    aoi = world_aoi(world_dir)
    everything = catalog.search(aoi, [YEAR], sensors=["sentinel-2"], catalog=cat, max_cloud=None)
    clouds = sorted(it.properties["eo:cloud_cover"] for it in everything.items["sentinel-2"][YEAR])
    cut = (clouds[0] + clouds[-1]) / 2
    assert clouds[0] < cut < clouds[-1], "test world needs scenes with different cloud cover"
    some = catalog.search(aoi, [YEAR], sensors=["sentinel-2"], catalog=cat, max_cloud=cut)
    assert all(it.properties["eo:cloud_cover"] <= cut for it in some.items["sentinel-2"][YEAR])
    assert 0 < len(some.items["sentinel-2"][YEAR]) < len(clouds)


def test_server_side_cloud_filter_on_pgstac(world_dir, pgstac_url):
    cat = catalog.open_catalog(pgstac_url)
    assert cat.supports_filter or cat.supports_query
    aoi = world_aoi(world_dir)
    everything = catalog.search(aoi, [YEAR], sensors=["sentinel-2"], catalog=cat, max_cloud=None)
    clouds = sorted(it.properties["eo:cloud_cover"] for it in everything.items["sentinel-2"][YEAR])
    cut = (clouds[0] + clouds[-1]) / 2
    some = catalog.search(aoi, [YEAR], sensors=["sentinel-2"], catalog=cat, max_cloud=cut)
    assert 0 < len(some.items["sentinel-2"][YEAR]) < len(clouds)
    assert all(it.properties["eo:cloud_cover"] <= cut for it in some.items["sentinel-2"][YEAR])


def test_local_files_refused_from_a_remote_catalog(world_dir, found):
    it = found.items["sentinel-2"][YEAR][0].to_dict(transform_hrefs=False)
    with pytest.raises(PermissionError, match="local file"):
        catalog.normalise_item(it, allow_local=False)


def test_incomplete_world_is_not_served(world_dir, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(world_dir / "stac", half / "stac")
    with pytest.raises(Exception, match="world.json|incomplete"), stac_server.serve(half):
        pass
