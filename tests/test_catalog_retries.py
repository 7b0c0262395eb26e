"""Retries with backoff on 429/5xx, against a real (deliberately flaky) HTTP server on loopback."""

import http.server
import json
import threading

import pytest

from glacier_stac import catalog

LANDING = {"type": "Catalog", "id": "flaky", "stac_version": "1.0.0", "description": "flaky",
           "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
           "links": [{"rel": "self", "href": "/"}, {"rel": "search", "href": "/search", "method": "POST"}]}


def serve(fail_first: int, status: int):
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.path)
            if len(seen) <= fail_first:
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps(LANDING).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, seen


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_are_retried(status):
    srv, seen = serve(fail_first=2, status=status)
    try:
        cat = catalog.open_catalog(f"http://127.0.0.1:{srv.server_address[1]}/", retries=4, timeout=5)
        assert cat.client.id == "flaky"
        assert len(seen) == 3  # two failures, then success
    finally:
        srv.shutdown()


def test_persistent_errors_become_a_clear_error():
    srv, seen = serve(fail_first=100, status=503)
    try:
        with pytest.raises(catalog.CatalogError, match="127.0.0.1"):
            catalog.open_catalog(f"http://127.0.0.1:{srv.server_address[1]}/", retries=2, timeout=5)
        assert len(seen) == 3  # first try + 2 retries, then give up
    finally:
        srv.shutdown()
