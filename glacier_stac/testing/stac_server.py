"""Real STAC APIs on loopback over a generated world: `rustac serve` and stac-fastapi-pgstac.

Why two servers: the code that searches Planetary Computer must be tested against real STAC APIs,
not mocks. `rustac serve` (memory backend) is the pip-only server for the demo and the CLI;
stac-fastapi-pgstac on a throwaway PostgreSQL/PostGIS cluster is the same software stack as
Planetary Computer and the one that implements the `query` and `filter` extensions.

Conformance (`conformance` reads it from a running server; the tests pin it for the installed versions):
rustac's memory backend advertises core, collections, ogcapi-features and item-search only: no
`query`, no `filter`, no `sort`. Searches that carry `query`/`filter` are not applied there (the
tests pin the exact behaviour), so callers must read `/conformance` and filter client-side.
pgstac advertises `query`, `filter` (CQL2), `sort`, `fields` and more, and applies them.

Every server runs in its own process group and is stopped (SIGTERM, then SIGKILL) when its context
exits, also on exceptions, so no process outlives the `with` block; on Linux the API servers also
die with their parent if it is killed outright. The PostgreSQL cluster is daemonised by pg_ctl and
stopped by `PG.stop()` (a context manager too).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.server
import importlib.metadata
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from glacier_stac.testing.worlds import WorldCatalog, read_json, world_catalog

__all__ = ["PG", "WorldCatalog", "conformance", "free_port", "serve", "serve_pgstac", "serve_pgstac_world",
           "world_catalog"]

log = logging.getLogger(__name__)

RUSTAC_VERSION = "0.9.18"
START_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it); callers retry if it gets taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _stop_group(proc: subprocess.Popen, name: str, grace_s: float = 10.0) -> None:
    """Terminate a process and everything in its process group; SIGKILL after `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, proc.pid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    # Children that outlived the leader (same group) get the same treatment.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def send_bytes(handler: http.server.BaseHTTPRequestHandler, data: bytes, body: bool = True) -> None:
    """Answer a GET/HEAD with `data`, honouring a `Range: bytes=a-b` header (206), as GDAL's /vsicurl/ needs:
    the one range reply shared by the test servers that serve COGs over HTTP."""
    rng = handler.headers.get("Range", "")
    if rng.startswith("bytes="):
        a, _, b = rng[6:].partition("-")
        start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        data = data[start:end + 1]
    else:
        handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Accept-Ranges", "bytes")
    handler.end_headers()
    if body:
        handler.wfile.write(data)


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when its parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _http_server(
    name: str,
    make_cmd: Callable[[int], list[str]],
    host: str,
    port: int,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> Iterator[str]:
    """Run `make_cmd(port)` in its own process group until `/` and `/collections` answer; yield the URL.

    `port=0` picks a free port, and another one if the server loses the race for it.
    """
    attempts = 3 if port == 0 else 1
    with tempfile.TemporaryFile(mode="w+b") as out:
        for attempt in range(attempts):
            p = port or free_port(host)
            url = f"http://{host}:{p}"
            out.seek(0)
            out.truncate()
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                make_cmd(p), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
            try:
                _wait_ready(name, proc, url, out, timeout_s)
                break
            except RuntimeError as e:
                _stop_group(proc, name)
                if attempt + 1 < attempts and "in use" in str(e).lower():
                    log.info("%s lost port %d to another process; retrying", name, p)
                    continue
                raise
            except BaseException:
                _stop_group(proc, name)
                raise
        try:
            log.info("%s serving %s (pid %d, ready in %.2f s)", name, url, proc.pid, time.perf_counter() - t0)
            yield url
        finally:
            _stop_group(proc, name)
            log.info("%s at %s stopped", name, url)


def _wait_ready(name: str, proc: subprocess.Popen, url: str, out, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out.seek(0)
            tail = out.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with code {proc.returncode} before serving {url}:\n{tail}")
        try:
            _get(url + "/", timeout=2)
            _get(url + "/collections", timeout=2)
            return
        except (OSError, ValueError) as e:  # URLError, connection refused, half-started JSON
            last = e
            time.sleep(0.1)
    raise TimeoutError(f"{name} did not answer {url}/ and {url}/collections within {timeout_s:.0f} s ({last})")


# --------------------------------------------------------------------------- rustac


def rustac_command() -> list[str]:
    """The `rustac` console script of this interpreter's rustac package (not a PATH shim if avoidable).

    `rustac.main` parses the process's own argv, so it must run as the console script, not `python -c`.
    """
    try:
        version = importlib.metadata.version("rustac")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the rustac package is not installed; install it with `pip install rustac=={RUSTAC_VERSION}`"
        ) from None
    if version != RUSTAC_VERSION:
        log.warning("rustac %s is installed; glacier_stac is tested with %s", version, RUSTAC_VERSION)
    here = Path(sys.executable).parent / "rustac"
    exe = str(here) if here.is_file() else shutil.which("rustac")
    if not exe:
        raise FileNotFoundError(f"the `rustac` console script is not on PATH (rustac {version} is installed)")
    return [exe]


@contextlib.contextmanager
def serve(world_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve a generated world with `rustac serve` (memory backend); yield the API root URL.

    `port=0` picks a free port. The server is stopped when the context exits.
    """
    catalog = world_catalog(world_dir)
    hrefs = [str(p) for p in catalog.hrefs()]
    exe = rustac_command()

    def cmd(p: int) -> list[str]:
        return [*exe, "serve", "--addr", f"{host}:{p}", *hrefs]

    with _http_server(f"rustac serve {catalog.world_dir}", cmd, host, port) as url:
        yield url


# --------------------------------------------------------------------------- conformance


QUERY_MARK = "item-search#query"
FILTER_MARKS = ("item-search#filter", "ogcapi-features-3/1.0/conf/filter")
SORT_MARK = "item-search#sort"


@dataclass(frozen=True)
class Conformance:
    """What a STAC API says it implements (its `/conformance` classes)."""

    url: str
    classes: tuple[str, ...] = field(repr=False)

    @property
    def item_search(self) -> bool:
        return any(c.endswith("/item-search") for c in self.classes)

    @property
    def query(self) -> bool:
        return any(QUERY_MARK in c for c in self.classes)

    @property
    def filter(self) -> bool:
        return any(m in c for c in self.classes for m in FILTER_MARKS)

    @property
    def sort(self) -> bool:
        return any(SORT_MARK in c for c in self.classes)

    def summary(self) -> str:
        flags = {"item-search": self.item_search, "query": self.query, "filter": self.filter, "sort": self.sort}
        return f"{self.url}: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items())


def conformance(url: str) -> Conformance:
    """Read `/conformance` (falling back to the landing page's `conformsTo`) and log what it supports."""
    url = url.rstrip("/")
    try:
        classes = _get(url + "/conformance").get("conformsTo")
    except urllib.error.HTTPError:
        classes = None
    if classes is None:
        classes = _get(url + "/").get("conformsTo", [])
    conf = Conformance(url, tuple(classes))
    log.info("conformance %s", conf.summary())
    return conf


# --------------------------------------------------------------------------- PostgreSQL / pgstac


def _pg_bindir() -> Path:
    """PostgreSQL's server binaries: $GLACIER_PG_BIN, Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    env = os.environ.get("GLACIER_PG_BIN")
    candidates = [Path(env)] if env else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)  # type: ignore[arg-type]
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them with "
        "`apt-get install postgresql-15-postgis-3` or set GLACIER_PG_BIN"
    )


@dataclass
class PG:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust auth; `stop()` removes it."""

    datadir: Path
    port: int
    bindir: Path
    run_as: str | None  # system user that owns the cluster when we are root (postgres refuses root)
    owned_dir: Path | None = None  # a directory we created and must remove
    host: str = "127.0.0.1"
    user: str = "postgres"
    dbname: str = "pgstac"

    @property
    def dsn(self) -> str:
        """The default database (created with PostGIS by `start_postgres`)."""
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """Create a database with PostGIS (one cluster can hold several pgstac catalogs); return its DSN."""
        import psycopg

        if not dbname.replace("_", "").isalnum():
            raise ValueError(f"database name {dbname!r}: use letters, digits and _ only")
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        with psycopg.connect(self.dsn_for(dbname), autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except psycopg.Error as e:
                raise RuntimeError(
                    f"PostGIS is not available in this PostgreSQL ({e}); install `postgresql-15-postgis-3`"
                ) from e
        return self.dsn_for(dbname)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the cluster if we created its directory."""
        if (self.datadir / "postmaster.pid").exists():
            _pg_run(self, ["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop"], check=False)
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)
        log.info("postgres on port %d stopped", self.port)

    def __enter__(self) -> PG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pg_run(pg: PG, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(pg.bindir / args[0]), *args[1:]]
    if pg.run_as:
        cmd = ["runuser", "-u", pg.run_as, "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args[0]} failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return r


def start_postgres(tmpdir: str | os.PathLike[str], run_as: str = "postgres") -> PG:
    """initdb + start a throwaway cluster listening only on 127.0.0.1 (free port, trust auth) with PostGIS.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `run_as` system user and
    lives in a fresh directory that user owns (pytest's tmp dirs are private to root); it is removed
    by `PG.stop()`. As any other user it lives in `tmpdir/pgdata`.
    """
    bindir = _pg_bindir()
    owned: Path | None = None
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(run_as)
        except KeyError:
            raise RuntimeError(f"running as root but system user {run_as!r} does not exist to own PostgreSQL") from None
        if not shutil.which("runuser"):
            raise FileNotFoundError("running as root needs `runuser` (util-linux) to start PostgreSQL as postgres")
        owned = Path(tempfile.mkdtemp(prefix="glacier-pg-"))
        os.chown(owned, pw.pw_uid, pw.pw_gid)
        datadir, user = owned / "pgdata", run_as
    else:
        datadir = Path(tmpdir) / "pgdata"
    pg = PG(datadir=datadir, port=0, bindir=bindir, run_as=user, owned_dir=owned)
    try:
        t0 = time.perf_counter()
        _pg_run(pg, ["initdb", "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--no-locale", "--no-sync"])  # fmt: skip
        for attempt in range(3):
            pg.port = free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {datadir} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
            r = _pg_run(pg, ["pg_ctl", "-D", str(datadir), "-l", str(datadir / "server.log"), "-w", "-t", "60",
                             "-o", opts, "start"], check=False)  # fmt: skip
            if r.returncode == 0:
                break
            logtail = _tail(datadir / "server.log")
            if attempt == 2 or "in use" not in logtail:
                raise RuntimeError(f"pg_ctl start failed (exit {r.returncode}):\n{r.stdout}{r.stderr}\n{logtail}")
        pg.create_database(pg.dbname)
        log.info("postgres at %s ready in %.2f s", pg.dsn, time.perf_counter() - t0)
        return pg
    except BaseException:
        pg.stop()
        raise


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def migrate_pgstac(dsn: str) -> str:
    """Install/upgrade the pgstac schema (`pypgstac migrate`); return the pgstac version."""
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    with PgstacDB(dsn=dsn) as db:
        version = Migrate(db).run_migration()
    log.info("pgstac schema %s migrated at %s", version, dsn)
    return version


def load_pgstac(dsn: str, world_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Upsert a world's collections and items into pgstac; return the item count per collection."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    catalog = world_catalog(world_dir)
    counts: dict[str, int] = {}
    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db)
        loader.load_collections(iter([read_json(p) for p in catalog.collections.values()]), Methods.upsert)
        for cid, path in catalog.items.items():
            features = read_json(path).get("features", [])
            if features:
                loader.load_items(iter(features), Methods.upsert)
            counts[cid] = len(features)
    log.info("loaded %s into pgstac", counts)
    return counts


@contextlib.contextmanager
def serve_pgstac(dsn: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run stac-fastapi-pgstac (uvicorn, own process) over a pgstac database; yield the API root URL."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ValueError(f"not a postgresql://user@host:port/db DSN: {dsn!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGUSER=unquote(parts.username or "postgres"),
        PGPASSWORD=unquote(parts.password or ""),
        PGHOST=parts.hostname,
        PGPORT=str(parts.port or 5432),
        PGDATABASE=parts.path.lstrip("/") or "postgres",
        DB_MIN_CONN_SIZE="1",
        DB_MAX_CONN_SIZE="4",
        STAC_FASTAPI_TITLE="glacier_stac pgstac",
        STAC_FASTAPI_DESCRIPTION="A synthetic glacier world served by stac-fastapi-pgstac",
        STAC_FASTAPI_LANDING_ID="glacier-stac-pgstac",
    )

    def cmd(p: int) -> list[str]:
        # 7.x builds the app in a factory (there is no module-level `app` any more).
        return [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
                "--host", host, "--port", str(p), "--log-level", "warning", "--workers", "1"]  # fmt: skip

    # The app reads a `.env` from its working directory: run it from an empty one.
    with (
        tempfile.TemporaryDirectory(prefix="glacier-pgstac-api-") as cwd,
        _http_server("stac-fastapi-pgstac", cmd, host, port, env=env, cwd=cwd) as url,
    ):
        yield url


@contextlib.contextmanager
def serve_pgstac_world(world_dir: str | os.PathLike[str], tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """PostgreSQL + pgstac + stac-fastapi-pgstac over a world, all torn down on exit."""
    world_catalog(world_dir)  # refuse an incomplete world before starting anything
    with start_postgres(tmpdir) as pg:
        migrate_pgstac(pg.dsn)
        load_pgstac(pg.dsn, world_dir)
        with serve_pgstac(pg.dsn) as url:
            yield url
