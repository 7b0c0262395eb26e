"""The I/O seam: how one asset is opened and read on a worker.

A stackstac `Reader` that signs URLs at read time (so tokens never sit in items, graphs, logs or
Zarr attributes), re-signs and retries once a token has expired, applies cloud-friendly GDAL
settings on every worker, and turns an unreadable asset into recorded no-data (which asset, why)
instead of a crash or silent zeros.

State is passed in, never kept in this module: the signer is a callable (odc-stac's `patch_url`),
the GDAL environment is captured where the graph is built (`capture_gdal_env`, odc-stac's
`_capture_rio_env`) and travels inside each task's reader, and what the readers of one process
share (decoded blocks, the read-error log) is a `ReaderState`. Without a state given, a reader uses
`process_state()`, the one default per process, made on first use; on Dask workers `cluster.py`'s
plugin holds that same object, sizes it and gathers its errors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window
from stackstac.reader_protocol import Reader as StackstacReader
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import DEFAULT_GDAL_ENV

from glacier_stac.redact import install_log_redaction, redact

log = logging.getLogger(__name__)

# Applied inside every read, on every worker (the env travels inside the pickled reader); GDAL_CACHEMAX is
# added by `gdal_options`, when the environment is captured.
GDAL_CLOUD: Mapping[str, str | int] = MappingProxyType({
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # do not list the container for sidecar files
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": 64 * 2**20,
    "GDAL_NUM_THREADS": "1",  # parallelism comes from Dask
})
GDAL_CACHE_VAR = "GLACIER_STAC_GDAL_CACHE_MB"
DEFAULT_GDAL_CACHE_MB = 256


def gdal_cache_bytes(cache_mb: int | None = None) -> int:
    """GDAL's (and the shared `BlockCache`'s) block cache in bytes: `cache_mb`, else $GLACIER_STAC_GDAL_CACHE_MB,
    else 256 MB, read when called (on the client, as the graph is built), never at import.

    Bytes: rasterio passes an int GDAL_CACHEMAX to GDALSetCacheMax64, so a bare 256 would mean 256 *bytes*
    and silently disable the block cache (tile windows that cut through COG blocks then decode them
    again; rasterio#2336). Workers with memory to spare keep more neighbouring blocks.
    """
    if cache_mb is None:
        raw = os.environ.get(GDAL_CACHE_VAR, str(DEFAULT_GDAL_CACHE_MB))
        try:
            cache_mb = int(raw)
        except ValueError:
            raise ValueError(f"{GDAL_CACHE_VAR} must be a whole number of megabytes, got {raw!r}") from None
    if cache_mb < 1:
        raise ValueError(f"the GDAL block cache must be at least 1 MB, got {cache_mb} MB")
    return int(cache_mb) * 2**20


def gdal_options(cache_mb: int | None = None) -> dict[str, str | int]:
    """The GDAL options of every read: `GDAL_CLOUD` plus the block cache size (`gdal_cache_bytes`)."""
    return {**GDAL_CLOUD, "GDAL_CACHEMAX": gdal_cache_bytes(cache_mb)}


def capture_gdal_env(cache_mb: int | None = None) -> LayeredEnv:
    """The GDAL environment of every read, captured where the graph is built (the client) and shipped to the
    workers inside each task's reader (odc-stac's `_capture_rio_env`): workers read with the client's settings."""
    return DEFAULT_GDAL_ENV.updated(always=gdal_options(cache_mb))

AUTH_MARKERS = ("403", "401", "AuthenticationFailed", "AuthorizationFailure", "Signature", "expired")


def sign_planetary_computer(url: str, refresh: bool = False) -> str:
    """Sign a blob URL with a Planetary Computer SAS token; `refresh` forgets cached tokens first."""
    import planetary_computer
    from planetary_computer import sas

    if refresh:
        sas.TOKEN_CACHE.clear()
    return planetary_computer.sign_url(redact(url))


class Signer(Protocol):
    """Signs a URL for reading (odc-stac's `patch_url`); `refresh=True` when the last token was refused.
    Shipped to workers inside readers, so it must pickle: a module-level function, or a picklable object."""

    def __call__(self, url: str, refresh: bool = False) -> str: ...


# signers a catalog can name (`Catalog.signer`); read-only: pass any other Signer as a callable
NAMED_SIGNERS: Mapping[str, Signer] = MappingProxyType({"planetary-computer": sign_planetary_computer})


def resolve_signer(signer: str | Signer | None) -> Signer | None:
    """A Signer from a callable, a name in NAMED_SIGNERS, or None (unsigned reads)."""
    if signer is None or callable(signer):
        return signer
    if signer not in NAMED_SIGNERS:
        raise ValueError(f"unknown signer {signer!r}: known are {', '.join(NAMED_SIGNERS)}; "
                         "pass any other as a callable(url, refresh=False) -> url")
    return NAMED_SIGNERS[signer]


# --------------------------------------------------------------------------- which asset a URL is


def asset_digest(url: str) -> str:
    """A short digest of an unsigned asset URL: the key of a cube's `attrs["assets"]` table, so the cube's
    attributes name items and assets without carrying URLs."""
    return hashlib.blake2b(redact(url).encode(), digest_size=8).hexdigest()


def asset_table(pairs: Mapping[str, tuple[str, str]]) -> dict[str, list[str]]:
    """asset_digest(URL) -> [item id, asset key], from URL -> (item id, asset key)."""
    return {asset_digest(url): [item, key] for url, (item, key) in pairs.items()}


def label_errors(records: Sequence[Mapping[str, Any]],
                 assets: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Copies of read-error records naming their item and asset key, looked up in `assets` (a cube's
    `attrs["assets"]`, returned by `cube.build` to its caller)."""
    out = []
    for rec in records:
        rec = dict(rec)
        if rec.get("item") is None and assets:
            hit = assets.get(asset_digest(rec["asset"]))
            if hit is not None:
                rec["item"], rec["asset_key"] = hit[0], hit[1]
        out.append(rec)
    return out


# --------------------------------------------------------------------------- per-process state


READ_ERROR_TOPIC = "glacier_stac.read_error"  # the scheduler's event topic cluster.py forwards records to


class ReadErrorLog:
    """Unreadable assets seen by one process's readers, the most recent `max_records`.

    `forward`, when set, also receives each record: on a Dask worker cluster.py's plugin sets it to the
    scheduler's event log, so the client gathers every worker's records.
    """

    def __init__(self, max_records: int = 100_000) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._lock = threading.Lock()
        self.forward: Callable[[dict[str, Any]], None] | None = None

    def record(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(rec)
        forward = self.forward
        if forward is not None:
            try:
                forward(dict(rec))
            except Exception as e:  # noqa: BLE001 - the record is kept here; a lost forward must not fail a read
                log.warning("could not forward a read error to the cluster: %s", e)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        return len(self._records)


def error_reason(error: BaseException) -> str:
    """An error with the causes it was raised from: GDAL's "Read failed. See previous exception" says
    nothing, the CPLE error it chains to ("IReadBlock failed ... TIFFReadEncodedTile() failed") does."""
    parts, seen, e = [], set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        if text and "see previous exception" not in text.lower():
            parts.append(f"{type(e).__name__}: {text}")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts) or type(error).__name__


def read_error_record(url: str, error: BaseException, where: str) -> dict[str, Any]:
    """An unreadable asset: which asset, where in the grid, and why (never a token). The item and asset
    key are filled in by `label_errors` on the client, which has the cube's table."""
    return {"item": None, "asset_key": None, "asset": redact(url), "error": redact(error_reason(error))[:500],
            "where": where, "time": time.time()}


class BlockCache:
    """Decoded COG blocks shared by every reader and thread of a process, decoded once (single flight).

    Why: neighbouring tiles cut through the same COG blocks, and Dask tends to run them at the same
    time on different threads, each with its own GDAL handle and block cache, so both would decode
    the shared blocks. Here a block being decoded by one thread is waited for, not decoded again, and
    a thread first takes the blocks nobody is decoding.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._inflight: dict[tuple, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0

    def resize(self, max_bytes: int) -> None:
        """Keep at most `max_bytes` from now on (the oldest blocks go first)."""
        with self._lock:
            self.max_bytes = max_bytes
            while self._bytes > self.max_bytes and self._blocks:
                self._bytes -= self._blocks.popitem(last=False)[1].nbytes

    def get(self, keys: list[tuple], decode: Callable[[list[tuple]], dict[tuple, np.ndarray]]
            ) -> dict[tuple, np.ndarray]:
        """The blocks for `keys`; `decode(keys)` decodes several at once (one read, one set of requests)."""
        got: dict[tuple, np.ndarray] = {}
        mine, theirs = [], []
        with self._lock:
            for k in keys:
                if k in self._blocks:
                    self._blocks.move_to_end(k)
                    got[k] = self._blocks[k]
                elif k in self._inflight:
                    theirs.append((k, self._inflight[k]))
                else:
                    self._inflight[k] = threading.Event()
                    mine.append(k)
        if mine:
            try:
                fresh = decode(mine)
                with self._lock:
                    for k in mine:
                        self._blocks[k] = got[k] = fresh[k]
                        self._bytes += fresh[k].nbytes
                    while self._bytes > self.max_bytes and len(self._blocks) > 1:
                        self._bytes -= self._blocks.popitem(last=False)[1].nbytes
            finally:  # waiters wake up whatever happened; on failure they decode it themselves
                with self._lock:
                    events = [self._inflight.pop(k) for k in mine]
                for ev in events:
                    ev.set()
        for k, ev in theirs:
            ev.wait()
            with self._lock:
                arr = self._blocks.get(k)
            got[k] = arr if arr is not None else decode([k])[k]  # the other decode failed, or was evicted
        return got


# GDAL's /vsicurl/ remembers a URL that failed to open: every later open of it in the process says this,
# whatever the server answered (403, 503, a reset)
GDAL_CACHED_MISSING = "does not exist in the file system"


class FirstFailures:
    """The first reason each asset URL failed for, in this process (the most recent `max_urls` URLs).

    Why: once an open has failed, GDAL's /vsicurl/ cache answers every later open of that URL in the process
    with "does not exist" without asking the server, so a retry on the same worker would record that instead
    of the 403/503/reset the server gave. A later failure that only says so is reported with the first reason.
    """

    def __init__(self, max_urls: int = 10_000) -> None:
        self._reasons: OrderedDict[str, str] = OrderedDict()
        self._max = max_urls
        self._lock = threading.Lock()

    def reason(self, url: str, error: BaseException) -> str:
        """The reason to report for `error` reading `url` (redacted): the first one seen when this one is only
        GDAL's cached "does not exist", else this one (remembered if it is the first)."""
        now = redact(error_reason(error))
        with self._lock:
            first = self._reasons.get(url)
            if first is None:
                self._reasons[url] = now
                while len(self._reasons) > self._max:
                    self._reasons.popitem(last=False)
                return now
        if GDAL_CACHED_MISSING in now and GDAL_CACHED_MISSING not in first:
            return f"{first} (first failure; a retry in the same process: GDAL's cache answers 'does not exist')"
        return now


class ReaderState:
    """What the readers of one process share: the decoded-block cache and the read-error log.

    Per process, never shipped: pickled inside a task it stands for the receiving process's state
    (`process_state()`), so a graph built with an explicit state still shares the workers' caches.
    """

    def __init__(self, block_cache_bytes: int | None = None, max_errors: int = 100_000) -> None:
        self.blocks = BlockCache(gdal_cache_bytes() if block_cache_bytes is None else block_cache_bytes)
        self.errors = ReadErrorLog(max_errors)
        self.first_failure = FirstFailures()
        self._token = uuid.uuid4().hex

    def __reduce__(self) -> tuple:
        return (process_state, ())

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("glacier_stac.reader.ReaderState", self._token)


@functools.cache
def process_state() -> ReaderState:
    """This process's reader state: the one per-process default, made on first use (block cache sized by
    `gdal_cache_bytes()` then). On a Dask worker cluster.py's `ReaderPlugin` holds and sizes this object."""
    return ReaderState()


@dataclass
class _Handle:
    """An open asset, read by one thread at a time: the dataset, the grid-to-source pixel transform when
    no warp is needed (see `grid_to_source`), and a WarpedVRT opened on first need."""

    ds: Any
    to_source: Affine | None
    vrt: Any = None


def grid_to_source(ds: Any, spec: Any) -> Affine | None:
    """Grid pixel -> source pixel transform if the source can be read without the warper, else None:
    the same CRS, north-up, pixels a whole number (>= 1) of grid pixels, starting on the grid's lattice."""
    if ds.crs is None or ds.crs.to_epsg() != spec.vrt_params["crs"]:
        return None
    src, dst = ds.transform, spec.vrt_params["transform"]
    if src.b or src.d or dst.b or dst.d or src.e > 0 or dst.e > 0:
        return None  # rotated or south-up

    def whole(v: float) -> bool:
        return abs(v - round(v)) < 1e-6

    # RasterIO resampling equals the warper's bit for bit only when source pixels are a whole number of
    # grid pixels and start on the grid's lattice (Landsat's grid, half a 10 m pixel off, differs by
    # 1 DN here and there: it is warped)
    if not (whole(src.a / dst.a) and whole(src.e / dst.e) and src.a / dst.a >= 1 and src.e / dst.e >= 1
            and whole((src.c - dst.c) / dst.a) and whole((src.f - dst.f) / dst.e)):
        return None
    return ~src * dst


FOOTPRINT_MARGIN_SRC_PX = 2  # source pixels the footprint is grown by: past any resampling kernel's reach


def footprint_window(ds: Any, spec: Any, window: Window) -> Window | None:
    """The part of a grid `window` the asset can touch (its footprint grown by a margin of
    FOOTPRINT_MARGIN_SRC_PX source pixels and 2 grid pixels), or None when that is the whole window.

    Why: a tile window reaching past a small asset (an asset edge, a world smaller than a tile) costs the
    warper every pixel of the window. An empty window (width or height 0) means the asset lies outside.
    """
    vp = spec.vrt_params
    dst = vp["transform"]
    if dst.b or dst.d or ds.crs is None or ds.crs.to_epsg() != vp["crs"]:
        # rotated grids, other CRSs: read it all (the warper's values across CRSs depend on the window asked
        # for: GDAL picks the source window and its resampling per request)
        return None
    left, bottom, right, top = ds.bounds
    mx, my = FOOTPRINT_MARGIN_SRC_PX * abs(ds.transform.a), FOOTPRINT_MARGIN_SRC_PX * abs(ds.transform.e)
    inv = ~dst
    (ca, ra), (cb, rb) = inv * (left - mx, top + my), inv * (right + mx, bottom - my)
    c0, c1 = sorted((ca, cb))
    r0, r1 = sorted((ra, rb))
    if not all(np.isfinite(v) for v in (c0, c1, r0, r1)):
        return None
    w0, h0 = int(window.col_off), int(window.row_off)
    wc0 = max(w0, int(np.floor(c0)) - 2)
    wr0 = max(h0, int(np.floor(r0)) - 2)
    wc1 = min(w0 + int(window.width), int(np.ceil(c1)) + 2)
    wr1 = min(h0 + int(window.height), int(np.ceil(r1)) + 2)
    if wc0 <= w0 and wr0 <= h0 and wc1 >= w0 + window.width and wr1 >= h0 + window.height:
        return None
    return Window(wc0, wr0, max(wc1 - wc0, 0), max(wr1 - wr0, 0))


EDGE_SAFETY_SRC_PX = 1  # source pixels kept warped inside an asset's edge beyond the resampling kernel's reach
# (a precaution: on the test COGs the resampled read equals the warper up to the edge itself)


def inner_window(ds: Any, to_source: Affine, window: Window, keep_src_px: int) -> Window | None:
    """The part of a grid `window` whose source pixels lie at least `keep_src_px` source pixels inside the
    asset; None when that is empty or the whole window.

    `to_source`: grid pixel -> source pixel (`grid_to_source`: a whole number of grid pixels per source
    pixel, the source's origin on the grid's lattice).
    """
    def span(scale: float, off: float, lo: int, n: int, src_n: int) -> tuple[int, int] | None:
        k = round(1 / scale)  # grid pixels per source pixel
        shift = round(off * k)  # grid pixel g's edge is source coordinate (g + shift) / k
        if abs(off * k - shift) > 1e-6:
            return None
        # on the asset's side on a source pixel edge; on the window's side where the window starts, as any
        # window inside an asset does
        return max(keep_src_px * k - shift, lo), min((src_n - keep_src_px) * k - shift, lo + n)

    cols = span(to_source.a, to_source.c, int(window.col_off), int(window.width), ds.width)
    rows = span(to_source.e, to_source.f, int(window.row_off), int(window.height), ds.height)
    if cols is None or rows is None or cols[1] <= cols[0] or rows[1] <= rows[0]:
        return None
    (c0, c1), (r0, r1) = cols, rows
    if (c0, r0, c1, r1) == (window.col_off, window.row_off, window.col_off + window.width,
                            window.row_off + window.height):
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _is_auth_failure(e: BaseException) -> bool:
    text = f"{e!r} {e.__cause__!r}"
    return any(m in text for m in AUTH_MARKERS)


class CogReader:
    """stackstac `Reader` for single-band COGs: read-time signing, re-sign on expiry, recorded failures.

    Why not stackstac's own reader: it reads with `masked=True`, which makes GDAL warp the mask band as
    well as the data (a second warp for every resampled band). GDAL's warper already keeps
    no-data out of bilinear kernels when the source declares it, so here no-data is found by value
    after the read. Sources already in the grid's CRS skip the warper where that gives the same values
    (see `_read_same_crs`). A handle is used by one thread at a time (GDAL handles are not thread-safe);
    free ones are pooled per asset.
    """

    def __init__(self, *, url: str, spec: Any, resampling: Any, dtype: np.dtype, fill_value: float | int,
                 scale_offset: tuple[float, float] = (1.0, 0.0), gdal_env: LayeredEnv | None = None,
                 errors_as_nodata: tuple = (), signer: str | Signer | None = None, record_errors: bool = True,
                 state: ReaderState | None = None) -> None:
        install_log_redaction()  # here too on Dask workers (unpickled readers): GDAL logs signed URLs on retries
        self.unsigned_url = redact(url)
        self.signer = resolve_signer(signer)
        self.record_errors = record_errors
        self.state = state  # None: this process's (`process_state()`), looked up when needed
        self.spec = spec
        self.resampling = resampling
        self.dtype = np.dtype(dtype)
        self.fill_value = fill_value
        self.scale_offset = scale_offset
        self.gdal_env = gdal_env or capture_gdal_env()
        del errors_as_nodata  # stackstac's Reader protocol passes it; every failed read is recorded no-data here
        self.url = self.signer(self.unsigned_url) if self.signer else url
        self._handles: list[_Handle] = []  # every open handle
        self._free: list[_Handle] = []  # those no thread is reading from
        self._lock = threading.Lock()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> _Handle:
        import rasterio

        with self.gdal_env.open:
            ds = rasterio.open(self.url, sharing=False)
        if ds.count != 1:
            n = ds.count
            ds.close()
            raise ValueError(f"{self.unsigned_url} has {n} bands; glacier_stac reads single-band assets")
        h = _Handle(ds, grid_to_source(ds, self.spec))
        with self._lock:
            self._handles.append(h)
        return h

    def _warped(self, h: _Handle) -> Any:
        from rasterio.vrt import WarpedVRT

        if h.vrt is None:
            with self.gdal_env.open_vrt:
                h.vrt = WarpedVRT(h.ds, sharing=False, resampling=self.resampling, add_alpha=h.ds.nodata is None,
                                  **self.spec.vrt_params)
        return h.vrt

    @contextlib.contextmanager
    def _handle(self) -> Iterator[_Handle]:
        """A handle no other thread is using: the asset's last one when free, so its GDAL block cache
        serves the next tile's window (tile edges cut through COG blocks); a new one otherwise."""
        with self._lock:
            h = self._free.pop() if self._free else None
        if h is None or h.ds.closed:
            h = self._open()
        try:
            yield h
        finally:
            with self._lock:
                if not h.ds.closed and h in self._handles:
                    self._free.append(h)

    # -- reading ------------------------------------------------------------------------------
    def _read(self, window) -> np.ndarray:
        with self._handle() as h:
            sub = footprint_window(h.ds, self.spec, window)
            if sub is None:  # the asset covers the window (or its footprint is unknown): read it all
                return self._read_with(h, window)
            # Only part of the window holds the asset (a scene edge, an asset smaller than the tile): the warper
            # would transform every grid pixel of the window to find that most fall outside. It runs over the
            # footprint (with a margin reaching past the asset, so the same path and kernel apply: the warper
            # works block by block, each pixel's value does not depend on the window asked for) and the rest is
            # the fill value, which is what a read outside an asset gives.
            out = np.full((window.height, window.width), self.fill_value, dtype=self.dtype)
            if sub.width > 0 and sub.height > 0:
                r0, c0 = int(sub.row_off - window.row_off), int(sub.col_off - window.col_off)
                out[r0:r0 + sub.height, c0:c0 + sub.width] = self._read_with(h, sub)
            return out

    def _read_with(self, h: _Handle, window) -> np.ndarray:
        nodata = h.ds.nodata
        # integer output (stored DNs) is read as is: half the memory of float32 and no rounding doubt
        out = self.dtype if np.issubdtype(self.dtype, np.integer) else np.dtype(np.float32)
        with self.gdal_env.read:
            data = self._read_same_crs(h, window, out) if h.to_source is not None else None
            if data is None and h.to_source is not None and nodata is not None:
                data = self._read_edge_split(h, window, out)
            if data is None:
                src = self._warped(h)
                if nodata is None:  # no declared no-data: the alpha band says what is outside
                    data, alpha = src.read((1, 2), window=window, out_dtype=out)
                    data[alpha == 0] = self.fill_value
                    return data.astype(self.dtype, copy=False)
                data = src.read(1, window=window, out_dtype=out)
        if data.dtype.kind in "iu" and nodata == self.fill_value and self.scale_offset == (1.0, 0.0):
            return data  # stored DNs whose no-data already is the fill: nothing to replace
        invalid = (data == nodata) if nodata is not None and not np.isnan(nodata) else np.isnan(data)
        scale, offset = self.scale_offset
        if scale != 1 or offset != 0:
            data = data * scale + offset
        data[invalid] = self.fill_value
        return data.astype(self.dtype, copy=False)

    def _read_same_crs(self, h: _Handle, window, out: np.dtype) -> np.ndarray | None:
        """Read a source in the grid's CRS without the warper, or return None to warp.

        Same pixels at an integer offset: a plain windowed read. Coarser pixels: GDAL's resampled
        RasterIO, which gives the warper's values (tested) at a fraction of the cost because it does not
        transform every pixel's coordinates. Near no-data the two weigh neighbours differently, so a
        window whose source pixels (with the kernel's margin) hold no-data is warped, as is any window
        reaching past the asset.
        """
        ds, to_src = h.ds, h.to_source
        c0, r0 = to_src * (window.col_off, window.row_off)
        c1, r1 = to_src * (window.col_off + window.width, window.row_off + window.height)
        if abs(to_src.a - 1) < 1e-9 and abs(to_src.e - 1) < 1e-9:  # same pixels; on the lattice (grid_to_source)
            c, r = round(c0), round(r0)
            if c < 0 or r < 0 or c + window.width > ds.width or r + window.height > ds.height:
                return None
            return self._read_blocks(ds, c, r, window.width, window.height, out)
        eps = 1e-6
        if c0 < -eps or r0 < -eps or c1 > ds.width + eps or r1 > ds.height + eps:
            return None
        margin = 0 if self.resampling == Resampling.nearest else 1  # the kernel's reach (past the asset: none)
        ci0, ri0 = max(int(np.floor(c0 + eps)) - margin, 0), max(int(np.floor(r0 + eps)) - margin, 0)
        ci1 = min(int(np.ceil(c1 - eps)) + margin, ds.width)
        ri1 = min(int(np.ceil(r1 - eps)) + margin, ds.height)
        if margin and ds.nodata is not None:
            around = ds.read(1, window=Window(ci0, ri0, ci1 - ci0, ri1 - ri0))  # decodes into GDAL's block cache
            if (np.isnan(around).any() if np.isnan(ds.nodata) else (around == ds.nodata).any()):
                return None
        return ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), out_shape=(window.height, window.width),
                       resampling=self.resampling, out_dtype=out)

    def _read_edge_split(self, h: _Handle, window, out: np.dtype) -> np.ndarray | None:
        """A window reaching past the asset: its inner part without the warper, the frame warped (None: warp it all).

        Why: the warper transforms every pixel's coordinates, several times the cost of a plain or
        resampled read, and a window at an asset's edge (a scene edge, a world smaller than a tile) was
        warped whole for the sake of its few edge pixels. The inner part keeps `EDGE_SAFETY_SRC_PX` source
        pixels (plus the kernel's reach) from the asset's edges, so it is a window inside the asset that
        `_read_same_crs` reads as it reads any other; the frame is warped as before (the warper's value at
        a pixel does not depend on the window asked for, see `_read`).
        """
        inner = inner_window(h.ds, h.to_source, window,
                             EDGE_SAFETY_SRC_PX + (0 if self.resampling == Resampling.nearest else 1))
        if inner is None:
            return None
        core = self._read_same_crs(h, inner, out)
        if core is None:  # no-data near the inner part: the warper weighs it, read it all the warper's way
            return None
        data = np.empty((window.height, window.width), out)
        r0, c0 = int(inner.row_off - window.row_off), int(inner.col_off - window.col_off)
        r1, c1 = r0 + int(inner.height), c0 + int(inner.width)
        data[r0:r1, c0:c1] = core
        src = self._warped(h)
        for rows, cols in (((0, r0), (0, window.width)), ((r1, window.height), (0, window.width)),
                           ((r0, r1), (0, c0)), ((r0, r1), (c1, window.width))):
            if rows[1] > rows[0] and cols[1] > cols[0]:
                strip = Window(window.col_off + cols[0], window.row_off + rows[0], cols[1] - cols[0],
                               rows[1] - rows[0])
                data[rows[0]:rows[1], cols[0]:cols[1]] = src.read(1, window=strip, out_dtype=out)
        return data

    @property
    def shared(self) -> ReaderState:
        """The state this reader shares with the process's other readers."""
        return self.state if self.state is not None else process_state()

    def _read_blocks(self, ds: Any, c: int, r: int, w: int, h: int, out: np.dtype) -> np.ndarray:
        """A window of the source assembled from whole decoded blocks of the process's shared block cache."""
        bh, bw = ds.block_shapes[0]
        keys = [(self.unsigned_url, out.str, by, bx) for by in range(r // bh, (r + h - 1) // bh + 1)
                for bx in range(c // bw, (c + w - 1) // bw + 1)]

        def decode(want: list[tuple]) -> dict[tuple, np.ndarray]:
            # one read of the blocks' bounding box: one set of (merged) range requests on a remote COG
            by0, by1 = min(k[2] for k in want), max(k[2] for k in want)
            bx0, bx1 = min(k[3] for k in want), max(k[3] for k in want)
            y0, x0 = by0 * bh, bx0 * bw
            y1, x1 = min((by1 + 1) * bh, ds.height), min((bx1 + 1) * bw, ds.width)
            region = ds.read(1, window=Window(x0, y0, x1 - x0, y1 - y0), out_dtype=out)
            return {k: region[k[2] * bh - y0:min((k[2] + 1) * bh, ds.height) - y0,
                              k[3] * bw - x0:min((k[3] + 1) * bw, ds.width) - x0] for k in want}  # views

        blocks = self.shared.blocks.get(keys, decode)
        data = np.empty((h, w), out)
        for (_, _, by, bx), blk in blocks.items():
            y0, x0 = max(r, by * bh), max(c, bx * bw)
            y1, x1 = min(r + h, by * bh + blk.shape[0]), min(c + w, bx * bw + blk.shape[1])
            data[y0 - r:y1 - r, x0 - c:x1 - c] = blk[y0 - by * bh:y1 - by * bh, x0 - bx * bw:x1 - bx * bw]
        return data

    def _resign(self) -> None:
        self.close()
        self.url = self.signer(self.unsigned_url, refresh=True)

    def read(self, window, **kwargs) -> np.ndarray:
        for attempt in range(3):
            try:
                return self._read(window)
            except Exception as e:  # noqa: BLE001 - classified below
                if self.signer and attempt < 2 and _is_auth_failure(e):
                    log.info("token for %s rejected; re-signing (attempt %d)", self.unsigned_url, attempt + 1)
                    self._resign()
                    continue
                reason = self.shared.first_failure.reason(self.unsigned_url, e)
                if not self.record_errors:
                    raise RuntimeError(f"reading {self.unsigned_url} failed: {reason}") from None
                rec = read_error_record(self.unsigned_url, e, where=str(window))
                rec["error"] = reason[:500]
                log.warning("unreadable asset %s (%s): recorded as no-data", rec["asset"], rec["error"])
                self.shared.errors.record(rec)
                return np.full((window.height, window.width), self.fill_value, dtype=self.dtype)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            handles, self._handles, self._free = self._handles, [], []
        for h in handles:
            if h.vrt is not None:
                h.vrt.close()
            h.ds.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- pickling (Dask ships readers to workers) -----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.unsigned_url, "spec": self.spec, "resampling": self.resampling, "dtype": self.dtype,
                "fill_value": self.fill_value, "scale_offset": self.scale_offset, "gdal_env": self.gdal_env,
                "signer": self.signer, "record_errors": self.record_errors,
                "state": self.state}  # never a token; a state pickles as the receiving process's

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


class Reader(Protocol):
    """The I/O seam typed: what `cube.build` hands stackstac as its reader, stackstac's `Reader` protocol
    plus the state passed in (a signer, whether failures become recorded no-data, the process state)."""

    def __init__(self, *, url: str, spec: Any, resampling: Resampling, dtype: np.dtype, fill_value: float | int,
                 scale_offset: tuple[float, float], gdal_env: LayeredEnv | None, errors_as_nodata: tuple = (),
                 signer: str | Signer | None = None, record_errors: bool = True,
                 state: ReaderState | None = None) -> None: ...

    def read(self, window: Window, **kwargs: Any) -> np.ndarray: ...

    def close(self) -> None: ...

    def __getstate__(self) -> dict[str, Any]: ...

    def __setstate__(self, state: dict[str, Any]) -> None: ...


# Type assertions (stackstac's style): a type checker fails here if CogReader drifts from either protocol.
_: type[Reader] = CogReader
_stackstac: type[StackstacReader] = CogReader
