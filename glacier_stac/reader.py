"""The I/O seam: how one asset is opened and read on a worker.

A stackstac `Reader` that signs URLs at read time (so tokens never sit in items, graphs, logs or
Zarr attributes), re-signs and retries once a token has expired, applies cloud-friendly GDAL
settings on every worker, and turns an unreadable asset into recorded no-data (which asset, why)
instead of a crash or silent zeros.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import DEFAULT_GDAL_ENV

from glacier_stac.catalog import redact

log = logging.getLogger(__name__)

# Applied inside every read, on every worker (the env travels inside the pickled reader).
GDAL_CLOUD = {
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
    "GDAL_CACHEMAX": 256,  # MB; rasterio wants an int here
    "GDAL_NUM_THREADS": "1",  # parallelism comes from Dask
}
GDAL_ENV: LayeredEnv = DEFAULT_GDAL_ENV.updated(always=GDAL_CLOUD)

AUTH_MARKERS = ("403", "401", "AuthenticationFailed", "AuthorizationFailure", "Signature", "expired")


def sign_planetary_computer(url: str, refresh: bool = False) -> str:
    """Sign a blob URL with a Planetary Computer SAS token; `refresh` forgets cached tokens first."""
    import planetary_computer
    from planetary_computer import sas

    if refresh:
        sas.TOKEN_CACHE.clear()
    return planetary_computer.sign_url(redact(url))


SIGNERS: dict[str, Callable[..., str]] = {"planetary-computer": sign_planetary_computer}


def register_signer(name: str, fn: Callable[..., str]) -> None:
    """Add a signer (a module-level function `fn(url, refresh=False) -> url`) usable by name."""
    SIGNERS[name] = fn


# Read failures seen in this process; on a Dask worker they also go to the scheduler's event log.
READ_ERRORS: list[dict[str, Any]] = []
_errors_lock = threading.Lock()
READ_ERROR_TOPIC = "glacier_stac.read_error"


def record_read_error(url: str, error: BaseException, where: str) -> None:
    rec = {"asset": redact(url), "error": f"{type(error).__name__}: {redact(str(error))[:300]}",
           "where": where, "time": time.time()}
    with _errors_lock:
        READ_ERRORS.append(rec)
    log.warning("unreadable asset %s (%s): recorded as no-data", rec["asset"], rec["error"])
    try:
        from distributed import get_worker

        get_worker().log_event(READ_ERROR_TOPIC, rec)
    except (ImportError, ValueError):
        pass


def read_errors(client: Any = None) -> list[dict[str, Any]]:
    """Unreadable assets recorded so far: in this process, plus the cluster's when a client is given."""
    out = list(READ_ERRORS)
    if client is not None:
        out += [msg for _, msg in client.get_events(READ_ERROR_TOPIC)]
    return out


def _is_auth_failure(e: BaseException) -> bool:
    text = f"{e!r} {e.__cause__!r}"
    return any(m in text for m in AUTH_MARKERS)


class CogReader:
    """stackstac `Reader` for single-band COGs: read-time signing, re-sign on expiry, recorded failures.

    Why not stackstac's own reader: it reads with `masked=True`, which makes GDAL warp the mask band as
    well as the data (about 1.7x the work for every resampled band). GDAL's warper already keeps
    no-data out of bilinear kernels when the source declares it, so here no-data is found by value
    after the read. Each thread gets its own dataset handle (GDAL handles are not thread-safe).
    """

    def __init__(self, *, url: str, spec: Any, resampling: Any, dtype: np.dtype, fill_value: float | int,
                 scale_offset: tuple[float, float] = (1.0, 0.0), gdal_env: LayeredEnv | None = None,
                 errors_as_nodata: tuple = (), signer: str | None = None, record_errors: bool = True) -> None:
        self.unsigned_url = redact(url)
        self.signer = signer
        self.record_errors = record_errors
        self.spec = spec
        self.resampling = resampling
        self.dtype = np.dtype(dtype)
        self.fill_value = fill_value
        self.scale_offset = scale_offset
        self.gdal_env = gdal_env or GDAL_ENV
        self.errors_as_nodata = errors_as_nodata
        self.url = SIGNERS[signer](self.unsigned_url) if signer else url
        self._local = threading.local()
        self._handles: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> tuple[Any, Any, float | None]:
        import rasterio
        from rasterio.vrt import WarpedVRT

        with self.gdal_env.open:
            ds = rasterio.open(self.url, sharing=False)
        if ds.count != 1:
            n = ds.count
            ds.close()
            raise ValueError(f"{self.unsigned_url} has {n} bands; glacier_stac reads single-band assets")
        nodata = ds.nodata
        vrt = None
        if self.spec.vrt_params != {"crs": ds.crs.to_epsg(), "transform": ds.transform,
                                    "height": ds.height, "width": ds.width}:
            with self.gdal_env.open_vrt:
                vrt = WarpedVRT(ds, sharing=False, resampling=self.resampling, add_alpha=nodata is None,
                                **self.spec.vrt_params)
        with self._lock:
            self._handles.append((ds, vrt))
        return ds, vrt, nodata

    def _handle(self) -> tuple[Any, Any, float | None]:
        h = getattr(self._local, "h", None)
        if h is None or h[0].closed:
            h = self._local.h = self._open()
        return h

    # -- reading ------------------------------------------------------------------------------
    def _read(self, window) -> np.ndarray:
        ds, vrt, nodata = self._handle()
        src = vrt if vrt is not None else ds
        # integer output (stored DNs) is read as is: half the memory of float32 and no rounding doubt
        out = self.dtype if np.issubdtype(self.dtype, np.integer) else np.dtype(np.float32)
        with self.gdal_env.read:
            if vrt is not None and nodata is None:  # no declared no-data: the alpha band says what is outside
                data, alpha = src.read((1, 2), window=window, out_dtype=out)
                invalid = alpha == 0
            else:
                data = src.read(1, window=window, out_dtype=out)
                invalid = (data == nodata) if nodata is not None and not np.isnan(nodata) else np.isnan(data)
        scale, offset = self.scale_offset
        if scale != 1 or offset != 0:
            data = data * scale + offset
        data[invalid] = self.fill_value
        return data.astype(self.dtype, copy=False)

    def _resign(self) -> None:
        self.close()
        self._local = threading.local()
        self.url = SIGNERS[self.signer](self.unsigned_url, refresh=True)

    def read(self, window, **kwargs) -> np.ndarray:
        for attempt in range(3):
            try:
                return self._read(window)
            except Exception as e:  # noqa: BLE001 - classified below
                if self.signer and attempt < 2 and _is_auth_failure(e):
                    log.info("token for %s rejected; re-signing (attempt %d)", self.unsigned_url, attempt + 1)
                    self._resign()
                    continue
                if not self.record_errors:
                    raise RuntimeError(f"reading {self.unsigned_url} failed: {redact(str(e))}") from None
                record_read_error(self.unsigned_url, e, where=str(window))
                return np.full((window.height, window.width), self.fill_value, dtype=self.dtype)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for ds, vrt in handles:
            if vrt is not None:
                vrt.close()
            ds.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- pickling (Dask ships readers to workers) -----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.unsigned_url, "spec": self.spec, "resampling": self.resampling, "dtype": self.dtype,
                "fill_value": self.fill_value, "scale_offset": self.scale_offset, "gdal_env": self.gdal_env,
                "errors_as_nodata": self.errors_as_nodata, "signer": self.signer,
                "record_errors": self.record_errors}  # never a token

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
