"""Real STAC APIs on 127.0.0.1 over the test world: rustac serve and stac-fastapi-pgstac.

The same pystac-client searches must give the same item ids on both servers, and the ids an
independent brute-force filter over the world's items.json computes (so both servers could be wrong
in the same way and still fail). Search parameters are derived from the world's own items, so the
tests hold for the fixture world and for a generated one.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import shapely.geometry
from conftest import SERVER_REPORT
from pystac_client import Client
from shapely.geometry import box, shape

from glacier_stac import stac_server

LATENCY: dict[str, list[float]] = defaultdict(list)


@pytest.fixture(scope="module", autouse=True)
def _report_latency() -> Iterator[None]:
    yield
    for server, secs in LATENCY.items():
        ms = sorted(s * 1000 for s in secs)
        SERVER_REPORT.append(
            f"{server} search latency over {len(ms)} searches: median {statistics.median(ms):.1f} ms, "
            f"max {ms[-1]:.1f} ms"
        )


# --------------------------------------------------------------------------- expected answers


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _item_interval(item: dict) -> tuple[datetime, datetime]:
    p = item["properties"]
    if p.get("datetime"):
        t = _dt(p["datetime"])
        return t, t
    return _dt(p["start_datetime"]), _dt(p["end_datetime"])


def expected_ids(
    items: dict[str, dict],
    bbox: list[float] | None = None,
    datetime_range: str | None = None,
    collections: list[str] | None = None,
    intersects: dict | None = None,
    max_cloud: float | None = None,
) -> set[str]:
    """What a correct STAC API returns, computed by brute force from the items themselves."""
    out = set()
    for iid, item in items.items():
        geom = shape(item["geometry"])
        if collections is not None and item["collection"] not in collections:
            continue
        if bbox is not None and not geom.intersects(box(*bbox)):
            continue
        if intersects is not None and not geom.intersects(shape(intersects)):
            continue
        if datetime_range is not None:
            lo, hi = (_dt(s) for s in datetime_range.split("/"))
            start, end = _item_interval(item)
            if end < lo or start > hi:
                continue
        if max_cloud is not None and not item["properties"].get("eo:cloud_cover", 101) < max_cloud:
            continue
        out.add(iid)
    return out


def search_ids(url: str, server: str, **kw) -> set[str]:
    client = Client.open(url)
    t0 = time.perf_counter()  # the search and its pages, not the landing page fetched by open()
    ids = {item.id for item in client.search(limit=200, **kw).items()}
    LATENCY[server].append(time.perf_counter() - t0)
    return ids


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cases(items: dict[str, dict]) -> dict[str, dict]:
    """Searches derived from the world: each is built to hit a non-empty subset."""
    ordered = sorted(items.values(), key=lambda i: (_item_interval(i)[0], i["id"]))
    anchor = ordered[len(ordered) // 2]  # an item in the middle of the time series
    # A bbox a bit inside the anchor's footprint catches overlapping neighbours; the triangle's corners
    # stick out of the footprint, so geometry (not bbox) semantics decide what it hits.
    x0, y0, x1, y1 = shape(anchor["geometry"]).bounds
    dx, dy = (x1 - x0) / 10, (y1 - y0) / 10
    inner_bbox = [x0 + dx, y0 + dy, x1 - dx, y1 - dy]
    triangle = shapely.geometry.mapping(shapely.geometry.Polygon([(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)]))
    times = [_item_interval(i)[0] for i in ordered]
    lo, hi = times[len(times) // 4], times[(3 * len(times)) // 4]
    drange = f"{_iso(lo)}/{_iso(hi)}"
    coll = anchor["collection"]
    return {
        "bbox": {"bbox": inner_bbox},
        "datetime": {"datetime": drange},
        "collections": {"collections": [coll]},
        "intersects": {"intersects": triangle},
        "combined": {"bbox": inner_bbox, "datetime": drange, "collections": [coll]},
        "combined-intersects": {"intersects": triangle, "datetime": drange, "collections": [coll]},
    }


CASES = ["bbox", "datetime", "collections", "intersects", "combined", "combined-intersects"]


# --------------------------------------------------------------------------- parity


# Each world: (its items, its rustac URL, its pgstac URL) as fixture names. The generated world covers one
# small AOI (every bbox hits every item); the fixture world spreads over Alaska and Australia, so there
# the spatial searches must also exclude items.
WORLDS = {
    "world": ("world_items", "rustac_url", "pgstac_url"),
    "fixture-world": ("fixture_world_items", "fixture_rustac_url", "fixture_pgstac_url"),
}


def _servers(request: pytest.FixtureRequest, world: str) -> tuple[dict[str, dict], str, str]:
    items, rustac, pgstac = (request.getfixturevalue(name) for name in WORLDS[world])
    return items, rustac, pgstac


@pytest.mark.pgstac
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("world", list(WORLDS))
def test_same_ids_on_rustac_and_pgstac(world: str, case: str, request: pytest.FixtureRequest) -> None:
    items, rustac_url, pgstac_url = _servers(request, world)
    kw = _cases(items)[case]
    expected = expected_ids(
        items, bbox=kw.get("bbox"), datetime_range=kw.get("datetime"),
        collections=kw.get("collections"), intersects=kw.get("intersects"),
    )  # fmt: skip
    assert expected, f"{world} gives an empty answer for {case}: {kw}"
    if world == "fixture-world":
        assert len(expected) < len(items), f"{case} on the fixture world selects everything: {kw}"
    got_rustac = search_ids(rustac_url, "rustac", **kw)
    got_pgstac = search_ids(pgstac_url, "pgstac", **kw)
    assert got_rustac == expected, f"rustac {case}: missing {expected - got_rustac}, extra {got_rustac - expected}"
    assert got_pgstac == expected, f"pgstac {case}: missing {expected - got_pgstac}, extra {got_pgstac - expected}"


@pytest.mark.pgstac
@pytest.mark.parametrize("world", list(WORLDS))
def test_every_collection_and_far_bbox(world: str, request: pytest.FixtureRequest) -> None:
    items, rustac_url, pgstac_url = _servers(request, world)
    for coll in sorted({i["collection"] for i in items.values()}):
        expected = expected_ids(items, collections=[coll])
        assert search_ids(rustac_url, "rustac", collections=[coll]) == expected
        assert search_ids(pgstac_url, "pgstac", collections=[coll]) == expected
    assert search_ids(rustac_url, "rustac") == set(items)
    assert search_ids(pgstac_url, "pgstac") == set(items)
    far = [-10.0, -60.0, -9.0, -59.0]  # South Atlantic: nothing there in any test world
    assert expected_ids(items, bbox=far) == set()
    assert search_ids(rustac_url, "rustac", bbox=far) == set()
    assert search_ids(pgstac_url, "pgstac", bbox=far) == set()


# --------------------------------------------------------------------------- conformance, query/filter


def test_rustac_conformance_and_query_filter_behaviour(world_items, rustac_url: str) -> None:
    """rustac's memory backend advertises no query/filter and returns NO items when they are sent.

    It does not ignore them: any `query` or `filter` (even one every item passes) yields an empty
    page with HTTP 200. Callers must read /conformance and filter client-side.
    """
    conf = stac_server.conformance(rustac_url)
    SERVER_REPORT.append(f"rustac conformance: {conf.summary()}")
    assert conf.item_search
    assert not conf.query and not conf.filter and not conf.sort
    assert search_ids(rustac_url, "rustac") == set(world_items)
    with pytest.warns(UserWarning, match="QUERY"):  # pystac-client knows the server does not conform
        got = search_ids(rustac_url, "rustac", query={"eo:cloud_cover": {"lte": 100}})
    assert got == set()
    with pytest.warns(UserWarning, match="FILTER"):
        got = search_ids(rustac_url, "rustac", filter={"op": "<=", "args": [{"property": "eo:cloud_cover"}, 100]},
                         filter_lang="cql2-json")  # fmt: skip
    assert got == set()


@pytest.mark.pgstac
def test_pgstac_conformance_query_and_filter(world_items, pgstac_url: str) -> None:
    conf = stac_server.conformance(pgstac_url)
    SERVER_REPORT.append(f"pgstac conformance: {conf.summary()}")
    assert conf.item_search and conf.query and conf.filter and conf.sort
    clouds = sorted(i["properties"]["eo:cloud_cover"] for i in world_items.values()
                    if "eo:cloud_cover" in i["properties"])  # fmt: skip
    assert len(set(clouds)) >= 2, "test world needs at least two cloud-cover values"
    threshold = statistics.median_high(sorted(set(clouds)))
    expected = expected_ids(world_items, max_cloud=threshold)
    assert expected and expected != set(world_items)
    got_query = search_ids(pgstac_url, "pgstac", query={"eo:cloud_cover": {"lt": threshold}})
    assert got_query == expected
    got_filter = search_ids(pgstac_url, "pgstac", filter={"op": "<", "args": [{"property": "eo:cloud_cover"},
                            threshold]}, filter_lang="cql2-json")  # fmt: skip
    assert got_filter == expected


# --------------------------------------------------------------------------- lifecycle and errors


def test_serve_refuses_incomplete_world(tmp_path: Path, world_dir: Path) -> None:
    (tmp_path / "stac" / "sentinel-2-l2a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="incomplete.*world.json"), stac_server.serve(tmp_path):
        pass
    with pytest.raises(FileNotFoundError, match="does not exist"), stac_server.serve(tmp_path / "nope"):
        pass
    bad = tmp_path / "bad"
    (bad / "stac" / "landsat-c2-l2").mkdir(parents=True)
    (bad / "stac" / "landsat-c2-l2" / "collection.json").write_text('{"id": "sentinel-2-l2a"}')
    (bad / "world.json").write_text("{}")
    with pytest.raises(ValueError, match="expected 'landsat-c2-l2'"), stac_server.serve(bad):
        pass


def _listening(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=2).close()
        return True
    except (urllib.error.URLError, ConnectionError):
        return False


def _pids_with(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and int(d.name) != os.getpid():
                pids.append(int(d.name))
    return pids


def test_server_process_gone_after_exit_and_on_error(world_dir: Path) -> None:
    t0 = time.perf_counter()
    with stac_server.serve(world_dir) as url:
        SERVER_REPORT.append(f"rustac serve (fresh): ready in {time.perf_counter() - t0:.2f} s")
        port = url.rsplit(":", 1)[1]
        assert _listening(url)
        assert _pids_with(f"127.0.0.1:{port}"), "no rustac process found while serving"
    assert not _listening(url)
    assert _pids_with(f"127.0.0.1:{port}") == []

    with pytest.raises(ZeroDivisionError), stac_server.serve(world_dir) as url2:
        1 / 0  # noqa: B018
    assert not _listening(url2)
    assert _pids_with(f"127.0.0.1:{url2.rsplit(':', 1)[1]}") == []


def test_rustac_dies_with_a_killed_parent(world_dir: Path) -> None:
    """Even a SIGKILLed parent (no cleanup code runs) leaves no rustac behind (Linux PDEATHSIG)."""
    code = ("import sys, time; from glacier_stac.stac_server import serve\n"
            "with serve(sys.argv[1]) as url:\n    print(url, flush=True); time.sleep(120)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(world_dir)], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:") and _listening(url)
    finally:
        proc.kill()
        proc.wait()
    port = url.rsplit(":", 1)[1]
    deadline = time.monotonic() + 10
    while _pids_with(f"127.0.0.1:{port}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_with(f"127.0.0.1:{port}") == []
    assert not _listening(url)


def test_cli_catalog_serve_stops_on_sigint(world_dir: Path) -> None:
    port = stac_server.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "glacier_stac.cli", "catalog", "serve", str(world_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line == f"http://127.0.0.1:{port}", (line, proc.stderr.read() if proc.poll() is not None else "")
        assert _listening(line)
        proc.send_signal(signal.SIGINT)
        # the server gets SIGTERM, then SIGKILL after 10 s (stac_server._stop_group): 20 s, plus a loaded machine
        assert proc.wait(timeout=45) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not _listening(line)
    assert _pids_with(f"127.0.0.1:{port}") == []


def test_cli_catalog_serve_incomplete_world(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "glacier_stac.cli", "catalog", "serve", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "incomplete" in r.stderr and "world.json" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.pgstac
def test_postgres_and_pgstac_api_stop_cleanly(world_dir: Path, world_items, tmp_path: Path) -> None:
    postgres_before = set(_pids_with("glacier-pg-"))  # e.g. the session's shared cluster
    t0 = time.perf_counter()
    with stac_server.serve_pgstac_world(world_dir, tmp_path) as url:
        SERVER_REPORT.append(f"pgstac stack (fresh, world loaded): ready in {time.perf_counter() - t0:.2f} s")
        assert search_ids(url, "pgstac") == set(world_items)
        assert set(_pids_with("glacier-pg-")) - postgres_before, "no postgres process found while serving"
        port = url.rsplit(":", 1)[1]
    assert not _listening(url)
    assert _pids_with(f"--port {port}") == []
    assert set(_pids_with("glacier-pg-")) - postgres_before == set()
