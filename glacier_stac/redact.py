"""Secrets out of every message: URLs lose their query strings, credential parameters lose their values.

Why here, at the bottom of the import table: signed hrefs (SAS tokens), catalog keys and presigned S3
URLs reach messages from many places the project does not write (GDAL's retry warnings through
rasterio, urllib3's retry lines that print only a path, distributed's task errors). Redacting each
call site misses those, so `install_log_redaction` redacts every log record of the process when it is
made, whichever logger made it; `redact` is the same rule for errors and records built by hand.
"""

from __future__ import annotations

import logging
import re

# Query parameters that carry a credential: Azure SAS (sig, se, sv, st, sp, skoid, ...), Planetary
# Computer / APIM keys, AWS SigV4 (X-Amz-*), Google (X-Goog-*), OAuth tokens and codes, API keys.
SECRET_PARAMS = (
    "sig", "se", "sv", "st", "sp", "sr", "srt", "ss", "spr", "si", "skoid", "sktid", "skt", "ske", "sks", "skv",
    "sdd", "subscription-key", "subscription_key", "token", "access_token", "id_token", "refresh_token", "code",
    "api_key", "apikey", "api-key", "key", "password", "passwd", "secret", "signature", "x-amz-[a-z-]+",
    "x-goog-[a-z-]+", "awsaccesskeyid", "policy", "key-pair-id",
)
REDACTED = "REDACTED"

# scheme://host/path?query -> scheme://host/path (a URL's query is where signatures live)
_URL_QUERY = re.compile(r"([a-zA-Z][\w+.-]*://[^\s'\"?#<>()]+)\?[^\s'\"<>()]*")
# key=value anywhere (paths printed without their host, form bodies, %-encoded '=')
_PARAM = re.compile(r"(?i)(?<![\w-])(" + "|".join(SECRET_PARAMS) + r")(=|%3D)[^&\s'\"<>;,)]*")
# user:password@ in a URL
_USERINFO = re.compile(r"([a-zA-Z][\w+.-]*://)[^\s/@'\"]+:[^\s/@'\"]+@")
# Authorization headers and key headers, as some libraries print them
_HEADER = re.compile(r"(?i)((?:authorization|ocp-apim-subscription-key|x-api-key)['\"]?\s*[:=]\s*['\"]?)"
                     r"(?:bearer\s+|basic\s+)?[^\s'\",}]+")


def redact(text: str) -> str:
    """`text` without query strings of URLs, credential parameters, URL passwords or auth headers."""
    if not text:
        return text
    text = _URL_QUERY.sub(r"\1", text)
    text = _PARAM.sub(rf"\1\2{REDACTED}", text)
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    return _HEADER.sub(rf"\1{REDACTED}", text)


def _redacting(factory):
    """A LogRecord factory that bakes the message (msg % args) and redacts it, with any traceback."""

    def make(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed call: logging reports it when it formats
            return record
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    make.redacts_secrets = True  # type: ignore[attr-defined]
    return make


def install_log_redaction() -> None:
    """Redact every log record this process makes, from any logger (idempotent, cheap to call again).

    Records are redacted where they are made (the LogRecord factory), so handlers added later (pytest's
    caplog, distributed's, a notebook's) and loggers of libraries (rasterio/GDAL, urllib3, pystac-client,
    distributed) see only redacted text.
    """
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacts_secrets", False):
        logging.setLogRecordFactory(_redacting(factory))
