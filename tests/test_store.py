"""The Zarr store: global layout, CF georeferencing, resumable and atomic writes, S3, STAC, clear errors.

Predictions come from the real `infer.predict` over a seeded cube (glacier_stac.testing.predictions),
with 128 px tiles so that a 3 x 3 tile region stays small; writer processes are real subprocesses,
killed with SIGKILL; the S3 store is a moto server on 127.0.0.1; the output STAC is served by
`rustac serve` and searched with pystac-client.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
import zarr

from glacier_stac import store
from glacier_stac.testing import predictions as P
from glacier_stac.testing import stac_server

TILE = 128
YEAR = 2023


@pytest.fixture(scope="module")
def pred() -> xr.Dataset:
    """A 3 x 3 tile prediction, computed once (kept lazy-shaped: chunked one tile per chunk)."""
    return P.prediction(P.Region(3, TILE)).persist(scheduler="threads")


def _write(pred: xr.Dataset, path, year: int = YEAR, only: int | None = None, **kw) -> store.WritePlan:
    run_id = store.record_run(path, {"test": True})
    wp = store.write(pred, year, path, run_id=run_id, tile_px=TILE, **kw)
    dask.compute(*(wp.tasks if only is None else wp.tasks[:only]), scheduler="threads")
    return wp


def _array_bytes(root: Path) -> dict[str, str]:
    """Digest of every file of the store's arrays (chunks and metadata), by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "_glacier_stac" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _aoi(region: P.Region):
    return region.geobox.extent


def test_read_back_is_georeferenced_and_matches_predict(pred, tmp_path):
    path = tmp_path / "preds.zarr"
    _write(pred, path)
    region = P.Region(3, TILE)
    ds = store.open_predictions(path, aoi=_aoi(region), years=[YEAR])
    gb = region.geobox
    assert ds.rio.crs.to_epsg() == 32606
    assert tuple(ds.rio.transform())[:6] == tuple(gb.affine)[:6]
    assert ds.sizes == {"year": 1, "y": gb.shape[0], "x": gb.shape[1]}
    got = ds["probability"].sel(year=YEAR).values
    want = pred["glacier_probability"].values
    assert np.array_equal(np.isnan(got), np.isnan(want)), "no-data must stay no-data (never zero)"
    assert np.isnan(want).any() and np.isfinite(want).any()
    assert np.nanmax(np.abs(got - want)) <= 0.5 / store.PROB_SCALE + 1e-6
    assert np.array_equal(ds["classes"].sel(year=YEAR).values, pred["classes"].values)
    assert np.array_equal(ds["valid"].sel(year=YEAR).values, pred["valid"].values)
    # one pixel by its coordinates, as an analyst would pick it
    yy, xx = float(ds.y[200]), float(ds.x[50])
    assert int(ds["classes"].sel(year=YEAR, y=yy, x=xx).values) == int(pred["classes"].sel(y=yy, x=xx).values)
    # plain xarray + rioxarray, no glacier_stac: CRS and coordinates from the CF grid mapping
    # (chunks=None: the zone's lattice has ~10^8 tile-year chunks, too many for one Dask graph; cut, then chunk)
    raw = xr.open_zarr(path, group="EPSG32606", consolidated=False, decode_coords="all", chunks=None)
    assert raw.rio.crs.to_epsg() == 32606
    assert raw["probability"].attrs.get("grid_mapping") == "spatial_ref" or raw["probability"].encoding.get(
        "grid_mapping") == "spatial_ref"
    sub = raw["probability"].sel(year=YEAR, y=ds.y, x=ds.x)
    assert np.allclose(sub.values, got, equal_nan=True)


def test_unwritten_tiles_are_refused_or_nodata_never_zero(pred, tmp_path):
    path = tmp_path / "partial.zarr"
    wp = _write(pred, path, only=4)
    region = P.Region(3, TILE)
    with pytest.raises(store.StoreError, match=r"incomplete: 2023: 5 tile\(s\) not done \(E32606_"):
        store.open_predictions(path, aoi=_aoi(region), years=[YEAR])
    ds = store.open_predictions(path, aoi=_aoi(region), years=[YEAR], complete_only=False)
    done = store.done_tiles(path, "EPSG32606", YEAR)
    assert done == set(wp.todo[:4])
    cls = ds["classes"].sel(year=YEAR).values
    prob = ds["probability"].sel(year=YEAR).values
    undone = [t for t in wp.todo if t not in done]
    assert undone
    # the last tile of the plan is undone: its block is all no-data, none of it zero
    r, c = (wp.todo.index(undone[-1]) // 3) * TILE, (wp.todo.index(undone[-1]) % 3) * TILE
    assert (cls[r:r + TILE, c:c + TILE] == 255).all()
    assert np.isnan(prob[r:r + TILE, c:c + TILE]).all()
    assert not ds["valid"].sel(year=YEAR).values[r:r + TILE, c:c + TILE].any()
    # a year nobody planned is named
    with pytest.raises(store.StoreError, match="no predictions for year.*2021"):
        store.open_predictions(path, aoi=_aoi(region), years=[2021])


def test_rerun_skips_done_tiles_and_never_rewrites(pred, tmp_path):
    path = tmp_path / "again.zarr"
    first = _write(pred, path)
    assert len(first.todo) == 9 and not first.skipped
    before = _array_bytes(path)
    mtimes = {p: p.stat().st_mtime_ns for p in path.rglob("c/*/*/*")}
    again = _write(pred, path)
    assert again.todo == [] and len(again.skipped) == 9 and again.tasks == []
    assert _array_bytes(path) == before
    assert {p: p.stat().st_mtime_ns for p in path.rglob("c/*/*/*")} == mtimes
    # appending a year writes new chunks only; 2023's bytes do not move
    _write(pred, path, year=2024)
    after = _array_bytes(path)
    assert {k: v for k, v in after.items() if k in before} == before
    ds = store.open_predictions(path, years=[YEAR, 2024])
    assert list(ds.year.values) == [YEAR, 2024]


def test_write_runs_the_model_once_per_tile(tmp_path, monkeypatch):
    """The three stored arrays share one model task per tile: writing must not recompute the prediction."""
    import functools

    from glacier_stac import infer

    calls = []
    real = infer._block_task

    @functools.wraps(real)  # map_blocks reads the signature (block_info)
    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(infer, "_block_task", counted)
    region = P.Region(3, TILE)
    # a patch one tile wide (stride = TILE): one model block per tile, as with production 1024 px tiles
    pred = infer.predict(P.cube(region), P.checkpoint(), patch=TILE + 2 * infer.tile_margin(P.checkpoint()))
    assert pred["probability"].data.numblocks == (1, 3, 3)
    wp = _write(pred, tmp_path / "once.zarr")
    assert len(wp.todo) == 9
    assert len(calls) == 9, f"{len(calls)} model calls for 9 tiles: the prediction was computed more than once"
    ds = store.open_predictions(tmp_path / "once.zarr", aoi=_aoi(region), years=[YEAR])
    assert np.array_equal(ds["classes"].sel(year=YEAR).values, pred["classes"].values)


def test_writers_creating_one_zone_at_once_all_succeed(tmp_path):
    """Runs (or a run's graph-building threads) that start on a new store at once all create the zone.

    Found by the demo: two tiles of one run failed with ContainsArrayError / KeyError 'classes'.
    """
    import threading

    for trial in range(3):
        path = tmp_path / f"race-{trial}.zarr"
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def create(path=path, start=start, errors=errors) -> None:
            start.wait()
            try:
                store.ensure_zone(path, P.CRS, tile_px=TILE)
            except BaseException as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)

        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, [f"{type(err).__name__}: {err}" for err in errors]
        g = zarr.open_group(str(path / "EPSG32606"), mode="r")
        assert g.attrs["complete"] and {"probability", "classes", "valid", "y", "x", "spatial_ref"} <= set(g.keys())
        assert float(g["y"][0]) == -(store.Zone(P.CRS, tile_px=TILE).row0 + 0.5) * 10.0


def _writer(path, *extra: str, sleep: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "glacier_stac.testing.predictions", str(path), "--tiles", "3",
                             "--tile-px", str(TILE), "--sleep", str(sleep), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _summary(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return {"written": [d["written"] for d in lines if "written" in d], **lines[-1]}


def test_killed_writer_resumes_to_identical_bytes(tmp_path):
    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    ref = _summary(_writer(clean))
    assert ref["todo"] == 9
    proc = _writer(killed, sleep=1.0)
    done_dir = killed / "_glacier_stac" / "done" / "EPSG32606" / str(YEAR)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(done_dir.glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    n_done = len(list(done_dir.glob("*.json")))
    assert 3 <= n_done < 9, f"the writer was to be killed mid-run, {n_done} tiles done"
    resumed = _summary(_writer(killed))
    assert resumed["skipped"] == n_done and resumed["todo"] == 9 - n_done, "the rerun redoes only unfinished tiles"
    assert len(resumed["written"]) == 9 - n_done
    assert _array_bytes(killed) == _array_bytes(clean)
    recs = {r.tile: r for r in store.records(killed, "EPSG32606", YEAR)}
    assert set(recs) == set(ref["written"])


def test_two_processes_write_different_regions_of_one_store(tmp_path):
    path = tmp_path / "shared.zarr"
    a = _writer(path, "--tcol", "0")
    b = _writer(path, "--tcol", "3")  # the 3 x 3 tiles to the east: same zone, same new store, at once
    sa, sb = _summary(a), _summary(b)
    assert sa["todo"] == 9 and sb["todo"] == 9
    both = store.done_tiles(path, "EPSG32606", YEAR)
    assert len(both) == 18
    left = store.open_predictions(path, aoi=_aoi(P.Region(3, TILE, 0, 0)), years=[YEAR])
    right = store.open_predictions(path, aoi=_aoi(P.Region(3, TILE, 0, 3)), years=[YEAR])
    for ds, region in ((left, P.Region(3, TILE, 0, 0)), (right, P.Region(3, TILE, 0, 3))):
        want = P.prediction(region)["classes"].values
        assert np.array_equal(ds["classes"].sel(year=YEAR).values, want)


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    from glacier_stac.testing.stac_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_store_through_a_local_s3_api(pred, s3_endpoint):
    import s3fs

    opts = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, key="testing", secret="testing")
    fs.mkdir("glacier-bucket")
    loc = store.Location.of("s3://glacier-bucket/runs/preds.zarr", opts)
    wp = _write(pred, loc)
    assert len(wp.todo) == 9
    assert fs.exists("glacier-bucket/runs/preds.zarr/EPSG32606/classes/zarr.json")
    assert len(store.done_tiles(loc, "EPSG32606", YEAR)) == 9
    ds = store.open_predictions(loc, aoi=_aoi(P.Region(3, TILE)), years=[YEAR])
    assert np.array_equal(ds["classes"].sel(year=YEAR).values, pred["classes"].values)
    assert ds.rio.crs.to_epsg() == 32606
    assert _write(pred, loc).todo == []
    raw = b"".join(fs.cat(p) for p in fs.find("glacier-bucket/runs/preds.zarr"))
    assert b"testing" not in raw, "storage credentials must not be written into the store"


def test_no_secret_reaches_the_store(pred, tmp_path):
    secret = "sv=2024-05-04&se=2031-01-01&sig=S3CRETt0ken"
    path = tmp_path / "signed.zarr"
    run_id = store.record_run(path, {"catalog": "https://pc.example/api/stac/v1?subscription-key=KEYSECRET",
                                     "href": f"https://x.blob.core.windows.net/c/B03.tif?{secret}"})
    items = {"sentinel-2": ["S2A_OK_ID", f"https://x.blob.core.windows.net/c/B03.tif?{secret}"],
             "sentinel-1": ["S1_ID?token=TOKSECRET"]}
    wp = store.write(pred, YEAR, path, run_id=run_id, tile_px=TILE, items=items)
    dask.compute(*wp.tasks, scheduler="threads")
    blob = b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())
    for s in (b"S3CRETt0ken", b"KEYSECRET", b"TOKSECRET", b"sig="):
        assert s not in blob, f"{s!r} leaked into the store"
    rec = store.records(path, "EPSG32606", YEAR)[0]
    assert "S2A_OK_ID" in rec.items["sentinel-2"]
    assert all("://" not in i for ids in rec.items.values() for i in ids)


class _SignedFiles(http.server.BaseHTTPRequestHandler):
    """Serves a world's COGs with Range (what GDAL's /vsicurl/ needs); counts the requests carrying the token."""

    root: Path
    signed: list[str]

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        if SIGNED_SECRET in query:
            self.signed.append(path)
        f = self.root / path.lstrip("/")
        if not f.is_file():
            self.send_error(404)
            return
        stac_server.send_bytes(self, f.read_bytes(), body)


SIGNED_SECRET = "SASs3cr3tSIG"


def test_signed_url_catalog_leaves_no_token_in_the_store(world_dir, tmp_path):
    """A catalog whose items carry SAS-signed hrefs (as Planetary Computer's signed items do), read for real
    over HTTP on loopback, predicted and written: no byte of the store holds the token."""
    import shutil
    import threading

    from glacier_stac import catalog, cube, infer
    from glacier_stac.testing.worlds import WorldDir

    token = f"st=2026-01-01&se=2031-01-01&sp=rl&sv=2021-06-08&sr=c&skoid=oid&sig={SIGNED_SECRET}"
    handler = type("Handler", (_SignedFiles,), {"root": world_dir.resolve(), "signed": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    signed_world = tmp_path / "signed-world"
    shutil.copytree(world_dir / "stac", signed_world / "stac")
    shutil.copy(world_dir / "world.json", signed_world / "world.json")
    root = world_dir.resolve().as_uri()
    for items_json in (signed_world / "stac").glob("*/items.json"):
        fc = json.loads(items_json.read_text())
        for item in fc["features"]:
            for asset in item["assets"].values():
                if asset["href"].startswith(root):
                    asset["href"] = f"{base}{asset['href'][len(root):]}?{token}"
        items_json.write_text(json.dumps(fc))
    path = tmp_path / "from-signed.zarr"
    try:
        wd = WorldDir(world_dir)
        gb, year = wd.grid(), 2022
        with stac_server.serve(signed_world) as url:
            found = catalog.search(wd.aoi(), [year], catalog=catalog.open_catalog(url, signer=None))
        hrefs = [a.href for items in found.for_year(year).values() for it in items for a in it.assets.values()]
        assert hrefs and all(SIGNED_SECRET in h for h in hrefs if h.startswith(base)), "the catalog must sign"
        data = cube.build(found, gb, year, on_read_error="raise")  # as the pipeline reads: a failed read fails
        pred = infer.predict(data, P.checkpoint())
        run_id = store.record_run(path, {"catalog": url, "hrefs": hrefs[:3]})
        wp = store.write(pred, year, path, run_id=run_id, checkpoint={"model": "cnn5"},
                         items={k: v.split(",") for k, v in data.attrs.get("items", {}).items()})
        recs = dask.compute(*wp.tasks, scheduler="threads")
    finally:
        srv.shutdown()
        srv.server_close()
    assert handler.signed, "the cube read no signed href: the test would prove nothing"
    assert sum(r.valid_px for r in recs) > 0
    assert any(ids for r in recs for ids in r.items.values()), "provenance (item ids) must be kept"
    for p in path.rglob("*"):
        if p.is_file():
            body = p.read_bytes()
            for s in (SIGNED_SECRET.encode(), b"skoid=oid"):
                assert s not in body, f"{s!r} leaked into {p.relative_to(path)}"


def test_bad_stores_get_clear_errors(pred, tmp_path):
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    with pytest.raises(store.StoreError, match="is a file"):
        _write(pred, a_file)
    with pytest.raises(store.StoreError, match="not a writable directory"):
        _write(pred, a_file / "sub" / "preds.zarr")
    with pytest.raises(store.StoreError, match="no prediction store"):
        store.open_predictions(tmp_path / "absent.zarr")
    # unwritable: /proc refuses new directories to everyone, root included (access() would say yes to root)
    with pytest.raises(store.StoreError, match="cannot create the store at /proc/glacier.zarr"):
        _write(pred, Path("/proc/glacier.zarr"))
    v2 = tmp_path / "v2.zarr"
    zarr.open_group(str(v2), mode="w", zarr_format=2)
    with pytest.raises(store.StoreError, match="format 3|not a glacier_stac"):
        _write(pred, v2)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w", zarr_format=3, attributes={"title": "someone else's"})
    with pytest.raises(store.StoreError, match="not a glacier_stac prediction store"):
        _write(pred, foreign)
    other = tmp_path / "other-grid.zarr"
    _write(pred, other)
    newer = tmp_path / "newer-layout.zarr"
    _write(pred, newer)
    zarr.open_group(str(newer), mode="r+", zarr_format=3).attrs["layout_version"] = store.LAYOUT_VERSION + 1
    with pytest.raises(store.StoreError, match=f"layout version {store.LAYOUT_VERSION + 1}; this glacier_stac reads"):
        store.open_predictions(newer)
    with pytest.raises(store.StoreError, match=f"layout version {store.LAYOUT_VERSION + 1}"):
        _write(pred, newer, year=2024)
    with pytest.raises(store.StoreError, match="128 px tiles; this run uses 10.0 m and 256 px"):
        store.write(pred, YEAR, other, run_id="x", tile_px=256)
    with pytest.raises(store.StoreError, match="year 1970 is outside"):
        store.write(pred, 1970, other, run_id="x", tile_px=TILE)
    with pytest.raises(store.StoreError, match="has no CRS"):
        store.write(pred.drop_vars("spatial_ref"), YEAR, other, run_id="x", tile_px=TILE)
    with pytest.raises(store.StoreError, match="straddles"):
        store.write(pred.chunk({"y": 100, "x": 100}), YEAR, tmp_path / "straddle.zarr", run_id="x", tile_px=TILE)


def test_output_stac_is_served_and_found_by_bbox_and_year(pred, tmp_path):
    import pystac_client


    path = tmp_path / "found.zarr"
    _write(pred, path)
    _write(pred, path, year=2024, only=3)  # incomplete: no item for 2024
    out = store.write_stac(path, tmp_path / "stac")
    coll, items = out / "collection.json", out / "items.json"
    feats = json.loads(items.read_text())["features"]
    assert [f["id"] for f in feats] == ["EPSG32606-2023"]
    assert feats[0]["assets"]["predictions"]["xarray:open_kwargs"]["group"] == "EPSG32606"

    def cmd(port: int) -> list[str]:
        return [*stac_server.rustac_command(), "serve", "--addr", f"127.0.0.1:{port}", str(coll), str(items)]

    with stac_server._http_server("rustac outputs", cmd, "127.0.0.1", 0) as url:
        client = pystac_client.Client.open(url)
        lon, lat = -147.0, 61.1
        bbox = [p for p in P.Region(3, TILE).geobox.extent.to_crs("EPSG:4326").boundingbox]
        hit = list(client.search(collections=["glacier-stac-predictions"], bbox=bbox, datetime="2023").items())
        assert [i.id for i in hit] == ["EPSG32606-2023"]
        miss = list(client.search(collections=["glacier-stac-predictions"], bbox=[lon + 20, lat, lon + 21, lat + 1],
                                  datetime="2023").items())
        assert miss == []
        asset = hit[0].assets["predictions"]
        ds = xr.open_dataset(asset.href, **asset.extra_fields["xarray:open_kwargs"])
        assert ds.rio.crs.to_epsg() == 32606 if ds.rio.crs is not None else "spatial_ref" in ds


def _kept_features(region: P.Region) -> xr.DataArray:
    """Cube features to keep beside the predictions, in their own units (a DEM in metres, a temperature in K),
    with the cube's stripes of no data; `unknown_feature` has no packing (stored as float32)."""
    c = P.cube(region)
    names = ["elevation", "lwir11", "ndsi", "vv_db"]
    scale = xr.DataArray([3000.0, 20.0, 1.0, 10.0], dims="feature", coords={"feature": names})
    offset = xr.DataArray([2000.0, 265.0, 0.0, -12.0], dims="feature", coords={"feature": names})
    kept = c.isel(feature=slice(0, 4)).assign_coords(feature=names) * scale + offset
    extra = (c.isel(feature=[0]) * 2 + 1).assign_coords(feature=["unknown_feature"])
    return xr.concat([kept, extra], dim="feature")


def test_kept_features_round_trip_packed_with_no_data_kept(pred, tmp_path):
    path = tmp_path / "features.zarr"
    region = P.Region(3, TILE)
    feats = _kept_features(region)
    wp = _write(pred, path, only=8, features=feats)
    # the 8th tile's chunks are written but its record is gone (a writer killed between the two): not done
    (path / "_glacier_stac" / "done" / "EPSG32606" / str(YEAR) / f"{wp.todo[7]}.json").unlink()
    ds = store.open_predictions(path, aoi=_aoi(region), years=[YEAR], complete_only=False)
    want = feats.values
    for i, name in enumerate(feats["feature"].values):
        got = ds[str(name)].sel(year=YEAR).values
        assert got.dtype == np.float32
        undone = [t for t in wp.todo if t not in store.done_tiles(path, "EPSG32606", YEAR)]
        assert len(undone) == 2
        for t in undone:  # written without a record, or not written: no data, never stale values
            r, c = (wp.todo.index(t) // 3) * TILE, (wp.todo.index(t) % 3) * TILE
            assert np.isnan(got[r:r + TILE, c:c + TILE]).all(), f"{name}: undone tile {t} must read as no data"
        done = np.ones(got.shape, bool)
        for t in undone:
            rr, cc = (wp.todo.index(t) // 3) * TILE, (wp.todo.index(t) % 3) * TILE
            done[rr:rr + TILE, cc:cc + TILE] = False
        w = want[i]
        assert np.array_equal(np.isnan(got[done]), np.isnan(w[done])), f"{name}: no data must stay no data"
        pk = store.FEATURE_PACKING.get(str(name))
        tol = pk.scale / 2 + 1e-4 if pk else 0.0
        err = np.nanmax(np.abs(got[done] - w[done]))
        assert err <= tol + 1e-6, f"{name}: stored within {err}, packing allows {tol}"
    # plain xarray decodes the CF packing: elevation in metres without glacier_stac
    raw = xr.open_zarr(path, group="EPSG32606", consolidated=False, decode_coords="all", chunks=None)
    assert raw["elevation"].encoding["dtype"] == np.int16 and raw["elevation"].attrs["units"] == "m"
    sub = raw["elevation"].sel(year=YEAR, y=ds.y, x=ds.x).values
    assert np.allclose(sub[done], ds["elevation"].sel(year=YEAR).values[done], equal_nan=True, atol=1e-3)


def test_kept_features_added_to_a_zone_written_without_them_and_bad_ones_refused(pred, tmp_path):
    path = tmp_path / "later.zarr"
    region = P.Region(3, TILE)
    _write(pred, path, year=2022)  # the zone made without features
    feats = _kept_features(region)
    _write(pred, path, features=feats)
    ds = store.open_predictions(path, aoi=_aoi(region), years=[2022, YEAR])
    assert np.isnan(ds["elevation"].sel(year=2022).values).all(), "a year written without features has none"
    assert np.isfinite(ds["elevation"].sel(year=YEAR).values).any()
    with pytest.raises(store.StoreError, match="may not be named 'classes'"):
        store.write(pred, 2024, path, run_id="x", tile_px=TILE, features=feats.assign_coords(
            feature=["classes", *feats["feature"].values[1:]]))
    with pytest.raises(store.StoreError, match="feature 'elevation' has values outside what its packing holds"):
        _write(pred, tmp_path / "range.zarr", features=feats.where(feats["feature"] != "elevation", 1e6))
    zone = tmp_path / "range.zarr" / "EPSG32606"
    left = [str(f.relative_to(zone)) for a in ("probability", "classes", "valid", "elevation", "ndsi")
            for f in (zone / a).rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert not left, f"a refused feature left chunks behind: {left[:3]}"
    with pytest.raises(store.StoreError, match="not on the prediction's grid"):
        store.write(pred, 2024, path, run_id="x", tile_px=TILE, features=feats.isel(y=slice(1, None)))
