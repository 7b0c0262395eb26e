"""Fault tolerance of `pipeline.run_on` with real `dask scheduler` and `dask worker` processes on 127.0.0.1.

- The scheduler SIGKILLed mid-run and started again (the workers die with it and are started again): a
  rerun on a new client finishes with the store byte-identical to a clean run, and recomputes only the
  tiles that were not recorded done before the kill.
- A tile whose assets fail (served by a local HTTP server over the world's COGs that resets the connection,
  answers 404/403/503 or serves a corrupt or truncated COG for the assets of ONE tile's scene): the tile is
  retried (Dask attempts counted from the scheduler's transition log), then recorded failed with its reason;
  the other tile completes; a rerun retries only the failed tile; a 503 that heals gives a done tile.

The session world (tests/conftest.py) has two tiles of the global grid; one year keeps it quick, with the
shipped cnn5 checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from glacier_stac import pipeline, store
from glacier_stac.cluster import ClusterSpec, connect
from glacier_stac.testing import stac_server
from glacier_stac.testing.stac_server import free_port, serve
from glacier_stac.testing.worlds import WorldDir

CNN5 = str(Path(pipeline.__file__).parent / "checkpoints" / "cnn5.pt")
YEAR = 2022


def _arrays(path: Path) -> dict[str, str]:
    """Digest of every array file of a store (the run records under `_glacier_stac/` differ by design)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and "_glacier_stac" not in p.parts}


def _done(path: Path) -> list[Path]:
    return sorted((path / "_glacier_stac" / "done").rglob("*.json"))


def _raw(url: str, out: Path, bbox: list[float], **run) -> dict:
    return {"run": {"years": [YEAR], "checkpoint": CNN5, "tiles_in_flight": 1, "retries": 1,
                    "report": str(out / "report.json"), **run},
            "aoi": {"bbox": bbox}, "catalog": {"url": url}, "store": {"url": str(out / "preds.zarr")}}


def _bbox(world_dir: Path) -> list[float]:
    b = WorldDir(world_dir).aoi().geometry.boundingbox
    return [b.left, b.bottom, b.right, b.top]


# --------------------------------------------------------------------------- real scheduler and workers


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started here and its process group (a worker's nanny and its worker)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@dataclass
class DaskProcesses:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1, each in its own process group."""

    port: int
    log_dir: Path
    n_workers: int = 2
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _popen(self, name: str, args: list[str]) -> subprocess.Popen:
        logf = (self.log_dir / f"{name}-{time.monotonic_ns()}.log").open("w")
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        return subprocess.Popen([sys.executable, "-m", *args], stdout=logf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def start(self) -> None:
        self.scheduler = self._popen("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                                   "--port", str(self.port), "--dashboard-address", ":0"])
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start on port {self.port} (see {self.log_dir})")
            time.sleep(0.2)
        self.workers = [self._popen(f"worker{i}", ["distributed.cli.dask_worker", self.address, "--nthreads", "1",
                                                   "--no-dashboard", "--host", "127.0.0.1"])
                        for i in range(self.n_workers)]
        from distributed import Client

        with Client(self.address, timeout="60s") as c:
            c.wait_for_workers(self.n_workers, timeout=120)

    def kill_scheduler(self) -> None:
        if self.scheduler is not None:
            _kill_group(self.scheduler)

    def kill_all(self) -> None:
        self.kill_scheduler()
        for w in self.workers:
            _kill_group(w)
        self.workers = []


@pytest.fixture(scope="module")
def dask_procs(tmp_path_factory) -> Iterator[DaskProcesses]:
    procs = DaskProcesses(free_port(), tmp_path_factory.mktemp("dask-logs"))
    procs.start()
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture(scope="module")
def clean_run(world_dir, rustac_url, dask_procs, tmp_path_factory):
    """One clean run of the session world's year on the real scheduler: the reference bytes."""
    out = tmp_path_factory.mktemp("clean")
    cfg = pipeline.parse_config(_raw(rustac_url, out, _bbox(world_dir)))
    with connect(ClusterSpec(kind="scheduler", scheduler=dask_procs.address)) as client:
        rep = pipeline.run_on(client, cfg)
    assert rep.counts() == {"done": 2, "skipped": 0, "failed": 0, "empty": 0}, rep.to_dict()["failures"]
    return cfg, out / "preds.zarr"


# --------------------------------------------------------------------------- the scheduler killed


def test_scheduler_killed_mid_run_rerun_finishes_identical_recomputing_only_unfinished(
        world_dir, rustac_url, dask_procs, clean_run, tmp_path):
    _, ref = clean_run
    raw = _raw(rustac_url, tmp_path, _bbox(world_dir))
    lines = [f"[{sec}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items()) for sec, vals in raw.items()]
    (tmp_path / "run.toml").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "glacier_stac.cli", "run", str(tmp_path / "run.toml"), "--scheduler",
           dask_procs.address]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    preds = tmp_path / "preds.zarr"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not _done(preds) and first.poll() is None:
        time.sleep(0.1)
    assert _done(preds), f"the first run recorded nothing: {first.communicate(timeout=60)[0][-2000:]!r}"
    # mid-run: one tile recorded, the other in flight. The workers go down with the scheduler: on a
    # CPU-only cluster a tile is one task, which a live worker would finish and record on its own
    dask_procs.kill_all()
    # the client loses its scheduler (what it does then is printed: it may fail or wait to reconnect)
    t_kill = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        first.wait(timeout=90)
    print(f"first client after the scheduler's kill: rc={first.poll()} after {time.monotonic() - t_kill:.0f} s")
    _kill_group(first)
    dask_procs.kill_all()
    n_done = len(_done(preds))
    assert n_done == 1, f"{n_done} tiles recorded done before the kill; the test needs the kill between the two"
    dask_procs.start()  # the same address, a fresh scheduler without memory of the run
    cfg = pipeline.load_config(tmp_path / "run.toml")
    with connect(ClusterSpec(kind="scheduler", scheduler=dask_procs.address)) as client:
        rep = pipeline.run_on(client, cfg)
    assert rep.counts() == {"done": 1, "skipped": n_done, "failed": 0, "empty": 0}, rep.to_dict()["failures"]
    assert _arrays(preds) == _arrays(ref)


# --------------------------------------------------------------------------- assets that fail


class FaultyFiles(http.server.ThreadingHTTPServer):
    """Serves `root` with Range support (what GDAL's /vsicurl/ needs); paths under a prefix in `faults`
    fail the given way. `hits` counts the requests to each failing path."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        # path prefix -> "403" | "404" | "503" | "reset" | "corrupt" | "truncated" | "503-twice" (then served)
        self.faults: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FaultyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultyFiles

    def log_message(self, *args) -> None:  # quiet
        pass

    def _fault(self) -> str | None:
        for prefix, mode in self.server.faults.items():
            if self.path.startswith(prefix):
                with self.server.lock:
                    n = self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
                if mode == "503-twice":
                    return "503" if n <= 2 else None
                return mode
        return None

    def _serve(self, body: bool) -> None:
        mode = self._fault()
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if mode in ("403", "404", "503"):
            self.send_error(int(mode))
            return
        path = self.server.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if mode == "corrupt":  # garbage bytes: not a TIFF at all
            data = bytes(b ^ 0x5A for b in data)
        elif mode == "truncated":  # a transfer cut short: the header is there, most tiles are not
            data = data[: max(len(data) // 8, 1024)]
        stac_server.send_bytes(self, data, body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._serve(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(False)


@contextlib.contextmanager
def faulty_files(root: Path) -> Iterator[FaultyFiles]:
    srv = FaultyFiles(root)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("mode", ["403", "404", "503", "reset"])
def test_a_retry_in_the_same_process_reports_the_urls_first_reason(tmp_path, mode):
    """A read retried in the process where it failed (a Dask retry on the same worker; on GPU clusters a tile's
    read tasks are retried one by one) reports the server's answer, not GDAL's cached 'does not exist':
    after a connection reset GDAL's /vsicurl/ answers every later open of the URL so, without asking."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from stackstac.raster_spec import RasterSpec

    from glacier_stac import reader

    (tmp_path / "broken").mkdir()
    with rasterio.open(tmp_path / "broken" / "band.tif", "w", driver="GTiff", width=64, height=64, count=1,
                       dtype="uint16", crs="EPSG:32606", transform=from_origin(500000, 6800000, 10, 10), nodata=0,
                       tiled=True, blockxsize=32, blockysize=32) as dst:
        dst.write(np.arange(1, 64 * 64 + 1, dtype=np.uint16).reshape(64, 64), 1)
    spec = RasterSpec(epsg=32606, bounds=(500000, 6799360, 500640, 6800000), resolutions_xy=(10, 10))
    env = reader.capture_gdal_env().updated(always={"GDAL_HTTP_MAX_RETRY": "0"})  # no waits between HTTP retries

    def attempt(url: str, state: reader.ReaderState) -> str:
        r = reader.CogReader(url=url, spec=spec, resampling=Resampling.nearest, dtype=np.dtype("uint16"),
                             fill_value=0, gdal_env=env, record_errors=False, state=state)
        with pytest.raises(RuntimeError, match="failed") as err:
            r.read(Window(0, 0, 64, 64))
        r.close()
        return str(err.value)

    with faulty_files(tmp_path) as srv:
        srv.faults = {"/broken/": mode}
        url = f"{srv.url}/broken/band.tif"
        state = reader.ReaderState()  # one process's: the worker the task is retried on
        first, retry = attempt(url, state), attempt(url, state)
        for what, reason in (("first attempt", first), ("retry", retry)):
            assert any(w in reason for w in REASONS[mode]), f"{mode}, {what}: {reason}"
        if mode == "reset":  # what the retry would say without the first reason: GDAL's cache, not the server
            assert reader.GDAL_CACHED_MISSING in attempt(url, reader.ReaderState()), "GDAL no longer caches a reset"
            assert "first failure" in retry, retry


def _http_world(world_dir: Path, out: Path, base_url: str, east_tile) -> tuple[Path, str]:
    """A copy of the world's catalog with hrefs on `base_url`, plus one extra Sentinel-2 scene of YEAR whose
    footprint covers only the east tile (so only that tile reads it), its assets under /broken/.
    Returns the new world directory and the extra item's id."""
    shutil.copytree(world_dir / "stac", out / "stac")
    shutil.copy(world_dir / "world.json", out / "world.json")
    root = world_dir.resolve().as_uri()
    extra_id = ""
    for items_json in sorted((out / "stac").glob("*/items.json")):
        fc = json.loads(items_json.read_text())
        for item in fc["features"]:
            for asset in item["assets"].values():
                if asset["href"].startswith(root):
                    asset["href"] = base_url + asset["href"][len(root):]
        if items_json.parent.name == "sentinel-2-l2a":
            src = next(i for i in fc["features"] if i["properties"]["datetime"].startswith(str(YEAR)))
            extra = copy.deepcopy(src)
            extra["id"] = src["id"] + "-BROKEN"
            # one day later: its own acquisition; a footprint over the east tile only, clear of the west's margin
            extra["properties"]["datetime"] = src["properties"]["datetime"].replace(
                src["properties"]["datetime"][8:10], f"{int(src['properties']['datetime'][8:10]) + 1:02d}", 1)
            x0 = east_tile.geobox.extent.boundingbox.left + 200
            ext = east_tile.geobox.extent.boundingbox
            from odc.geo.geom import box

            g = box(x0, ext.bottom, ext.right, ext.top, east_tile.geobox.crs).to_crs("EPSG:4326")
            extra["geometry"] = g.json
            extra["bbox"] = list(g.boundingbox)
            for asset in extra["assets"].values():
                asset["href"] = asset["href"].replace(base_url + "/", base_url + "/broken/", 1)
            fc["features"].append(extra)
            extra_id = extra["id"]
        items_json.write_text(json.dumps(fc))
    return out, extra_id


def _serve_broken_from(world_dir: Path, srv_root: Path) -> None:
    """/broken/<path> serves the same files as /<path> when no fault is set (a link to the world's COGs)."""
    srv_root.mkdir(parents=True, exist_ok=True)
    (srv_root / "cogs").symlink_to((world_dir / "cogs").resolve())
    (srv_root / "broken").mkdir()
    (srv_root / "broken" / "cogs").symlink_to((world_dir / "cogs").resolve())


# how each fault reads in the recorded reason (in GDAL's words). A URL that failed to open is "does not exist"
# to every later open in that worker process (GDAL's /vsicurl/ cache); the reader reports a retry's failure with
# the first reason the URL failed for (reader.FirstFailures), so the server's answer is what is recorded
REASONS = {"reset": ("reset by peer",), "404": ("404",), "403": ("403",),
           "503": ("503",), "corrupt": ("not recognized",), "truncated": ("TIFFRead", "IReadBlock")}


def test_a_tile_whose_assets_fail_is_retried_then_failed_others_complete_rerun_retries_only_it(
        world_dir, dask_procs, clean_run, tmp_path):
    """One store, one cluster, every fault in turn for the assets of a scene that only the east tile reads:
    a connection reset (the first run: the west tile completes), then reruns under 404, 403, 503 (for good),
    a corrupt and a truncated COG, each on restarted workers (GDAL caches what a URL answered per process):
    each time the east tile alone is attempted, retried by Dask, then recorded failed with its reason.
    Then a 503 that heals after two answers: retried and done."""
    cfg_ref, ref = clean_run
    plan = pipeline.make_plan(cfg_ref)
    assert len(plan.tiles) == 2, "the session world should have two tiles"
    west, east = sorted(plan.tiles, key=lambda u: u.geobox.extent.boundingbox.left)
    _serve_broken_from(world_dir, tmp_path / "www")
    with faulty_files(tmp_path / "www") as srv:
        http_world, extra_id = _http_world(world_dir, tmp_path / "world", srv.url, east)
        with serve(http_world) as url, connect(ClusterSpec(kind="scheduler", scheduler=dask_procs.address)) as c:
            cfg = pipeline.parse_config(_raw(url, tmp_path, _bbox(world_dir)))
            for i, mode in enumerate(REASONS):
                if i:
                    c.restart()
                srv.faults = {"/broken/": mode}
                srv.hits.clear()
                rep = pipeline.run_on(c, cfg)
                by_tile = {o.tile: o for o in rep.tiles}
                if i == 0:  # the west tile completes, byte for byte the clean run's
                    assert by_tile[west.key.id].status == "done", rep.to_dict()
                    west_ref = store.open_predictions(cfg_ref.store, aoi=west.geobox.extent, years=[YEAR])
                    west_got = store.open_predictions(cfg.store, aoi=west.geobox.extent, years=[YEAR])
                    assert np.array_equal(west_ref["classes"].values, west_got["classes"].values)
                else:  # a rerun attempts only the failed tile
                    assert rep.counts() == {"done": 0, "skipped": 1, "failed": 1, "empty": 0}, (mode, rep.to_dict())
                    assert by_tile[west.key.id].status == "skipped"
                bad = by_tile[east.key.id]
                assert bad.status == "failed", f"{mode}: the tile whose assets fail was recorded {bad.status!r}: {bad}"
                # retried by Dask (GDAL's own HTTP retries do not count): the first attempt and `retries` more
                assert bad.attempts == cfg.retries + 1, f"{mode}: {bad.attempts} attempts, {cfg.retries} retries"
                assert srv.hits, f"{mode}: the failing assets were never requested"
                assert any(w in bad.reason for w in REASONS[mode]), f"{mode}: {bad.reason}"
                assert "/broken/" in bad.reason and ".tif" in bad.reason, f"{mode}: asset not named: {bad.reason}"
                failures = json.loads(Path(cfg.report).read_text())["failures"]
                assert [(f["tile"], f["attempts"]) for f in failures] == [(east.key.id, cfg.retries + 1)], failures
                # nothing recorded for the failed tile
                assert store.done_tiles(cfg.store, east.key.zone, YEAR) == {west.key.id}, mode
            # a 503 twice per asset, then the asset heals: the rerun does only that tile, and it is done
            c.restart()
            srv.faults = {"/broken/": "503-twice"}
            srv.hits.clear()
            rep = pipeline.run_on(c, cfg)
            assert rep.counts() == {"done": 1, "skipped": 1, "failed": 0, "empty": 0}, rep.to_dict()["failures"]
            assert [o.tile for o in rep.tiles if o.status == "done"] == [east.key.id]
            assert srv.hits and min(srv.hits.values()) >= 3, f"503 twice then served: retried {srv.hits}"
            assert store.done_tiles(cfg.store, east.key.zone, YEAR) == {west.key.id, east.key.id}
    assert extra_id and _arrays(tmp_path / "preds.zarr") != _arrays(ref)  # the east tile composites the extra scene

