"""The read seam: an expired token is re-signed and the read succeeds; unreadable assets are recorded.

A real HTTP server on loopback (with Range support, as blob storage has) serves a real COG and
refuses requests whose token has expired, the way Azure answers a stale SAS token (HTTP 403).
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from stackstac.raster_spec import RasterSpec

from glacier_stac import reader
from glacier_stac.catalog import redact
from glacier_stac.testing import stac_server

VALID_TOKENS: set[str] = set()
ISSUED: list[str] = []


def test_signer(url: str, refresh: bool = False) -> str:
    """Issues an already-expired token first; a fresh one only when asked to refresh."""
    token = f"tok{len(ISSUED)}" + ("-fresh" if refresh else "-stale")
    ISSUED.append(token)
    if refresh:
        VALID_TOKENS.add(token)
    return f"{redact(url)}?sig={token}"


test_signer.__test__ = False  # not a pytest test


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    root: Path

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        u = urlparse(self.path)
        token = parse_qs(u.query).get("sig", [""])[0]
        if token not in VALID_TOKENS:
            self.send_response(403)
            body = b"<Error><Code>AuthenticationFailed</Code><Message>Signature expired</Message></Error>"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        stac_server.send_bytes(self, (self.root / u.path.lstrip("/")).read_bytes(), body=not head)


@pytest.fixture()
def blob_server(tmp_path):
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 5000) + 1
    with rasterio.open(tmp_path / "B02.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16",
                       crs="EPSG:32606", transform=from_origin(500000, 6800000, 10, 10), nodata=0,
                       tiled=True, blockxsize=32, blockysize=32) as dst:
        dst.write(arr, 1)
    handler = type("H", (RangeHandler,), {"root": tmp_path})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/B02.tif", arr
    srv.shutdown()


def make_reader(url: str, signer: reader.Signer | None, state: reader.ReaderState | None = None) -> reader.CogReader:
    spec = RasterSpec(epsg=32606, bounds=(500000, 6799360, 500640, 6800000), resolutions_xy=(10, 10))
    return reader.CogReader(url=url, signer=signer, spec=spec, resampling=rasterio.enums.Resampling.nearest,
                            dtype=np.dtype("float32"), fill_value=np.float32(np.nan), scale_offset=(1, 0),
                            state=state)


def test_expired_token_is_resigned_and_read_succeeds(blob_server):
    url, arr = blob_server
    r = make_reader(url, test_signer)
    assert "stale" in r.url  # first signature is already expired: the server answers 403
    out = r.read(Window(0, 0, 64, 64))
    np.testing.assert_array_equal(out, arr.astype(np.float32))
    assert any(t.endswith("-fresh") for t in ISSUED)
    # pickling the reader (as Dask does) never carries a token
    state = r.__getstate__()
    assert "sig=" not in state["url"]


def test_unreadable_asset_becomes_recorded_nodata(blob_server):
    url, _ = blob_server
    state = reader.ReaderState()
    r = make_reader(url.replace("B02.tif", "missing.tif") + "?sig=SECRET", signer=None, state=state)
    out = r.read(Window(0, 0, 16, 16))
    assert np.isnan(out).all()
    errs = state.errors.records()
    assert len(errs) == 1 and errs[0]["asset"].endswith("missing.tif")
    assert "SECRET" not in str(errs)  # tokens never reach the record


def test_strict_reader_raises_without_token(blob_server):
    url, _ = blob_server
    r = make_reader(url + "?sig=SECRET", signer=None)
    r.record_errors = False
    with pytest.raises(RuntimeError) as e:
        r.read(Window(0, 0, 16, 16))
    assert "SECRET" not in str(e.value) and "B02.tif" in str(e.value)


def test_gdal_cloud_settings_travel_with_the_reader(blob_server):
    """A signed reader pickles its settings and signer, never its token; the copy signs afresh."""
    url, _ = blob_server
    r = make_reader(url, test_signer)
    assert "sig=" in r.url  # the token the pickle must not carry
    state = r.__getstate__()
    clone = reader.CogReader.__new__(reader.CogReader)
    clone.__setstate__(state)
    assert clone.gdal_env.always.options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert clone.gdal_env.always.options["GDAL_HTTP_MAX_RETRY"] == "5"
    assert "sig=" not in str(state) and r.url.split("?")[1] not in str(state)
    assert clone.signer is test_signer and clone.unsigned_url == url and clone.url != r.url


def test_block_cache_is_megabytes_not_bytes(monkeypatch):
    """rasterio hands an int GDAL_CACHEMAX to GDALSetCacheMax64, in bytes: 256 would be a 256-byte cache,
    and every tile window cutting a COG block would decode it again (rasterio#2336)."""
    from rasterio._env import get_gdal_config

    with reader.capture_gdal_env().read:
        assert get_gdal_config("GDAL_CACHEMAX") >= 64 * 2**20
    # read when the environment is captured (on the client, as a cube is built), not when the module is imported
    sized = subprocess.run(
        [sys.executable, "-c", "import os; from glacier_stac import reader; os.environ['GLACIER_STAC_GDAL_CACHE_MB'] = "
         "'1024'; print(reader.capture_gdal_env().always.options['GDAL_CACHEMAX'])"],
        env={**os.environ, "GLACIER_STAC_GDAL_CACHE_MB": "oops"}, capture_output=True, text=True, check=True)
    assert int(sized.stdout) == 1024 * 2**20
    monkeypatch.setenv("GLACIER_STAC_GDAL_CACHE_MB", "oops")
    with pytest.raises(ValueError, match="GLACIER_STAC_GDAL_CACHE_MB"):
        reader.capture_gdal_env()


def _cog(path, arr, res, origin, nodata):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype,
                       crs="EPSG:32606", transform=from_origin(*origin, res, res), nodata=nodata,
                       tiled=True, blockxsize=64, blockysize=64, compress="deflate") as dst:
        dst.write(arr, 1)


@pytest.mark.parametrize(("src_res", "origin", "resampling", "nodata"), [
    (20, (500000, 6800000), "bilinear", 0),  # Sentinel-2 20 m bands
    (30, (499990, 6800020), "bilinear", 0),  # Landsat-like: 30 m, origin on another 10 m lattice point
    (30, (499185, 6800015), "bilinear", 0),  # Landsat's real grid, half a 10 m pixel off: warped
    (20, (500005, 6799995), "nearest", 0),  # half a pixel off: warped
    (20, (500000, 6800000), "nearest", 0),  # SCL
    (10, (499800, 6800400), "bilinear", 0),  # same pixels, integer offset: a plain read
    (20, (500000, 6800000), "bilinear", None),  # no declared no-data
])
def test_same_crs_reads_equal_the_warper(tmp_path, src_res, origin, resampling, nodata):
    """Skipping the warper for same-CRS sources changes no value: no-data islands, asset edges and all (a window
    past the asset's edge reads its inner part without the warper, `CogReader._read_edge_split`)."""
    rng = np.random.default_rng(src_res)
    n = 2400 // src_res
    arr = (rng.random((n, n)) * 9000 + 100).astype(np.uint16)
    arr[10:14, 20:25] = 0  # a no-data island
    arr[-3:, :] = 0  # a no-data edge
    path = tmp_path / "band.tif"
    _cog(path, arr, src_res, origin, nodata)
    # a grid larger than the asset on two sides, cut into irregular tile windows
    spec = RasterSpec(epsg=32606, bounds=(499500, 6797400, 502100, 6800000), resolutions_xy=(10, 10))
    rs = rasterio.enums.Resampling[resampling]
    fast = reader.CogReader(url=str(path), spec=spec, resampling=rs, dtype=np.dtype("uint16"),
                            fill_value=np.uint16(0))
    warped, split = [], []
    real_warped, real_split = fast._warped, fast._read_edge_split
    fast._warped = lambda h: warped.append(1) or real_warped(h)
    fast._read_edge_split = lambda *a: (lambda d: split.append(d is not None) or d)(real_split(*a))
    with rasterio.open(path) as src, WarpedVRT(src, resampling=rs, add_alpha=nodata is None,
                                               **spec.vrt_params) as vrt:
        h, w = vrt.shape
        for r0, r1 in ((0, 37), (37, 150), (150, h)):
            for c0, c1 in ((0, 71), (71, 200), (200, w)):
                win = Window(c0, r0, c1 - c0, r1 - r0)
                expect = vrt.read(1, window=win)
                if nodata is None:  # the warper's alpha band marks what lies outside the asset
                    expect[vrt.read(2, window=win) == 0] = 0
                np.testing.assert_array_equal(fast.read(win), expect, err_msg=str(win))
    if (origin[0] - 499500) % 10 == 0:
        assert 0 < len(warped) < 9, "expected some windows read without the warper and some warped"
        if nodata is not None:  # windows past the asset's edge: the inner part without the warper, the frame warped
            assert any(split), "expected a window reaching past the asset read in part without the warper"
    else:  # off the grid's lattice: the warper, always
        assert len(warped) == 9
    with rasterio.open(path) as ds:
        assert (reader.grid_to_source(ds, spec) is None) == ((origin[0] - 499500) % 10 != 0)
    fast.close()


def test_block_cache_decodes_each_block_once_across_threads():
    """Two threads wanting overlapping blocks at once: every block is decoded once, nobody deadlocks."""
    cache = reader.BlockCache(max_bytes=10**9)
    calls: list[tuple] = []
    lock = threading.Lock()

    def decode(keys):
        with lock:
            calls.extend(keys)
        time.sleep(0.02)
        return {k: np.full((4, 4), k[-1], np.uint16) for k in keys}

    keys_a = [("u", "<u2", 0, x) for x in range(0, 6)]
    keys_b = [("u", "<u2", 0, x) for x in range(3, 9)]
    results = {}
    threads = [threading.Thread(target=lambda n, k: results.__setitem__(n, cache.get(k, decode)), args=(n, k))
               for n, k in (("a", keys_a), ("b", keys_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(calls) == sorted(set(keys_a) | set(keys_b))  # 9 blocks, 9 decodes, not 12
    assert all(int(results["b"][k][0, 0]) == k[-1] for k in keys_b)


def test_block_cache_is_bounded_and_survives_a_failed_decode():
    cache = reader.BlockCache(max_bytes=3 * 32)  # three 4x4 uint16 blocks
    cache.get([("u", "<u2", 0, x) for x in range(5)], lambda ks: {k: np.zeros((4, 4), np.uint16) for k in ks})
    assert cache._bytes <= 3 * 32 and len(cache._blocks) == 3

    def broken(keys):
        raise OSError("HTTP 503")

    with pytest.raises(OSError):
        cache.get([("u", "<u2", 1, 0)], broken)
    assert not cache._inflight  # a failed decode leaves nothing for others to wait on
    again = cache.get([("u", "<u2", 1, 0)], lambda ks: {k: np.ones((4, 4), np.uint16) for k in ks})
    assert again[("u", "<u2", 1, 0)].all()
