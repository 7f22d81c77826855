"""HTTP server of ``tools/serve.py``: the JSON API and the web page, on the standard library.

``ThreadingHTTPServer`` (one thread per connection; inference itself runs one request at a time
behind the service's lock). Every request gets an answer: a bad one a 4xx JSON error, an
unexpected failure a 500 JSON error with the traceback in the server's log; the server goes on.
"""

import json
import logging
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .page import PAGE_HTML
from .service import InferenceService, RequestError

__all__ = ["make_server"]

logger = logging.getLogger(__name__)

#: Seconds a connection may stay silent before the server drops it.
SOCKET_TIMEOUT_S = 60


class _Handler(BaseHTTPRequestHandler):
    """Routes: ``GET /`` page, ``GET /api/info``, ``POST /api/predict``."""

    service: InferenceService  # set by make_server on a subclass
    server_version = "fiber-det"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S

    # -- answers -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Dict[str, Any]) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"status": status, "message": message}})

    def log_message(self, fmt: str, *args) -> None:  # route http.server's log to logging
        logger.debug("%s %s", self.address_string(), fmt % args)

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._guarded(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _guarded(self, route) -> None:
        try:
            route()
        except RequestError as e:
            self._error(e.status, e.message)
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client went away")
        except Exception:  # noqa: BLE001  a server must answer and go on, whatever happened
            logger.error(
                "internal error on %s %s\n%s", self.command, self.path, traceback.format_exc()
            )
            self._error(500, "internal error: see the server's log")

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, PAGE_HTML.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(200, self.service.info())
        elif path == "/api/predict":
            raise RequestError(405, "use POST /api/predict (see GET /api/info and docs)")
        else:
            raise RequestError(404, f"no such page: {path} (the page is at /, the API at /api/)")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "send a Content-Length header with the body")
        try:
            n = int(length)
        except ValueError:
            raise RequestError(400, f"bad Content-Length {length!r}") from None
        if n < 0:
            raise RequestError(400, f"bad Content-Length {length!r}")
        limit = self.service.limits.max_request_bytes
        if n > limit:
            raise RequestError(413, f"request of {n} bytes exceeds the limit of {limit} bytes")
        return self.rfile.read(n)

    def _parse(self) -> Tuple[Dict[str, Any], Optional[bytes]]:
        url = urlsplit(self.path)
        if url.path != "/api/predict":
            raise RequestError(404, f"no such endpoint: POST {url.path} (use /api/predict)")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = self._body()
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            return query, body
        if ctype not in ("application/json", ""):
            raise RequestError(
                415,
                f"Content-Type {ctype!r}: send application/json, or the image file itself "
                "(image/jpeg, image/png, ...) with ?caption=... or ?categories=a,b",
            )
        try:
            return json.loads(body.decode("utf-8")), None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(400, f"malformed JSON body: {e}") from None

    def _post(self) -> None:
        request, image = self._parse()
        self._json(200, self.service.predict(request, image))


def make_server(service: InferenceService, host: str = "127.0.0.1", port: int = 8000):
    """A ``ThreadingHTTPServer`` serving ``service`` (``port`` 0: a free port, see
    ``server.server_address``). Call ``serve_forever()``; ``shutdown()`` from another thread."""
    handler = type("FIBERHandler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
