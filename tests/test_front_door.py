"""The front door: what a new user meets first — bad input, secrets in URLs, the README's own example.

Every command of the CLI gets bad inputs (bboxes, years, numbers, invalid and antimeridian geometries,
unwritable and wrong-type output paths, secrets in URLs) and must answer exit code 2 with a message
naming the input, no traceback, no secret, and nothing left behind. Secrets are served by a real HTTP
server on loopback that answers 503/403/404 on signed hrefs; every log record the process makes is captured.
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely import make_valid
from shapely.geometry import Polygon, box
from stackstac.raster_spec import RasterSpec
from typer.testing import CliRunner

from glacier_stac import catalog, cli, grid, reader
from glacier_stac.redact import redact

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Zq7SECRETsig"  # appears in every signed href and catalog key below; must appear in no output
PROBE_PREFIX = ".glacier-stac-probe-"


# --------------------------------------------------------------------------- a server that refuses


class Refusing(http.server.BaseHTTPRequestHandler):
    """/503/... -> 503 (retried), /403/... -> 403 with an Azure-like body, /404/... -> 404 with HTML."""

    def log_message(self, *a):  # quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def do_POST(self):
        self._answer(head=False)

    def _answer(self, head: bool):
        code = int(self.path.split("/")[1]) if self.path.split("/")[1] in ("403", "404", "503") else 404
        body = {403: b"<Error><Code>AuthenticationFailed</Code><Message>Signature did not match</Message></Error>",
                404: b"<!DOCTYPE HTML><html><body>Not Found</body></html>",
                503: b"<Error><Code>ServerBusy</Code></Error>"}[code]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


@pytest.fixture(scope="module")
def refusing() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def secret_signer(url: str, refresh: bool = False) -> str:
    """Signs like Planetary Computer (an Azure SAS token), with SECRET in the signature and the oid."""
    return f"{redact(url)}?st=2024-01-01&se=2030-01-01&sp=rl&sv=2021-06-08&sr=c&skoid=oid{SECRET}&sig={SECRET}"


class Everything(logging.Handler):
    """Every record of the process, formatted as a handler would print it (message and traceback)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def all_logs() -> Iterator[Everything]:
    root = logging.getLogger()
    h = Everything()
    old = root.level, {n: logging.getLogger(n).level for n in ("rasterio", "urllib3", "glacier_stac")}
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    for n in old[1]:
        logging.getLogger(n).setLevel(logging.DEBUG)
    yield h
    root.removeHandler(h)
    root.setLevel(old[0])
    for n, lvl in old[1].items():
        logging.getLogger(n).setLevel(lvl)


def test_signed_hrefs_that_fail_never_reach_logs_records_or_errors(refusing, all_logs):
    """GDAL retries a 503 and reports a 403 with the full signed URL; none of it may reach a log line."""
    spec = RasterSpec(epsg=32606, bounds=(500000, 6799360, 500640, 6800000), resolutions_xy=(10, 10))
    env = reader.capture_gdal_env().updated(always={"GDAL_HTTP_MAX_RETRY": "2", "GDAL_HTTP_RETRY_DELAY": "0.1",
                                                    "CPL_DEBUG": "ON", "CPL_CURL_VERBOSE": "NO"})
    state = reader.ReaderState()
    readers = []
    for code in ("503", "403"):
        r = reader.CogReader(url=f"{refusing}/{code}/c/item/B03.tif", spec=spec, signer=secret_signer, state=state,
                             resampling=rasterio.enums.Resampling.nearest, dtype=np.dtype("float32"),
                             fill_value=np.float32(np.nan), gdal_env=env)
        assert SECRET in r.url  # the reader really reads signed hrefs
        assert np.isnan(r.read(Window(0, 0, 16, 16))).all()
        readers.append(r)
    strict = readers[1].__class__(**{**readers[1].__getstate__(), "record_errors": False})
    with pytest.raises(RuntimeError) as err:
        strict.read(Window(0, 0, 16, 16))
    errors = state.errors.records()
    assert len(errors) == 2 and {e["asset"].split("/")[3] for e in errors} == {"503", "403"}
    assert any("503" in line or "403" in line for line in all_logs.lines), "GDAL said nothing about the failure?"
    assert any(f"{refusing}/503/c/item/B03.tif" in line for line in all_logs.lines)  # the URL is named...
    leaks = [line for line in all_logs.lines if SECRET in line]
    assert not leaks, leaks[:3]  # ...its token never is
    assert SECRET not in str(errors) and SECRET not in str(err.value)
    assert all(SECRET not in str(r.__getstate__()) for r in readers)


def test_truncated_cog_records_the_underlying_reason(tmp_path):
    arr = np.random.default_rng(0).integers(1, 5000, (512, 512)).astype("uint16")
    path = tmp_path / "B03.tif"
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint16", crs="EPSG:32606",
                       transform=from_origin(500000, 6800000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate") as dst:
        dst.write(arr, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the last blocks are gone
    spec = RasterSpec(epsg=32606, bounds=(500000, 6794880, 505120, 6800000), resolutions_xy=(10, 10))
    state = reader.ReaderState()
    r = reader.CogReader(url=str(path), spec=spec, resampling=rasterio.enums.Resampling.nearest,
                         dtype=np.dtype("float32"), fill_value=np.float32(np.nan), state=state)
    assert np.isnan(r.read(Window(256, 256, 256, 256))).all()
    (err,) = state.errors.records()
    assert "IReadBlock" in err["error"] or "TIFFReadEncodedTile" in err["error"], err["error"]
    assert "See previous exception" not in err["error"]


@pytest.mark.parametrize("code, words", [("403", "HTTP 403"), ("404", "HTTP 404"), ("503", "503")])
def test_catalog_key_never_printed_at_any_verbosity(refusing, code, words):
    """A key in the catalog URL: urllib3 prints the path of every retry, the error quotes the URL."""
    url = f"{refusing}/{code}/api/stac/v1?subscription-key={SECRET}&token={SECRET}"
    p = subprocess.run([sys.executable, "-m", "glacier_stac.cli", "-vv", "catalog", "search", "10,46,10.1,46.1",
                        "--years", "2021", "--url", url], capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert SECRET not in out, [line for line in out.splitlines() if SECRET in line][:3]
    assert words in out and "Traceback" not in out
    assert f"{refusing}/{code}/api/stac/v1" in out  # the catalog is still named


# --------------------------------------------------------------------------- inputs a user brings


def _write(gdf: gpd.GeoDataFrame, path: Path) -> Path:
    gdf.to_file(path)
    return path


BOWTIE = Polygon([(-147.5, 61.0), (-147.0, 61.5), (-147.0, 61.0), (-147.5, 61.5), (-147.5, 61.0)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    (d / "file.txt").write_text("not a directory")
    (d / "notvector.gpkg").write_text("{not a vector file")
    (d / "adir").mkdir()
    _write(gpd.GeoDataFrame({"rgi_id": ["RGI-AM"]}, crs=4326,  # written naively across 180°: spans 359.6°
                            geometry=[Polygon([(179.8, 60), (-179.8, 60), (-179.8, 60.2), (179.8, 60.2)])]),
           d / "antimeridian.gpkg")
    _write(gpd.GeoDataFrame({"rgi_id": ["RGI-OK", "RGI-FLAT"]}, crs=4326,  # the second has no area
                            geometry=[box(-147.1, 61.1, -147.0, 61.2),
                                      Polygon([(-147.2, 61.1), (-147.1, 61.1), (-147.0, 61.1), (-147.2, 61.1)])]),
           d / "degenerate.gpkg")
    _write(gpd.GeoDataFrame({"rgi_id": ["RGI-BOW"]}, geometry=[BOWTIE], crs=4326), d / "bowtie.gpkg")
    # a small DEM in UTM 6N (a hill), holes written as an undeclared -9999, and outlines on it
    x0, y0, n = 500000.0, 6790000.0, 200
    yy, xx = np.mgrid[0:n, 0:n]
    z = (300 + 1500 * np.exp(-((xx - 100) ** 2 + (yy - 100) ** 2) / 3000.0)).astype("float32")
    z[90:110, 60:80] = -9999  # on the hill, beside the glacier
    with rasterio.open(d / "dem.tif", "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
                       crs="EPSG:32606", transform=from_origin(x0, y0, 10, 10)) as dst:  # no nodata tag
        dst.write(z, 1)
    glacier = Polygon([(x0 + 900, y0 - 700), (x0 + 1400, y0 - 700), (x0 + 1400, y0 - 1300), (x0 + 900, y0 - 1300)])
    bowtie = Polygon([(x0 + 900, y0 - 700), (x0 + 1400, y0 - 1300), (x0 + 1400, y0 - 700), (x0 + 900, y0 - 1300)])
    _write(gpd.GeoDataFrame({"rgi_id": ["G1"]}, geometry=[glacier], crs=32606), d / "glacier.gpkg")
    _write(gpd.GeoDataFrame({"rgi_id": ["G-BOW"]}, geometry=[bowtie], crs=32606), d / "glacier_bowtie.gpkg")
    _write(gpd.GeoDataFrame({"rgi_id": ["G-FLAT"]}, crs=32606,
                            geometry=[Polygon([(x0 + 900, y0 - 700), (x0 + 1000, y0 - 800), (x0 + 1100, y0 - 900)])]),
           d / "glacier_flat.gpkg")
    ok = f'[aoi]\nbbox = "-147.1,61.1,-147.0,61.2"\n[store]\nurl = "{d}/preds.zarr"\n'
    (d / "key.toml").write_text('[run]\nyeras = [2021]\n' + ok)
    (d / "years.toml").write_text('[run]\nyears = [2035]\n' + ok)
    (d / "flight.toml").write_text('[run]\nyears = [2021]\ntiles_in_flight = 0\n' + ok)
    (d / "notoml.toml").write_text("[run\nyears=")
    (d / "secretcat.toml").write_text('[run]\nyears = [2021]\n[catalog]\nurl = "{srv}"\nmax_cloud = 150\n' + ok)
    (d / "s3inv.toml").write_text('[run]\nyears = [2021]\n[inventory]\nurl = "s3://b/inv"\n' + ok)
    (d / "noinv.toml").write_text('[run]\nyears = [2021]\n' + ok)
    return d


def test_bowtie_is_repaired_and_planned_whole(inputs, caplog):
    """A self-intersecting outline is planned as make_valid repairs it (both lobes), and the user is told."""
    g = gpd.read_file(inputs / "bowtie.gpkg")
    with caplog.at_level(logging.WARNING):
        plan = grid.plan_tiles(g, buffer_m=500)
    assert any("RGI-BOW" in r.getMessage() and "Self-intersection" in r.getMessage() for r in caplog.records)
    zone = "EPSG:32606"
    repaired = gpd.GeoSeries([make_valid(BOWTIE)], crs=4326).to_crs(zone)
    assert plan.glacier_px.sum() == pytest.approx(repaired.area.iloc[0] / 100, rel=0.02)
    assert plan.buffered_px.sum() == pytest.approx(repaired.buffer(500).area.iloc[0] / 100, rel=0.02)


def test_outline_file_mixing_valid_and_invalid_geometries_is_searchable(tmp_path, caplog):
    overlapping = Polygon([(-147.2, 61.1), (-146.9, 61.3), (-146.9, 61.1), (-147.2, 61.3)])  # bow-tie over the box
    path = _write(gpd.GeoDataFrame({"rgi_id": ["A", "B", "C"]}, crs=4326,
                                   geometry=[box(-147.1, 61.15, -147.0, 61.25), overlapping, overlapping]),
                  tmp_path / "mixed.gpkg")
    with caplog.at_level(logging.WARNING):
        aoi = catalog.load_aoi(path)
    assert aoi.bbox == pytest.approx((-147.2, 61.1, -146.9, 61.3))
    assert aoi.geometry.geom.area == pytest.approx(box(-147.1, 61.15, -147.0, 61.25).union(
        make_valid(overlapping)).area, rel=1e-6)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "outline B " in messages and "outline C " in messages and "Self-intersection" in messages


def test_render_repairs_outlines_and_fills_untagged_dem_holes(inputs, caplog):
    from glacier_stac.synthetic.config import Surface
    from glacier_stac.synthetic.user import from_user

    with caplog.at_level(logging.WARNING):
        world = from_user(inputs / "dem.tif", inputs / "glacier_bowtie.gpkg", [2021], seed=1)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "G-BOW" in messages and "-9999" in messages
    assert world.elevation.min() > 200  # the -9999 holes were filled from their neighbours
    assert not (world.surface[2021] == Surface.SEA).any()  # a hole on a mountain is not the sea
    # both lobes of the repaired bow-tie are glacier (an invalid one fills one lobe, or makes GEOS raise)
    assert (world.glacier_id[2021] > 0).sum() * 100 == pytest.approx(2 * 250 * 300, rel=0.1)


# --------------------------------------------------------------------------- every command, bad input

SEARCH = ["catalog", "search"]
BBOX = "10,46,10.1,46.1"
GEN = ["synthetic", "generate", "--out", "{out}/world"]
RENDER = ["synthetic", "render", "--dem", "{in}/dem.tif", "--outlines", "{in}/glacier.gpkg", "--out", "{out}/w"]
TRAIN = ["train", "--out", "{out}/m.pt"]
DEMO = ["demo", "--out", "{out}/demo"]

# (id, argv, words the message must hold)
CASES = [
    ("search bbox 3 numbers", [*SEARCH, "10,46,10.1", "--years", "2021"], ["10,46,10.1", "4"]),
    ("search bbox nan", [*SEARCH, "10,46,nan,46.1", "--years", "2021"], ["10,46,nan,46.1", "finite"]),
    ("search bbox min>max", [*SEARCH, "10.1,46,10,46.1", "--years", "2021"], ["10.1,46,10,46.1", "reversed"]),
    ("search bbox west reversed", [*SEARCH, "-147.0,61.1,-147.3,61.25", "--years", "2021"],  # leading '-'
     ["-147,61.1,-147.3,61.25", "reversed"]),
    ("search bbox lat reversed", [*SEARCH, "10,46.1,10.1,46", "--years", "2021"], ["10,46.1,10.1,46", "reversed"]),
    ("search bbox antimeridian", [*SEARCH, "179.5,60,-179.5,61", "--years", "2021"], ["antimeridian"]),
    ("search bbox metres", [*SEARCH, "500000,6.7e6,510000,6.8e6", "--years", "2021"], ["lon/lat"]),
    ("search bbox polar", [*SEARCH, "10,85,11,86", "--years", "2021"], ["latitude", "polar"]),
    ("search years future", [*SEARCH, BBOX, "--years", "2035"], ["--years", "2035", "future"]),
    ("search years 1800", [*SEARCH, BBOX, "--years", "1800"], ["--years", "1800", "satellite era"]),
    ("search years -5", [*SEARCH, BBOX, "--years=-5"], ["--years", "-5"]),
    ("search years reversed", [*SEARCH, BBOX, "--years", "2023-2021"], ["--years", "reversed"]),
    ("search years text", [*SEARCH, BBOX, "--years", "last"], ["--years", "last"]),
    ("search years empty", [*SEARCH, BBOX, "--years", ""], ["--years", "empty"]),
    ("search max-cloud -5", [*SEARCH, BBOX, "--years", "2021", "--max-cloud", "-5"], ["--max-cloud"]),
    ("search max-cloud nan", [*SEARCH, BBOX, "--years", "2021", "--max-cloud", "nan"], ["--max-cloud", "nan"]),
    ("search max-cloud 150", [*SEARCH, BBOX, "--years", "2021", "--max-cloud", "150"], ["--max-cloud", "150"]),
    ("search ids on bbox", [*SEARCH, BBOX, "--years", "2021", "--ids", "RGI-1"], ["ids", "RGI-1", "bbox"]),
    ("search sensor", [*SEARCH, BBOX, "--years", "2021", "--sensors", "modis"], ["modis"]),
    ("search antimeridian file", [*SEARCH, "{in}/antimeridian.gpkg", "--years", "2021"], ["RGI-AM", "antimeridian"]),
    ("search no-area outline", [*SEARCH, "{in}/degenerate.gpkg", "--years", "2021", "--url", "{srv}/404/"],
     ["RGI-FLAT", "invalid"]),
    ("search dir as aoi", [*SEARCH, "{in}/adir", "--years", "2021"], ["adir", "directory"]),
    ("search junk file", [*SEARCH, "{in}/notvector.gpkg", "--years", "2021"], ["notvector.gpkg"]),
    ("search unknown option", [*SEARCH, BBOX, "--years", "2021", "--yeers", "2021"], ["--yeers"]),
    ("search key 403", [*SEARCH, BBOX, "--years", "2021", "--url",
                        "{srv}/403/stac?subscription-key=" + SECRET], ["HTTP 403", "/403/stac"]),
    ("search key 404", [*SEARCH, BBOX, "--years", "2021", "--url", "{srv}/404/stac?sig=" + SECRET + "&sv=1"],
     ["HTTP 404", "/404/stac"]),
    ("search password 403", [*SEARCH, BBOX, "--years", "2021", "--url",
                             "{srv_userinfo}/403/stac"], ["HTTP 403"]),
    ("tiles antimeridian", ["tiles", "{in}/antimeridian.gpkg"], ["RGI-AM", "antimeridian"]),
    ("tiles no-area outline", ["tiles", "{in}/degenerate.gpkg"], ["RGI-FLAT", "invalid"]),
    ("tiles junk file", ["tiles", "{in}/notvector.gpkg"], ["notvector.gpkg"]),
    ("tiles missing file", ["tiles", "{in}/nope.gpkg"], ["nope.gpkg"]),
    ("tiles dir", ["tiles", "{in}/adir"], ["adir", "directory"]),
    ("tiles buffer nan", ["tiles", "{in}/degenerate.gpkg", "--buffer-m", "nan"], ["--buffer-m", "nan"]),
    ("tiles buffer -5", ["tiles", "{in}/degenerate.gpkg", "--buffer-m", "-5"], ["--buffer-m"]),
    ("tiles buffer inf", ["tiles", "{in}/degenerate.gpkg", "--buffer-m", "inf"], ["--buffer-m", "inf"]),
    ("tiles out missing dir", ["tiles", "{in}/bowtie.gpkg", "--out", "{out}/missing/plan.csv"],
     ["--out", "does not exist"]),
    ("tiles out onto dir", ["tiles", "{in}/bowtie.gpkg", "--out", "{out}"], ["--out", "directory"]),
    ("tiles out under file", ["tiles", "{in}/bowtie.gpkg", "--out", "{in}/file.txt/plan.csv"], ["--out", "file.txt"]),
    ("generate years 1800", [*GEN, "--years", "1800"], ["--years", "1800"]),
    ("generate years 2035", [*GEN, "--years", "2035"], ["--years", "2035", "future"]),
    ("generate years -5", [*GEN, "--years=-5"], ["--years", "-5"]),
    ("generate size inf", [*GEN, "--size-km", "inf"], ["--size-km", "inf"]),
    ("generate size nan", [*GEN, "--size-km", "nan"], ["--size-km", "nan"]),
    ("generate size 100000", [*GEN, "--size-km", "100000"], ["--size-km", "100000"]),
    ("generate size 0", [*GEN, "--size-km", "0"], ["--size-km"]),
    ("generate seed -1", [*GEN, "--seed", "-1"], ["--seed"]),
    ("generate difficulty", [*GEN, "--difficulty", "extreme"], ["extreme"]),
    ("generate out is file", ["synthetic", "generate", "--out", "{in}/file.txt"], ["--out", "file.txt"]),
    ("generate out under file", ["synthetic", "generate", "--out", "{in}/file.txt/w"], ["--out", "file.txt"]),
    ("generate out unwritable", ["synthetic", "generate", "--out", "/proc/glacier-stac/w"], ["--out", "/proc"]),
    ("render years 1800", [*RENDER, "--years", "1800"], ["--years", "1800"]),
    ("render missing dem", [*RENDER[:2], "--dem", "{in}/nope.tif", *RENDER[4:]], ["nope.tif"]),
    ("render antimeridian", [*RENDER[:4], "--outlines", "{in}/antimeridian.gpkg", *RENDER[6:]], ["RGI-AM"]),
    ("render no-area outline", [*RENDER[:4], "--outlines", "{in}/glacier_flat.gpkg", *RENDER[6:]],
     ["G-FLAT", "invalid"]),
    ("render out is file", [*RENDER[:6], "--out", "{in}/file.txt"], ["--out", "file.txt"]),
    ("render seed -1", [*RENDER, "--seed", "-1"], ["--seed"]),
    ("quicklook missing", ["synthetic", "quicklook", "{in}/noworld"], ["noworld"]),
    ("serve file", ["catalog", "serve", "{in}/file.txt"], ["file.txt", "is a file"]),
    ("serve port", ["catalog", "serve", "{in}/adir", "--port", "70000"], ["--port"]),
    ("train out under file", ["train", "--out", "{in}/file.txt/m.pt"], ["--out", "file.txt"]),
    ("train out onto dir", ["train", "--out", "{out}"], ["--out", "directory"]),
    ("train out unwritable", ["train", "--out", "/proc/glacier-stac/m.pt"], ["--out", "/proc"]),
    ("train model unetx", [*TRAIN, "--model", "unetx"], ["--model", "unetx"]),
    ("train epochs 0", [*TRAIN, "--epochs", "0"], ["--epochs"]),
    ("train lr nan", [*TRAIN, "--lr", "nan"], ["--lr", "nan"]),
    ("train size inf", [*TRAIN, "--size-km", "inf"], ["--size-km"]),
    ("train years 1800", [*TRAIN, "--years", "1800"], ["--years", "1800"]),
    ("train seeds -1", [*TRAIN, "--seeds", "-1,2"], ["--seeds"]),
    ("train patch", [*TRAIN, "--patch", "100"], ["--patch", "100"]),
    ("train device", [*TRAIN, "--device", "warp-drive"], ["--device", "warp-drive"]),
    ("train world", [*TRAIN, "--world", "{in}/adir"], ["--world", "adir"]),
    ("demo years 1800", [*DEMO, "--years", "1800"], ["--years", "1800"]),
    ("demo size inf", [*DEMO, "--size-km", "inf"], ["--size-km"]),
    ("demo workers 0", [*DEMO, "--workers", "0"], ["--workers"]),
    ("demo checkpoint", [*DEMO, "--checkpoint", "{in}/nope.pt"], ["--checkpoint", "nope.pt"]),
    ("demo out is file", ["demo", "--out", "{in}/file.txt"], ["--out", "file.txt"]),
    ("demo results under file", [*DEMO, "--results", "{in}/file.txt/r"], ["--results", "file.txt"]),
    ("run missing config", ["run", "{in}/nope.toml"], ["nope.toml", "does not exist"]),
    ("run config dir", ["run", "{in}/adir"], ["adir", "not a file"]),
    ("run config not toml", ["run", "{in}/notoml.toml"], ["notoml.toml", "not valid TOML"]),
    ("run unknown key", ["run", "{in}/key.toml"], ["run.yeras"]),
    ("run future year", ["run", "{in}/years.toml"], ["run.years", "2035"]),
    ("run tiles_in_flight 0", ["run", "{in}/flight.toml"], ["run.tiles_in_flight", "got 0"]),
    ("run max_cloud 150", ["run", "{in}/secretcat.toml"], ["catalog.max_cloud", "150"]),
    ("run inventory on s3", ["run", "{in}/s3inv.toml"], ["inventory.url", "s3://b/inv"]),
    ("update year 1800", ["update", "{in}/noinv.toml", "--year", "1800"], ["1800"]),
    ("update no inventory", ["update", "{in}/noinv.toml", "--year", "2021"], ["noinv.toml", "[inventory]", "2021"]),
    ("update bad config", ["update", "{in}/key.toml", "--year", "2021"], ["run.yeras"]),
    ("inventory summary missing", ["inventory", "summary", "{in}/nope.parquet"], ["nope.parquet"]),
    ("inventory summary corrupt", ["inventory", "summary", "{in}/file.txt"], ["file.txt"]),
    ("inventory plot missing", ["inventory", "plot", "{in}/nope.parquet"], ["nope.parquet"]),
    ("inventory plot out under file", ["inventory", "plot", "{in}/nope.parquet", "--out", "{in}/file.txt/x"],
     ["nope.parquet"]),
]


def _tree(*roots: Path) -> set[str]:
    return {str(p) for r in roots for p in r.rglob("*")}


@pytest.mark.parametrize("case, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_named_no_traceback_no_secret_nothing_left(case, argv, words, inputs, refusing, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    worlds = tmp_path / "worlds"  # where train/generate would cache worlds: must stay absent
    monkeypatch.setattr(cli, "DEFAULT_WORLD_DIR", worlds)
    userinfo = refusing.replace("http://", f"http://user:{SECRET}@")
    args = [a.replace("{in}", str(inputs)).replace("{out}", str(out)).replace("{srv_userinfo}", userinfo)
            .replace("{srv}", refusing) for a in argv]
    before = _tree(inputs, tmp_path)
    result = CliRunner().invoke(cli.app, args)
    text = result.output
    assert result.exit_code == 2, (args, text, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in text, text
    flat = re.sub(r"[\s│╭╮╰╯─]+", " ", text)  # rich wraps errors in a box: read it as one line
    for w in words:
        assert w.replace("{in}", str(inputs)) in flat, (w, text)
    assert SECRET not in text
    assert _tree(inputs, tmp_path) == before, "left behind: " + str(_tree(inputs, tmp_path) - before)
    assert not worlds.exists()


def test_every_command_is_in_the_table():
    """A new command must bring its bad inputs to the table."""
    import typer.main

    names = set()
    for name, command in typer.main.get_command(cli.app).commands.items():
        names |= {f"{name} {sub}" for sub in command.commands} if hasattr(command, "commands") else {name}
    groups = ("catalog", "synthetic", "inventory")
    tried = {" ".join(argv[:2]) if argv[0] in groups else argv[0] for _, argv, _ in CASES}
    assert names <= tried, names - tried


# --------------------------------------------------------------------------- the README, as written


def readme_command(word: str) -> list[str]:
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines()
                if ln.startswith("glacier-stac ") and f" {word} " in ln)
    return shlex.split(line.split("#")[0])[1:]


def test_readme_search_command_works_as_written(rustac_url):
    """The README's bbox is west of Greenwich (starts with '-'): it must be read as the AOI, not an option."""
    argv = readme_command("search")
    assert argv[2].startswith("-"), argv  # still the case this test is about
    p = subprocess.run([sys.executable, "-m", "glacier_stac.cli", *argv, "--url", rustac_url],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert p.returncode == 0, p.stderr
    assert "sentinel-2" in p.stdout and "2021" in p.stdout, p.stdout
    assert "No such option" not in p.stderr


def test_redaction_rule():
    cases = {
        "https://a.blob.core.windows.net/c/B03.tif?st=1&se=2&sp=rl&sig=abc%3D": "https://a.blob.core.windows.net/c/B03.tif",
        "GET /stac?subscription-key=abc HTTP/1.1": "GET /stac?subscription-key=REDACTED HTTP/1.1",
        "/vsicurl/http://h/x.tif?X-Amz-Signature=abc": "/vsicurl/http://h/x.tif",
        "/x.tif?X-Amz-Credential=AKIA&X-Amz-Signature=abc": "/x.tif?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED",
        "https://user:pw@h/x": "https://REDACTED@h/x",
        "curl(http://h/x.tif?sig=1): 503": "curl(http://h/x.tif): 503",
        "first=1 use=2": "first=1 use=2",
    }
    for text, want in cases.items():
        assert redact(text) == want

