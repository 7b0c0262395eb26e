"""The I/O seam: how one asset is opened and read on a worker.

A stackstac `Reader` that signs URLs at read time (so tokens never sit in items, graphs, logs or
Zarr attributes), re-signs and retries once a token has expired, applies cloud-friendly GDAL
settings on every worker, and turns an unreadable asset into recorded no-data (which asset, why)
instead of a crash or silent zeros.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import DEFAULT_GDAL_ENV, AutoParallelRioReader

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


class SigningReader(AutoParallelRioReader):
    """stackstac's reader, with read-time signing, re-sign on expiry and recorded failures."""

    def __init__(self, *, url: str, signer: str | None = None, record_errors: bool = True, **kw: Any) -> None:
        self.unsigned_url = redact(url)
        self.signer = signer
        self.record_errors = record_errors
        kw["gdal_env"] = kw.get("gdal_env") or GDAL_ENV
        signed = SIGNERS[signer](self.unsigned_url) if signer else url
        super().__init__(url=signed, **kw)

    def _resign(self) -> None:
        self.close()
        self.url = SIGNERS[self.signer](self.unsigned_url, refresh=True)

    def read(self, window, **kwargs) -> np.ndarray:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=UserWarning)
                    return super().read(window, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified below
                if self.signer and attempt < 2 and _is_auth_failure(e):
                    log.info("token for %s rejected; re-signing (attempt %d)", self.unsigned_url, attempt + 1)
                    self._resign()
                    continue
                if not self.record_errors:
                    raise RuntimeError(f"reading {self.unsigned_url} failed: {redact(str(e))}") from None
                record_read_error(self.unsigned_url, e.__cause__ or e, where=str(window))
                return np.full((window.height, window.width), self.fill_value, dtype=self.dtype)
        raise AssertionError("unreachable")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["url"] = self.unsigned_url  # never pickle a token into the graph
        state["signer"] = self.signer
        state["record_errors"] = self.record_errors
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
