"""Rendering label maps with a trained generator: loading it from any checkpoint kind, checking
labels before anything is written, per-label deterministic noise, and style from a reference photo
through the VAE encoder (the 2023 track's label_to_img.json)."""
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from jspade.runtime import jt
from jspade.checkpoint import CheckpointError, import_pytorch_checkpoint, load_state_strict, read_checkpoint
from jspade.config import Config, ModelConfig
from jspade.data.io import DataError, read_image, read_label
from jspade.data.semantics import semantics_for
from jspade.models.encoder import reparameterize
from jspade.models.spade_model import SPADEModel, has_style_stream

LABEL_SUFFIXES = (".png",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def resolve_checkpoint(path):
    """('jspade', file) for our checkpoints (a file, or a run folder -> its latest), or
    ('pytorch', folder) for the original repository's `<folder>/latest_net_G.pth`."""
    path = Path(path)
    if path.is_dir():
        if (path / "checkpoints" / "latest.pkl").is_file():
            return "jspade", path / "checkpoints" / "latest.pkl"
        if (path / "latest.pkl").is_file():
            return "jspade", path / "latest.pkl"
        if (path / "latest_net_G.pth").is_file():
            return "pytorch", path
        raise CheckpointError(f"{path} holds neither a jspade run (checkpoints/latest.pkl) nor an original "
                              "SPADE checkpoint folder (latest_net_G.pth)")
    if path.suffix == ".pth" and path.is_file():
        return "pytorch", path.parent
    if path.is_file():
        return "jspade", path
    raise CheckpointError(f"no checkpoint at {path}")


def read_original_options(folder):
    """Model options from the original repository's `opt.txt` ('name: value [default: ...]' lines)."""
    path = Path(folder) / "opt.txt"
    if not path.is_file():
        return {}
    types = {f.name: type(getattr(ModelConfig(), f.name)) for f in fields(ModelConfig)}
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        key, value = key.strip(), value.split("[default")[0].strip()
        if key in types:
            kind = types[key]
            out[key] = (value == "True") if kind is bool else kind(value)
    return out


def load_generator(checkpoint, model_overrides=None, use_ema=True):
    """(model, ModelConfig) in eval mode, G (and E when the model has the VAE) loaded strictly.
    A jspade checkpoint's EMA weights ("ema_networks") are used when present, unless `use_ema` is
    False; `model.weights` says which were loaded ("ema" or "raw")."""
    kind, path = resolve_checkpoint(checkpoint)
    payload = read_checkpoint(path) if kind == "jspade" else None
    if kind == "jspade":
        opt = Config.from_dict(payload["config"]).model
    else:
        opt = ModelConfig.from_dict(read_original_options(path))
    for k, v in (model_overrides or {}).items():
        setattr(opt, k, v)
    model = SPADEModel(opt, with_discriminator=False, with_vgg=False)
    model.weights = "raw"
    if kind == "jspade":
        networks = payload["networks"]
        if use_ema and payload.get("ema_networks"):
            networks, model.weights = payload["ema_networks"], "ema"
        for name, net in model.networks().items():
            if name not in networks:
                raise CheckpointError(f"{path} holds no {model.weights} weights for net{name}")
            load_state_strict(net, networks[name], source=f"{path} [{model.weights} {name}]")
    else:
        import_pytorch_checkpoint(model, path)
    model.eval()
    return model, opt


def model_size(opt):
    """(width, height) the generator renders."""
    return opt.crop_size, round(opt.crop_size / opt.aspect_ratio)


def list_labels(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"label folder {folder} does not exist", folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in LABEL_SUFFIXES)


def check_labels(paths, opt):
    """Read every label; return (arrays, problems) where problems lists (path, reason) for each bad file."""
    n = opt.label_nc + int(opt.contain_dontcare_label)
    arrays, problems = {}, []
    for p in paths:
        try:
            label = read_label(p)
        except DataError as e:
            problems.append((p, str(e)))
            continue
        bad = np.unique(label[(label < 0) | (label >= n)])
        if bad.size:
            problems.append((p, f"class id {', '.join(map(str, bad[:8].tolist()))} out of range 0..{n - 1}"))
            continue
        arrays[p] = label
    return arrays, problems


def style_references(label_paths, style_dir=None, label_to_img=None, style_root=None):
    """{label path: reference image path}: same stem in `style_dir`, or the JSON map (keys and values
    may be file names with or without extension) resolved under `style_root`. Missing -> error naming it."""
    if style_dir is None and label_to_img is None:
        return {}
    refs, missing = {}, []
    if style_dir is not None:
        index = {p.stem: p for p in Path(style_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for lp in label_paths:
            if lp.stem in index:
                refs[lp] = index[lp.stem]
            else:
                missing.append(lp.name)
    else:
        mapping = json.loads(Path(label_to_img).read_text())
        by_stem = {Path(k).stem: v for k, v in mapping.items()}
        root = Path(style_root) if style_root else Path(label_to_img).parent
        for lp in label_paths:
            target = by_stem.get(lp.stem)
            if target is None:
                missing.append(lp.name)
                continue
            ref = root / target
            if not ref.is_file():
                matches = [q for q in root.glob(Path(target).stem + ".*") if q.suffix.lower() in IMAGE_SUFFIXES]
                ref = matches[0] if matches else ref
            if ref.is_file():
                refs[lp] = ref
            else:
                missing.append(f"{lp.name} -> {ref}")
    if missing:
        raise DataError(f"no reference image for {len(missing)} label(s): {', '.join(map(str, missing[:10]))}"
                        + (" ..." if len(missing) > 10 else ""))
    return refs


def label_tensor(labels, size):
    """Label arrays -> int32 [B,1,H,W] at the model's size (nearest)."""
    w, h = size
    out = [np.asarray(Image.fromarray(l.astype(np.int32)).resize((w, h), Image.NEAREST)) for l in labels]
    return jt.array(np.stack(out)[:, None].astype(np.int32))


def photo_tensor(photos, size):
    """HxWx3 uint8 RGB arrays -> float32 [B,3,H,W] in [-1, 1] at the model's size (bicubic)."""
    arrs = [np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC), np.float32) for photo in photos]
    return jt.array(np.stack(arrs).transpose(0, 3, 1, 2) / 127.5 - 1.0)


class StyleUnsupported(ValueError):
    """A style image was given to a model without the VAE style encoder."""


def has_style_encoder(model, opt):
    return bool(opt.use_vae and model.netE is not None)


def require_style_encoder(model, opt):
    if not has_style_encoder(model, opt):
        raise StyleUnsupported("this model has no style encoder (it was trained without use_vae): "
                               "style images cannot be used")


def encode_style(model, opt, photos):
    """Style codes of photos (HxWx3 uint8 RGB arrays) through the encoder: (mu, logvar), float32
    numpy arrays [B, z_dim], for `render(..., styles=...)`."""
    require_style_encoder(model, opt)
    with jt.no_grad():
        mu, logvar = model.netE(photo_tensor(photos, model_size(opt)))
        return mu.numpy(), logvar.numpy()


def noise_for(seed, index, sample, dim):
    """Per-label, per-sample Gaussian: a label's output does not depend on batch size or order."""
    return np.random.default_rng((seed, index, sample)).standard_normal(dim).astype(np.float32)


def render(model, opt, labels, seed=0, indices=None, sample=0, references=None, styles=None):
    """Generate images for a batch of label arrays -> list of HxWx3 uint8 at the model's size.
    Style from `references` (reference photo paths: through the encoder, and through TSIT's style
    stream when the generator has one) or `styles` ((mu, logvar) of `encode_style`), else random z
    (VAE models)."""
    size = model_size(opt)
    indices = list(range(len(labels))) if indices is None else indices
    photos = None
    if references is not None:
        pictures = [read_image(p) for p in references]
        if has_style_stream(model.netG):
            photos = photo_tensor(pictures, size)
        if opt.use_vae or photos is None:
            styles = encode_style(model, opt, pictures)
    elif styles is not None:
        require_style_encoder(model, opt)
    sem = semantics_for(opt, label_tensor(labels, size))
    z = None
    if opt.use_vae:
        noise = jt.array(np.stack([noise_for(seed, i, sample, opt.z_dim) for i in indices]))
        if styles is not None:
            mu, logvar = (jt.array(np.asarray(a, np.float32)) for a in styles)
            z = reparameterize(mu, logvar, noise)  # the original's reparameterised style code
        else:
            z = noise
    with jt.no_grad():
        fake = model.generate(sem, z=z, style=photos)
    arr = np.clip((fake.numpy() + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return list(arr.transpose(0, 2, 3, 1))
