"""The painter's model side: one generator behind a lock, and validated decoding of what the page
sends (base64 PNG labels of class ids, PNG/JPEG style images). Rendering and style encoding are
`jspade.inference`'s; the HTTP API around this is `jspade.painter.web`.

Bad input raises `ApiError` (a 4xx status and a message the page shows). Rendering is serialised by
a lock (other requests wait; beyond `max_pending` waiting renders they get 503), runs in eval mode
under `jt.no_grad()`, and is deterministic for (label, seed, style): the same image as
`inference.render` with `indices=[0]`.
"""
import base64
import binascii
import hashlib
import io
import statistics
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

from jspade.data.labels import LANDSCAPE_LABEL_NC, LANDSCAPE_NAMES, palette_for
from jspade.errors import UnsupportedRequest
from jspade.inference import (ClipChoice, ClipChoiceError, encode_style, load_generator, model_size, open_style_clip,
                              render, resolve_checkpoint)
from jspade.style_bank import project_text

MAX_LABEL_SIDE = 2048
# Request bodies fit the largest label map: MAX_LABEL_SIDE² 8-bit class ids as a PNG even with its
# pixels stored uncompressed (a filter byte per row, 5 bytes per 64 KB deflate block, < 4 KB of
# chunks), in base64 (4/3): 5.6 MB, and 10% for the JSON around it: 5.9 MB. (Style images share the
# limit: files up to about 4.4 MB.)
_LARGEST_LABEL_PNG = MAX_LABEL_SIDE * (MAX_LABEL_SIDE + 1) * 65541 // 65535 + 4096
MAX_BODY = _LARGEST_LABEL_PNG * 4 // 3 * 11 // 10
MAX_STYLE_SIDE = 4096
MAX_SEED = 2 ** 31 - 1
STYLE_CACHE_SIZE = 64
MAX_PENDING = 16                    # renders waiting for the model before new ones get 503
MAX_PROMPT_CHARS = 1000             # a CLIP prompt is at most 77 tokens anyway
TEXT_CACHE_SIZE = 64
THUMBNAIL_SIDE = 96                 # the style picker's medoid thumbnails

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


class Style(NamedTuple):
    """A style image as the model uses it: (mu, logvar) from the encoder, the photo at the model's
    size for a TSIT style stream, and its CLIP embedding for a CLIP model (when the painter has the
    CLIP weights); each None where the model has no such input."""
    code: Optional[tuple]
    photo: Optional[np.ndarray]
    clip: Optional[np.ndarray] = None


def training_image(checkpoint_path, stem):
    """The training photo `stem` of the run a checkpoint belongs to (its config.toml's data.root,
    contest layout or flat), or None when it cannot be found."""
    import tomllib
    run = Path(checkpoint_path).parent.parent
    try:
        root = tomllib.loads((run / "config.toml").read_text())["data"]["root"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    for base in (Path(root), run / root, Path.cwd() / root):
        for folder in (base / "imgs", base):
            for candidate in sorted(folder.glob(f"{stem}.*")) if folder.is_dir() else []:
                if candidate.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    return candidate
    return None


def thumbnail_data_url(path, side=THUMBNAIL_SIDE):
    """A JPEG data: URL of the image at `path` fitted into side x side."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class PainterApp:
    """One generator behind a lock, with validated decoding of what the page sends."""

    def __init__(self, model, opt, name="", log=None, max_pending=MAX_PENDING, clip_model=None, checkpoint_path=None):
        self.model, self.opt, self.name = model, opt, name
        self.size = model_size(opt)  # (w, h)
        self.num_ids = opt.label_nc + int(opt.contain_dontcare_label)
        self.classes = class_table(opt)
        # a CLIP model's styles: bank centres always; text prompts and photos through CLIP when the
        # painter was given the CLIP weights (checked against the bank's by from_checkpoint)
        self.clip_model = clip_model if model.uses_clip else None
        self.checkpoint_path = checkpoint_path
        self._texts = OrderedDict()  # prompt -> (embedding, [(stem, weight)])
        self.style_supported = model.takes_style_photos or self.clip_model is not None
        self.log = log or (lambda msg: None)
        self.max_pending = max_pending
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()  # pending count, style cache, timings
        self._pending = 0
        self._styles = OrderedDict()  # style id -> Style
        self._times = deque(maxlen=50)
        self.warmup_ms = None
        self.renders = 0

    @classmethod
    def from_checkpoint(cls, checkpoint, warmup=True, log=None, max_pending=MAX_PENDING, use_ema=True,
                        clip_weights=None):
        """`clip_weights` (a --clip-weights value) lets a CLIP model take text prompts and style photos
        through CLIP; ClipChoiceError (naming --clip-weights) for a model without CLIP or other weights
        than its style bank's."""
        _, path = resolve_checkpoint(checkpoint)
        model, opt = load_generator(checkpoint, use_ema=use_ema)
        clip_model = None
        if clip_weights is not None:
            if not model.uses_clip:
                raise ClipChoiceError(f"--clip-weights: {path} is not a CLIP model (model.clip_dim 0); it takes "
                                      "no CLIP styles")
            clip_model = open_style_clip(model, ClipChoice(weights=clip_weights))
        app = cls(model, opt, checkpoint_name(path), log=log, max_pending=max_pending, clip_model=clip_model,
                  checkpoint_path=path)
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
        bad = (label < 0) | (label >= self.num_ids)
        if bad.any():
            ids = np.unique(label[bad])
            listed = ", ".join(map(str, ids[:8].tolist())) + (" ..." if ids.size > 8 else "")
            raise ApiError(400, f"'{field}' holds class id {listed} ({int(bad.sum())} pixels); this model knows "
                                f"ids 0..{self.num_ids - 1}", code="bad_label")
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
            if self._pending >= self.max_pending:
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

    def require_style(self):
        """ApiError 400 unless a style image can change this model's output."""
        if self.clip_model is not None:
            return  # through CLIP
        try:
            self.model.require_style_photos()
        except UnsupportedRequest as error:
            hint = (" (a CLIP model takes style photos when the painter is started with --clip-weights)"
                    if self.model.uses_clip else "")
            raise ApiError(400, f"{error}{hint}", code="no_style") from None

    def _encode_style(self, rgb):
        """What a render needs of a style image: its code through the encoder, for a TSIT style
        stream the photo itself (kept at the model's size), and for a CLIP model its CLIP embedding."""
        code = None
        if self.model.has_encoder:
            mu, logvar = encode_style(self.model, self.opt, [rgb])
            code = (mu[0], logvar[0])
        photo = None
        if self.model.has_style_stream:
            photo = np.asarray(Image.fromarray(rgb).resize(self.size, Image.BICUBIC))
        clip = None
        if self.clip_model is not None:
            from jspade.clip.features import encode_images, normalize
            clip = normalize(encode_images(self.clip_model, [rgb]))[0]
        return Style(code, photo, clip)

    def _generate(self, label, seed, style, clip=None):
        style = style or Style(None, None)
        styles = None if style.code is None else tuple(a[None] for a in style.code)
        photos = None if style.photo is None else [style.photo]
        clip = style.clip if clip is None else clip
        return render(self.model, self.opt, [label], seed=seed, indices=[0], styles=styles, style_photos=photos,
                      clip=None if clip is None else clip[None])[0]

    # --- a CLIP model's styles ---
    def require_clip(self, field):
        if not self.model.uses_clip:
            raise ApiError(400, f"'{field}': this model has no CLIP modulation (model.clip_dim 0)", code="no_clip")

    def clip_centre(self, index, field="clip_style"):
        """Centre `index` of the style bank; 400 naming the range."""
        self.require_clip(field)
        bank = self.model.style_bank
        if bank is None:
            raise ApiError(400, f"'{field}': this checkpoint holds no style bank", code="no_clip")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < bank.k:
            raise ApiError(400, f"'{field}' must be a style centre 0..{bank.k - 1}, got {index!r}",
                           code="bad_clip_style")
        return bank.centre(index)

    def clip_text(self, text, field="clip_text"):
        """(embedding, [(stem, weight)]) of a prompt projected onto the training images; 400 when the
        painter has no CLIP weights or the prompt is empty or too long."""
        self.require_clip(field)
        if self.model.style_bank is None:
            raise ApiError(400, f"'{field}': this checkpoint holds no style bank to project a prompt onto",
                           code="no_clip")
        if self.clip_model is None:
            raise ApiError(400, "text prompts need the CLIP weights: start the painter with --clip-weights PATH",
                           code="no_clip_text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"'{field}' must be a non-empty prompt of at most {MAX_PROMPT_CHARS} characters",
                           code="bad_clip_text")
        with self._state_lock:
            if text in self._texts:
                self._texts.move_to_end(text)
                return self._texts[text]

        def encode():
            from jspade.clip.features import encode_text
            return encode_text(self.clip_model, [text])[0]
        try:
            encoded, _, _ = self._run(encode)
        except ValueError as error:  # over CLIP's 77 tokens
            raise ApiError(400, f"'{field}': {error}", code="bad_clip_text") from None
        embedding, stems, weights = project_text(encoded, self.model.style_bank)
        out = (embedding, [(stem, float(w)) for stem, w in zip(stems, weights)])
        with self._state_lock:
            self._texts[text] = out
            while len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        return out

    def clip_styles(self):
        """The style bank's centres for the picker: index, training images, medoid stem and its
        thumbnail (a data: URL, None when the training photo is not found)."""
        self.require_clip("clip styles")
        bank = self.model.style_bank
        if bank is None:
            return []
        out = []
        for k in range(bank.k):
            photo = training_image(self.checkpoint_path, bank.medoid_stems[k]) if self.checkpoint_path else None
            out.append({"index": k, "count": int(bank.counts[k]), "medoid": bank.medoid_stems[k],
                        "thumbnail": thumbnail_data_url(photo) if photo is not None else None})
        return out

    def add_style(self, rgb, style_id):
        """Encode a style image once and remember it under `style_id`."""
        self.require_style()
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
        self.require_style()
        with self._state_lock:
            code = self._styles.get(style_id)
            if code is not None:
                self._styles.move_to_end(style_id)
        if code is None:
            raise ApiError(400, f"unknown style id {style_id!r} (styles are forgotten when the server restarts); "
                                "upload the style image again", code="unknown_style")
        return code

    def render(self, label, seed=0, style=None, clip=None):
        """HxWx3 uint8 at the model's size, and (queue ms, render ms). `clip`: a CLIP model's embedding
        (else the style image's, else the training mean)."""
        image, wait_ms, run_ms = self._run(lambda: self._generate(label, seed, style, clip))
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
            "clip": {"supported": self.model.uses_clip,
                     "centres": self.model.style_bank.k if self.model.style_bank is not None else 0,
                     "text": self.clip_model is not None, "photos": self.clip_model is not None},
            "limits": {"max_body_bytes": MAX_BODY, "max_label_side": MAX_LABEL_SIDE,
                       "max_style_side": MAX_STYLE_SIDE, "max_seed": MAX_SEED},
            "timing": self.timing(),
        }


