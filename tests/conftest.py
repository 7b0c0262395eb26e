"""Shared test fixtures: a small world on disk and real STAC APIs serving it on 127.0.0.1.

`world_dir` is the one place that decides which world the tests see (see `_make_world`): a tiny
generated world once `glacier_stac.synthetic.writer.generate` exists, else a hand-made world of real
Planetary Computer item JSON from tests/fixtures (metadata only, no pixels). Set
GLACIER_TEST_WORLD=fixture or =generated to force one. `fixture_world_dir` is always the latter.

The STAC servers are session-scoped and shared: `rustac_url` (rustac serve, memory backend) and
`pgstac_url` (PostgreSQL + PostGIS + pgstac + stac-fastapi-pgstac) over `world_dir`, and
`fixture_rustac_url` / `fixture_pgstac_url` over `fixture_world_dir`; `postgres` is the one cluster.
Without PostgreSQL the pgstac tests skip on a developer machine but FAIL in CI (CI=1/true), so CI
cannot go green without them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from glacier_stac.stac_server import PG

FIXTURES = Path(__file__).parent / "fixtures" / "planetary-computer"

# Tiny generated world for tests: 4 km, two years (see _make_world).
GENERATED_WORLD = {"seed": 3, "size_km": 4, "years": (2021, 2022)}

# Lines printed at the end of the run (server start times, latencies, conformance): see
# pytest_terminal_summary. Fixtures and tests append to it.
SERVER_REPORT: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------- worlds


def build_fixture_world(out: Path) -> Path:
    """A world directory in the generator's layout from real PC items (S2 in Alaska, Landsat in Australia).

    Asset hrefs are rewritten to absolute file:// URLs under out/cogs (no pixels exist there: the world is
    for catalog and server tests only). world.json is written last, as the generator does.
    """
    s2 = json.loads((FIXTURES / "sentinel-2-l2a.item.S2B_T06VVN_20190629.json").read_text())
    landsat = json.loads((FIXTURES / "landsat-c2-l2.items.json").read_text())
    s2_collection = json.loads((FIXTURES / "sentinel-2-l2a.collection.json").read_text())
    landsat_collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "landsat-c2-l2",
        "description": "Landsat Collection 2 Level-2 (test world built from real Planetary Computer items)",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["1982-08-22T00:00:00Z", None]]},
        },
        "links": [],
    }
    worlds = {"sentinel-2-l2a": (s2_collection, [s2]), "landsat-c2-l2": (landsat_collection, landsat)}
    out.mkdir(parents=True, exist_ok=True)
    for cid, (collection, items) in worlds.items():
        cdir = out / "stac" / cid
        cdir.mkdir(parents=True, exist_ok=True)
        collection = {**collection, "links": []}
        (cdir / "collection.json").write_text(json.dumps(collection, indent=1))
        features = []
        for item in items:
            item = copy.deepcopy(item)
            item["collection"] = cid
            item["links"] = []
            for key, asset in item["assets"].items():
                asset["href"] = (out / "cogs" / cid / item["id"] / f"{key}.tif").resolve().as_uri()
            features.append(item)
        (cdir / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    summary = {"source": "tests/fixtures/planetary-computer", "items": {k: len(v[1]) for k, v in worlds.items()}}
    (out / "world.json").write_text(json.dumps({"config": None, "summary": summary}, indent=1))
    return out


def _make_world(out: Path) -> Path:
    """The single switch between the generated world and the fixture world.

    `auto` generates when the writer module exists (a broken writer then fails loudly, it does not
    fall back silently) and uses the fixture world otherwise.
    """
    choice = os.environ.get("GLACIER_TEST_WORLD", "auto")
    if choice not in ("auto", "generated", "fixture"):
        raise ValueError(f"GLACIER_TEST_WORLD={choice!r}: choose auto, generated or fixture")
    has_writer = importlib.util.find_spec("glacier_stac.synthetic.writer") is not None
    if choice == "generated" or (choice == "auto" and has_writer):
        from glacier_stac.synthetic.world import WorldConfig
        from glacier_stac.synthetic.writer import generate

        return Path(generate(WorldConfig(**GENERATED_WORLD), out) or out)
    return build_fixture_world(out)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete world directory (world.json present), shared by the whole session."""
    t0 = time.perf_counter()
    out = _make_world(tmp_path_factory.mktemp("world") / "world")
    SERVER_REPORT.append(f"world {out.name}: built in {time.perf_counter() - t0:.2f} s")
    return out


@pytest.fixture(scope="session")
def fixture_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Always the world of real PC item JSON (geographically spread: good for bbox/intersects tests)."""
    return build_fixture_world(tmp_path_factory.mktemp("fixture-world") / "world")


def read_items(world: Path) -> dict[str, dict]:
    """Every item of a world by id, read straight from its items.json files (the expected answers)."""
    items: dict[str, dict] = {}
    for path in sorted((world / "stac").glob("*/items.json")):
        for feature in json.loads(path.read_text())["features"]:
            items[feature["id"]] = feature
    return items


@pytest.fixture(scope="session")
def world_items(world_dir: Path) -> dict[str, dict]:
    return read_items(world_dir)


@pytest.fixture(scope="session")
def fixture_world_items(fixture_world_dir: Path) -> dict[str, dict]:
    return read_items(fixture_world_dir)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def _rustac(world: Path, label: str) -> Iterator[str]:
    from glacier_stac.stac_server import serve

    t0 = time.perf_counter()
    with serve(world) as url:
        SERVER_REPORT.append(f"rustac serve ({label}): ready in {time.perf_counter() - t0:.2f} s at {url}")
        yield url


@pytest.fixture(scope="session")
def rustac_url(world_dir: Path) -> Iterator[str]:
    """`rustac serve` (memory backend) over `world_dir` on 127.0.0.1, stopped at session end."""
    with _rustac(world_dir, "world") as url:
        yield url


@pytest.fixture(scope="session")
def fixture_rustac_url(fixture_world_dir: Path) -> Iterator[str]:
    with _rustac(fixture_world_dir, "fixture world") as url:
        yield url


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PG]:
    """One throwaway PostgreSQL + PostGIS cluster for the session (each world gets its own database)."""
    from glacier_stac import stac_server as ss

    t0 = time.perf_counter()
    try:
        pg = ss.start_postgres(tmp_path_factory.mktemp("pg"))
    except (FileNotFoundError, RuntimeError) as e:
        if in_ci():
            pytest.fail(f"PostgreSQL/PostGIS is required in CI but could not start: {e}", pytrace=False)
        pytest.skip(f"PostgreSQL/PostGIS unavailable: {e}")
    SERVER_REPORT.append(f"postgres: initdb + start + PostGIS in {time.perf_counter() - t0:.2f} s")
    with pg:
        yield pg


@contextlib.contextmanager
def _pgstac(pg: PG, dbname: str, world: Path, label: str) -> Iterator[str]:
    from glacier_stac import stac_server as ss

    t0 = time.perf_counter()
    dsn = pg.dsn if dbname == pg.dbname else pg.create_database(dbname)
    version = ss.migrate_pgstac(dsn)
    t_mig = time.perf_counter()
    counts = ss.load_pgstac(dsn, world)
    t_load = time.perf_counter()
    with ss.serve_pgstac(dsn) as url:
        SERVER_REPORT.append(
            f"pgstac {version} ({label}): migrate {t_mig - t0:.2f} s, load {sum(counts.values())} items "
            f"{t_load - t_mig:.2f} s, stac-fastapi-pgstac ready {time.perf_counter() - t_load:.2f} s at {url}"
        )
        yield url


@pytest.fixture(scope="session")
def pgstac_url(postgres: PG, world_dir: Path) -> Iterator[str]:
    """stac-fastapi-pgstac over `world_dir` (pgstac in the session's PostgreSQL), stopped at session end."""
    with _pgstac(postgres, postgres.dbname, world_dir, "world") as url:
        yield url


@pytest.fixture(scope="session")
def fixture_pgstac_url(postgres: PG, fixture_world_dir: Path) -> Iterator[str]:
    with _pgstac(postgres, "fixture_world", fixture_world_dir, "fixture world") as url:
        yield url


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if SERVER_REPORT:
        terminalreporter.section("glacier_stac STAC servers")
        for line in SERVER_REPORT:
            terminalreporter.write_line(line)
