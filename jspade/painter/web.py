"""The painter's HTTP side: a stdlib `ThreadingHTTPServer` serving one page and a small JSON/PNG API
around a `PainterApp` (jspade.painter.app, which holds the model).

    GET  /                   the page (index.html, painter.js, painter.css; everything local)
    GET  /api/info           classes (id, name, colour), model size, style support, checkpoint, timing
    POST /api/render         {"label": b64 PNG, "seed": int, "style_id"|"style_image": ...} -> image/png
    POST /api/style          {"image": b64 PNG/JPEG} -> {"style_id", "width", "height"}  (VAE models)
    POST /api/label/import   {"label": b64 PNG} -> {"width", "height", "classes", "ids", "png"}
    GET  /api/clip/styles    a CLIP model's style bank: [{"index", "count", "medoid", "thumbnail"}]
  A CLIP model's render also takes "clip_style": K (a bank centre) or "clip_text": "..." (with
  --clip-weights; X-Clip-Neighbours names the training images it was projected onto); with
  --clip-weights a style image goes through CLIP.

Every request is validated and bad input is answered with a 4xx and `{"error": "..."}`: bodies are
JSON (`Content-Type: application/json`, at most MAX_BODY: what the largest label map needs; nested
at most MAX_JSON_DEPTH deep, measured in one linear pass before parsing, since Jittor raises Python's
recursion limit to 10^6 and a deeply nested body would overflow the C stack inside `json.loads`),
labels are PNGs holding one channel of class ids at most 2048x2048, style images are PNG or JPEG at
most 4096x4096. A 500 means a bug. Under load, requests beyond the render queue, or beyond
MAX_CONNECTIONS open connections, get 503 with Retry-After. A client that drops its connection costs
one log line, no traceback.

Only requests whose Host (and Origin, when sent) name this server are answered (a guard against DNS
rebinding and other sites' pages): loopback names, and on a non-loopback bind also this machine's
host name, the address the request arrived on, and names given with `allow_hosts` (--allow-origin).
"""
import base64
import ipaddress
import json
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

from jspade.painter.app import MAX_BODY, MAX_LABEL_SIDE, MAX_SEED, ApiError, encode_png
from jspade.safe_load import json_depth

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/painter.js": ("painter.js", "text/javascript; charset=utf-8"),
    "/painter.css": ("painter.css", "text/css; charset=utf-8"),
}
# The page loads nothing from elsewhere; the policy makes sure of it.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

DRAIN_LIMIT = 64 * 1024 * 1024      # larger bodies are not read at all: the connection is closed
MAX_JSON_DEPTH = 16                 # the API's bodies are flat objects
MAX_CONNECTIONS = 64                # open connections (one thread each) before new ones get 503
LISTEN_BACKLOG = 128                # connections the kernel queues while the server is busy
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# A client that went away (reset, closed, or stalled past Handler.timeout): nothing to answer.
CLIENT_GONE = (ConnectionError, TimeoutError)


def _mb(n):
    return f"{n / 1024 / 1024:.1f} MB"


def is_loopback(host):
    """Whether a bind address only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def host_name(value):
    """The lower-case host of a Host header, an Origin, a URL or a bare name ('[::1]:80' -> '::1')."""
    value = value.strip()
    if not value:
        return None
    try:
        return urlsplit(value if "//" in value else "//" + value).hostname
    except ValueError:
        return None


def _same_address(name, address):
    """Whether host name `name` is the IP literal `address` (IPv4-mapped IPv6 addresses included)."""
    try:
        a, b = ipaddress.ip_address(name), ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    a = getattr(a, "ipv4_mapped", None) or a
    b = getattr(b, "ipv4_mapped", None) or b
    return a == b


# --- request field checks ---
def _fields(body, required, optional):
    if not isinstance(body, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected "
                            f"{', '.join(list(required) + list(optional))}")
    missing = [k for k in required if k not in body]
    if missing:
        raise ApiError(400, f"missing field(s) {', '.join(map(repr, missing))}")


def _seed(body):
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ApiError(400, f"'seed' must be an integer, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"'seed' must be within 0..{MAX_SEED}, got {seed}")
    return seed


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "jspade-painter/0.1"
    timeout = 60  # seconds a client may stall mid-request

    # --- plumbing ---
    @property
    def app(self):
        return self.server.app

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        self.app.log(f"{self.address_string()} {format % args}")

    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _dispatch, with its duration

    def _send(self, status, body, content_type, headers=None):
        self._answering = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def _send_json(self, status, obj, headers=None):
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8", headers)

    def send_error(self, code, message=None, explain=None):
        """The base class's errors (bad request line, oversized headers, unknown method) as JSON too."""
        self.close_connection = True
        if code == 501:  # an unknown method is the client's mistake
            code, message = 405, f"method {self.command!r} is not supported; use GET or POST"
        text = message or HTTPStatus(code).phrase
        try:
            self._send_json(code, {"error": text + (f" ({explain})" if explain else "")})
        except OSError:
            pass

    def _allowed_host(self, host):
        """Whether a Host/Origin names this server (a guard against DNS rebinding): an allowed name,
        or the IP address this connection arrived on."""
        name = host_name(host) if host else None
        if name is None:
            return False
        if name in self.server.allowed_hosts:
            return True
        return not self.server.loopback and _same_address(name, self.connection.getsockname()[0])

    def _read_body(self):
        """The request body (bytes); errors are raised only after the body has been drained."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not accepted; send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {length!r}") from None
        if length > MAX_BODY:
            if length > DRAIN_LIMIT:
                self.close_connection = True
            else:
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise ApiError(413, f"the request body is {_mb(length)}; at most {_mb(MAX_BODY)} is accepted (a "
                                f"label map up to {MAX_LABEL_SIDE}x{MAX_LABEL_SIDE}, image files up to about "
                                f"{_mb(MAX_BODY * 3 // 4)})", code="too_big")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise ApiError(400, "the request body ended early")
        return body

    def _json_body(self):
        body = self._body
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"the request must be JSON (Content-Type: application/json), got "
                                f"{ctype or 'no Content-Type'}", code="unsupported_type")
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:  # refused before json.loads can recurse into it
            raise ApiError(400, f"malformed JSON: nested {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "malformed JSON: the body is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise ApiError(400, f"malformed JSON: {error}") from None

    def _dispatch(self, method):
        t0 = time.perf_counter()
        self._status = self._answering = None
        self._body = b""
        path = urlsplit(self.path).path
        try:
            self._respond(method, path)
            outcome = self._status
        except CLIENT_GONE as error:  # one line below, no traceback
            self.close_connection = True
            outcome = f"{self._answering or '-'} not sent: the client went away ({type(error).__name__})"
        self.app.log(f"{method} {path} {outcome} {(time.perf_counter() - t0) * 1000:.0f} ms")

    def _respond(self, method, path):
        try:
            body_error = None
            if method == "POST" or self.headers.get("Content-Length") not in (None, "0"):
                try:
                    self._body = self._read_body()
                except ApiError as error:
                    body_error = error
            if not self._allowed_host(self.headers.get("Host", "")):
                raise ApiError(403, f"Host {self.headers.get('Host')!r} is not served here; open the page via "
                                    f"{self.server.url} (or start the painter with --allow-origin NAME)")
            origin = self.headers.get("Origin")
            if method == "POST" and origin and origin != "null" and not self._allowed_host(urlsplit(origin).netloc):
                raise ApiError(403, f"requests from {origin} are not accepted")
            routes = GET_ROUTES if method in ("GET", "HEAD") else POST_ROUTES if method == "POST" else {}
            route = routes.get(path)
            if route is None:
                allowed = [m for m, r in (("GET", GET_ROUTES), ("POST", POST_ROUTES)) if path in r]
                if allowed:
                    raise ApiError(405, f"{path} accepts {' and '.join(allowed)} only, not {method}",
                                   headers={"Allow": ", ".join(allowed)})
                raise ApiError(404, f"no such endpoint: {method} {path}")
            if body_error is not None:
                raise body_error
            route(self)
        except ApiError as error:
            payload = {"error": error.message}
            if error.code:
                payload["code"] = error.code
            self._send_json(error.status, payload, error.headers)
        except CLIENT_GONE:
            raise
        except Exception as error:  # noqa: BLE001 - a bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            if self._status is None:
                self.close_connection = True
                self._send_json(500, {"error": f"internal error ({type(error).__name__}: {error}); see the "
                                               "server log"})

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_OPTIONS(self):  # no CORS: other origins get no preflight approval
        self._dispatch("OPTIONS")

    # --- routes ---
    def static(self):
        name, ctype = STATIC_FILES[urlsplit(self.path).path]
        try:
            body = (STATIC_DIR / name).read_bytes()
        except OSError:
            raise ApiError(404, f"{name} is missing from {STATIC_DIR}") from None
        headers = {"Content-Security-Policy": PAGE_CSP} if name.endswith(".html") else {}
        self._send(200, body, ctype, headers)

    def favicon(self):
        self._send(204, b"", "image/x-icon")

    def api_info(self):
        info = self.app.info()
        info["url"] = self.server.url
        self._send_json(200, info)

    def api_render(self):
        body = self._json_body()
        _fields(body, ("label",), ("seed", "style_id", "style_image", "clip_style", "clip_text"))
        seed = _seed(body)
        if body.get("style_id") is not None and body.get("style_image") is not None:
            raise ApiError(400, "give either 'style_id' or 'style_image', not both")
        if body.get("clip_style") is not None and body.get("clip_text") is not None:
            raise ApiError(400, "give either 'clip_style' or 'clip_text', not both")
        label = self.app.decode_label(body["label"])
        clip, clip_headers = None, {}
        if body.get("clip_style") is not None:
            clip = self.app.clip_centre(body["clip_style"])
            clip_headers["X-Clip-Style"] = str(body["clip_style"])
        elif body.get("clip_text") is not None:
            clip, neighbours = self.app.clip_text(body["clip_text"])
            clip_headers["X-Clip-Neighbours"] = ",".join(f"{quote(stem)}:{weight:.3f}" for stem, weight in neighbours)
        style, style_id = None, None
        if body.get("style_id") is not None:
            style_id = body["style_id"]
            if not isinstance(style_id, str) or not 1 <= len(style_id) <= 64:
                raise ApiError(400, "'style_id' must be the id string /api/style returned")
            style = self.app.get_style(style_id)
        elif body.get("style_image") is not None:
            self.app.require_style()
            rgb, style_id = self.app.decode_style_image(body["style_image"])
            style = self.app.add_style(rgb, style_id)
        image, wait_ms, run_ms = self.app.render(label, seed, style, clip)
        headers = {"X-Render-Ms": f"{run_ms:.1f}", "X-Queue-Ms": f"{wait_ms:.1f}", "X-Seed": str(seed), **clip_headers}
        if style_id:
            headers["X-Style-Id"] = style_id
        self._send(200, encode_png(image), "image/png", headers)

    def api_style(self):
        body = self._json_body()
        _fields(body, ("image",), ())
        self.app.require_style()
        rgb, style_id = self.app.decode_style_image(body["image"], "image")
        self.app.add_style(rgb, style_id)
        self._send_json(200, {"style_id": style_id, "width": rgb.shape[1], "height": rgb.shape[0]})

    def api_clip_styles(self):
        self._send_json(200, {"centres": self.app.clip_styles()})

    def api_label_import(self):
        body = self._json_body()
        _fields(body, ("label",), ())
        label = self.app.decode_label(body["label"])
        h, w = label.shape
        dtype = np.uint8 if self.app.num_ids <= 256 else np.uint16
        ids = label.astype(dtype)
        self._send_json(200, {
            "width": w, "height": h,
            "classes": np.unique(label).tolist(),
            "dtype": np.dtype(dtype).name,  # of `ids`: raw row-major values (uint16 little-endian)
            "ids": base64.b64encode(ids.astype(ids.dtype.newbyteorder("<")).tobytes()).decode(),
            "png": base64.b64encode(encode_png(ids)).decode(),  # the contest format (8-bit grey ids)
        })


GET_ROUTES = {**{p: Handler.static for p in STATIC_FILES}, "/favicon.ico": Handler.favicon,
              "/api/info": Handler.api_info, "/api/clip/styles": Handler.api_clip_styles}
POST_ROUTES = {"/api/render": Handler.api_render, "/api/style": Handler.api_style,
               "/api/label/import": Handler.api_label_import}


class PainterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, app, host="127.0.0.1", port=0, allow_hosts=(), max_connections=MAX_CONNECTIONS):
        self.app = app
        self.loopback = is_loopback(host)
        self.max_connections = max_connections
        self._connections = 0
        self._connections_lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.allowed_hosts = set(LOOPBACK_NAMES)
        if not self.loopback:
            for name in (host, socket.gethostname(), socket.getfqdn()):
                self.allowed_hosts.add(host_name(name))
            self.allowed_hosts -= {None, "0.0.0.0", "::"}  # wildcard binds are not names of this server
        for name in allow_hosts:
            if host_name(name) is None:
                raise ValueError(f"--allow-origin {name!r} is not a host name or URL")
            self.allowed_hosts.add(host_name(name))
        super().__init__((host, port), Handler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def exposure_warning(self):
        """What a non-loopback bind exposes (None on loopback)."""
        if self.loopback:
            return None
        host, port = self.server_address[:2]
        names = ", ".join(sorted(self.allowed_hosts - LOOPBACK_NAMES)) or "none"
        return (f"warning: the painter listens on {host} port {port} without authentication: anyone who can "
                f"reach this machine can use the page and the model {self.app.name!r} (renders, style "
                f"uploads). Host names served besides loopback: {names}, and the address a request arrives "
                "on; add others with --allow-origin NAME.")

    # One thread per connection, up to max_connections; beyond that an immediate 503.
    def process_request(self, request, client_address):
        with self._connections_lock:
            busy = self._connections >= self.max_connections
            if not busy:
                self._connections += 1
        if busy:
            self._refuse_busy(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        """A client gone between requests (e.g. reset while its next request line was awaited) is one
        log line; anything else is a bug and keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_GONE):
            self.app.log(f"{client_address[0]} connection dropped ({type(error).__name__})")
        else:
            super().handle_error(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections -= 1

    def _refuse_busy(self, request):
        body = json.dumps({"error": f"the painter is busy ({self.max_connections} open connections); try again "
                                   "shortly", "code": "busy"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(1)
            request.sendall(head + body)
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
            while request.recv(1 << 16):  # what the client already sent, so that closing sends no reset
                pass
        except OSError:
            pass


def make_server(app, host="127.0.0.1", port=0, allow_hosts=()):
    """A PainterServer bound to (host, port) (port 0: a free one; see `.url`). Call serve_forever().
    `allow_hosts`: further Host/Origin names to answer (e.g. a DNS alias of this machine)."""
    return PainterServer(app, host, port, allow_hosts)
