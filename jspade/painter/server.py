"""The painter's web server: stdlib `ThreadingHTTPServer`, one page and a small JSON/PNG API.

    GET  /                   the page (index.html, painter.js, painter.css; everything local)
    GET  /api/info           classes (id, name, colour), model size, style support, checkpoint, timing
    POST /api/render         {"label": b64 PNG, "seed": int, "style_id"|"style_image": ...} -> image/png
    POST /api/style          {"image": b64 PNG/JPEG} -> {"style_id", "width", "height"}  (VAE models)
    POST /api/label/import   {"label": b64 PNG} -> {"width", "height", "classes", "ids", "png"}

Every request is validated and bad input is answered with a 4xx and `{"error": "..."}`: bodies are
JSON (`Content-Type: application/json`, at most 8 MB), labels are PNGs holding one channel of class
ids 0..label_nc-1 at most 2048x2048, style images are PNG or JPEG at most 4096x4096. A 500 means a
bug. Rendering is serialised per model by a lock (other requests wait; beyond a queue limit they
get 503), runs in eval mode under `jt.no_grad()`, and is deterministic for (label, seed, style).
"""
import base64
import binascii
import hashlib
import io
import ipaddress
import json
import socket
import statistics
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from jspade.runtime import jt
from jspade.data.labels import LANDSCAPE_LABEL_NC, LANDSCAPE_NAMES, palette_for
from jspade.data.semantics import model_label_id_problem, semantics_for
from jspade.inference import label_tensor, load_generator, model_size, noise_for, resolve_checkpoint

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

MAX_BODY = 8 * 1024 * 1024          # request bodies (base64 inflates files by 4/3)
DRAIN_LIMIT = 64 * 1024 * 1024      # larger bodies are not read at all: the connection is closed
MAX_LABEL_SIDE = 2048
MAX_STYLE_SIDE = 4096
MAX_SEED = 2 ** 31 - 1
STYLE_CACHE_SIZE = 64
MAX_PENDING = 16                    # renders waiting for the model before new ones get 503
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Modes PIL gives a PNG of integer ids: 1/2/4/8-bit grey, palette indices, 16-bit grey.
LABEL_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}


class ApiError(Exception):
    """Bad input: answered with `status` and `{"error": message}` (plus `code` for the page)."""

    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _sniff(data):
    """A human name for what some bytes look like (for 'expected PNG, got ...' messages)."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    for magic, name in ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                        (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP")):
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    head = data[:64].lstrip()
    if head[:1] in (b"{", b"["):
        return "JSON/text"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return "unknown binary data"


def _mb(n):
    return f"{n / 1024 / 1024:.1f} MB"


def decode_base64(value, field):
    """A base64 string (a `data:` URL is accepted too) -> bytes, or a 400 naming the field."""
    if not isinstance(value, str):
        raise ApiError(400, f"'{field}' must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        head, sep, value = value.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, f"'{field}' is a data: URL without ';base64,' data")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"'{field}' is not valid base64") from None
    if not data:
        raise ApiError(400, f"'{field}' is empty")
    return data


def open_image_bytes(data, what, formats, max_side):
    """Open (header only) an image of one of `formats`, refusing other types (415) and sizes (400)."""
    kind = _sniff(data)
    if kind not in formats:
        raise ApiError(415, f"{what} must be {' or '.join(formats)}; the data looks like {kind}",
                       code="unsupported_type")
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        raise ApiError(400, f"{what} is not a readable {kind} ({type(error).__name__}: {error})") from None
    w, h = image.size
    if not (1 <= w <= max_side and 1 <= h <= max_side):
        raise ApiError(400, f"{what} is {w}x{h}; at most {max_side}x{max_side} is accepted", code="too_big")
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data
        raise ApiError(400, f"{what} could not be decoded ({type(error).__name__}: {error})") from None
    return image


def encode_png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def class_table(opt):
    """[{id, name, color}] for every id the model accepts (the dontcare id last, when the model has it)."""
    names = LANDSCAPE_NAMES if opt.label_nc == LANDSCAPE_LABEL_NC else [f"class {i}" for i in range(opt.label_nc)]
    palette = palette_for(opt.label_nc)
    table = [{"id": i, "name": names[i], "color": [int(c) for c in palette[i]]} for i in range(opt.label_nc)]
    if opt.contain_dontcare_label:
        table.append({"id": opt.label_nc, "name": "dontcare", "color": [0, 0, 0]})
    return table


def checkpoint_name(path):
    """'run/latest.pkl' for a run's checkpoint, the file or folder name otherwise."""
    path = Path(path)
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def default_checkpoint(results_dir):
    """The newest `results/*/checkpoints/latest.pkl` (what `bash run.sh train` writes), or None."""
    found = [p for p in Path(results_dir).glob("*/checkpoints/latest.pkl") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class PainterApp:
    """One generator behind a lock, with validated decoding of what the page sends."""

    def __init__(self, model, opt, name="", log=None):
        self.model, self.opt, self.name = model, opt, name
        self.size = model_size(opt)  # (w, h)
        self.num_ids = opt.num_label_ids
        self.classes = class_table(opt)
        self.style_supported = bool(opt.use_vae and model.netE is not None)
        self.log = log or (lambda msg: None)
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()  # pending count, style cache, timings
        self._pending = 0
        self._styles = OrderedDict()  # style id -> (mu, logvar) float32 arrays
        self._times = deque(maxlen=50)
        self.warmup_ms = None
        self.renders = 0

    @classmethod
    def from_checkpoint(cls, checkpoint, warmup=True, log=None):
        _, path = resolve_checkpoint(checkpoint)
        model, opt = load_generator(checkpoint)
        app = cls(model, opt, checkpoint_name(path), log=log)
        if warmup:
            app.warmup()
        return app

    # --- decoding ---
    def decode_label(self, value, field="label"):
        """Base64 PNG of class ids -> int32 HxW, checked: PNG, one channel, size, ids in range."""
        data = decode_base64(value, field)
        image = open_image_bytes(data, f"'{field}'", ("PNG",), MAX_LABEL_SIDE)
        if image.mode not in LABEL_MODES:
            hint = ("it has an alpha channel; save it without transparency" if "A" in image.mode else
                    "colour-coded maps must be converted to class ids first")
            raise ApiError(400, f"'{field}' is a {image.mode} image; a label must be a single-channel (8- or "
                                f"16-bit grayscale) PNG of class ids ({hint})", code="bad_label")
        label = np.asarray(image).astype(np.int32)
        if label.ndim != 2:
            raise ApiError(400, f"'{field}' decodes to shape {label.shape}, not a single-channel map", code="bad_label")
        problem = model_label_id_problem(label, self.opt)
        if problem:
            raise ApiError(400, f"'{field}': {problem}", code="bad_label")
        return label

    @staticmethod
    def decode_style_image(value, field="style_image"):
        """Base64 PNG/JPEG -> (HxWx3 uint8 RGB, sha256 of the bytes)."""
        data = decode_base64(value, field)
        image = open_image_bytes(data, f"'{field}'", ("PNG", "JPEG"), MAX_STYLE_SIDE)
        if image.mode.startswith("I"):  # 16/32-bit grey: keep the high byte of 16-bit values
            grey = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            rgb = np.asarray(image.convert("RGB"))
        return rgb, hashlib.sha256(data).hexdigest()[:24]

    # --- the model (all Jittor work happens under the lock) ---
    def _run(self, fn):
        with self._state_lock:
            if self._pending >= MAX_PENDING:
                raise ApiError(503, f"the painter is busy ({self._pending} renders waiting); try again shortly",
                               code="busy", headers={"Retry-After": "1"})
            self._pending += 1
        try:
            t0 = time.perf_counter()
            with self._model_lock:
                t1 = time.perf_counter()
                out = fn()
                t2 = time.perf_counter()
            return out, (t1 - t0) * 1000, (t2 - t1) * 1000
        finally:
            with self._state_lock:
                self._pending -= 1

    def _encode_style(self, rgb):
        w, h = self.size
        arr = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC), np.float32)
        x = jt.array(arr.transpose(2, 0, 1)[None] / 127.5 - 1.0)
        with jt.no_grad():
            mu, logvar = self.model.netE(x)
            return mu.numpy()[0].copy(), logvar.numpy()[0].copy()

    def add_style(self, rgb, style_id):
        """Encode a style image once and remember its (mu, logvar) under `style_id`."""
        if not self.style_supported:
            raise ApiError(400, "this model has no style encoder (it was trained without use_vae): "
                                "style images cannot be used", code="no_style")
        with self._state_lock:
            if style_id in self._styles:
                self._styles.move_to_end(style_id)
                return self._styles[style_id]
        code, _, _ = self._run(lambda: self._encode_style(rgb))
        with self._state_lock:
            self._styles[style_id] = code
            while len(self._styles) > STYLE_CACHE_SIZE:
                self._styles.popitem(last=False)
        return code

    def get_style(self, style_id):
        if not self.style_supported:
            raise ApiError(400, "this model has no style encoder (use_vae is off): a style cannot be used",
                           code="no_style")
        with self._state_lock:
            code = self._styles.get(style_id)
            if code is not None:
                self._styles.move_to_end(style_id)
        if code is None:
            raise ApiError(400, f"unknown style id {style_id!r} (styles are forgotten when the server restarts); "
                                "upload the style image again", code="unknown_style")
        return code

    def _generate(self, label, seed, style):
        opt = self.opt
        sem = semantics_for(opt, label_tensor([label], self.size))
        z = None
        if opt.use_vae:
            noise = jt.array(noise_for(seed, 0, 0, opt.z_dim)[None])
            if style is not None:
                mu, logvar = (jt.array(a[None]) for a in style)
                z = noise * jt.exp(0.5 * logvar) + mu  # as jspade.inference.render does with a reference
            else:
                z = noise
        with jt.no_grad():
            fake = self.model.netG(sem, z=z)
            out = fake.numpy()
        return np.clip((out[0] + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)

    def render(self, label, seed=0, style=None):
        """HxWx3 uint8 at the model's size, and (queue ms, render ms)."""
        image, wait_ms, run_ms = self._run(lambda: self._generate(label, seed, style))
        with self._state_lock:
            self._times.append(run_ms)
            self.renders += 1
        self.log(f"render {self.size[0]}x{self.size[1]} seed {seed}{' +style' if style is not None else ''}: "
                 f"{run_ms:.0f} ms (waited {wait_ms:.0f} ms)")
        return image, wait_ms, run_ms

    def warmup(self, timed=3):
        """One render (and one style encoding) so that Jittor compiles its kernels before the first user,
        then `timed` renders whose latency /api/info reports."""
        w, h = self.size
        label = np.zeros((h, w), np.int32)
        label[h // 2:] = min(1, self.num_ids - 1)
        t0 = time.perf_counter()
        style = None
        if self.style_supported:
            style, _, _ = self._run(lambda: self._encode_style(np.full((h, w, 3), 128, np.uint8)))
        self._run(lambda: self._generate(label, 0, style))
        self._run(lambda: self._generate(label, 0, None))
        self.warmup_ms = (time.perf_counter() - t0) * 1000
        self.log(f"warm-up (kernel compilation) took {self.warmup_ms / 1000:.1f} s")
        for seed in range(timed):  # latency samples for /api/info
            self.render(label, seed, style)

    def timing(self):
        with self._state_lock:
            times = list(self._times)
        return {"renders": self.renders,
                "last_ms": round(times[-1], 1) if times else None,
                "median_ms": round(statistics.median(times), 1) if times else None,
                "warmup_ms": None if self.warmup_ms is None else round(self.warmup_ms, 1)}

    def info(self):
        w, h = self.size
        names = [c["name"] for c in self.classes]
        return {
            "checkpoint": self.name,
            "model_size": {"width": w, "height": h},
            "label_nc": self.opt.label_nc,
            "num_ids": self.num_ids,
            "classes": self.classes,
            "background_class": names.index("sky") if "sky" in names else 0,
            "style_supported": self.style_supported,
            "limits": {"max_body_bytes": MAX_BODY, "max_label_side": MAX_LABEL_SIDE,
                       "max_style_side": MAX_STYLE_SIDE, "max_seed": MAX_SEED},
            "timing": self.timing(),
        }


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
        """Loopback servers answer only loopback Host/Origin names (a guard against DNS rebinding)."""
        if not self.server.loopback:
            return True
        name = urlsplit("//" + host).hostname if host else None
        return name in LOOPBACK_NAMES

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
            raise ApiError(413, f"the request body is {_mb(length)}; at most {_mb(MAX_BODY)} is accepted "
                                "(images up to about 6 MB)", code="too_big")
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
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "malformed JSON: the body is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise ApiError(400, f"malformed JSON: {error}") from None
        except RecursionError:
            raise ApiError(400, "malformed JSON: nested too deeply") from None

    def _dispatch(self, method):
        t0 = time.perf_counter()
        self._status = None
        self._body = b""
        path = urlsplit(self.path).path
        try:
            body_error = None
            if method == "POST" or self.headers.get("Content-Length") not in (None, "0"):
                try:
                    self._body = self._read_body()
                except ApiError as error:
                    body_error = error
            if not self._allowed_host(self.headers.get("Host", "")):
                raise ApiError(403, f"Host {self.headers.get('Host')!r} is not served here; open the page via "
                                    f"{self.server.url}")
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
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - a bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            if self._status is None:
                self.close_connection = True
                self._send_json(500, {"error": f"internal error ({type(error).__name__}: {error}); see the "
                                               "server log"})
        self.app.log(f"{method} {path} {self._status} {(time.perf_counter() - t0) * 1000:.0f} ms")

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
        _fields(body, ("label",), ("seed", "style_id", "style_image"))
        seed = _seed(body)
        if body.get("style_id") is not None and body.get("style_image") is not None:
            raise ApiError(400, "give either 'style_id' or 'style_image', not both")
        label = self.app.decode_label(body["label"])
        style, style_id = None, None
        if body.get("style_id") is not None:
            style_id = body["style_id"]
            if not isinstance(style_id, str) or not 1 <= len(style_id) <= 64:
                raise ApiError(400, "'style_id' must be the id string /api/style returned")
            style = self.app.get_style(style_id)
        elif body.get("style_image") is not None:
            if not self.app.style_supported:
                raise ApiError(400, "this model has no style encoder (use_vae is off): a style image cannot "
                                    "be used", code="no_style")
            rgb, style_id = self.app.decode_style_image(body["style_image"])
            style = self.app.add_style(rgb, style_id)
        image, wait_ms, run_ms = self.app.render(label, seed, style)
        headers = {"X-Render-Ms": f"{run_ms:.1f}", "X-Queue-Ms": f"{wait_ms:.1f}", "X-Seed": str(seed)}
        if style_id:
            headers["X-Style-Id"] = style_id
        self._send(200, encode_png(image), "image/png", headers)

    def api_style(self):
        body = self._json_body()
        _fields(body, ("image",), ())
        if not self.app.style_supported:
            raise ApiError(400, "this model has no style encoder (it was trained without use_vae): style "
                                "images cannot be used", code="no_style")
        rgb, style_id = self.app.decode_style_image(body["image"], "image")
        self.app.add_style(rgb, style_id)
        self._send_json(200, {"style_id": style_id, "width": rgb.shape[1], "height": rgb.shape[0]})

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
              "/api/info": Handler.api_info}
POST_ROUTES = {"/api/render": Handler.api_render, "/api/style": Handler.api_style,
               "/api/label/import": Handler.api_label_import}


class PainterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app, host="127.0.0.1", port=0):
        self.app = app
        try:
            self.loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.loopback = host == "localhost"
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def make_server(app, host="127.0.0.1", port=0):
    """A PainterServer bound to (host, port) (port 0: a free one; see `.url`). Call serve_forever()."""
    return PainterServer(app, host, port)
