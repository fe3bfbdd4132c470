"""Rendering label maps with a trained generator: loading it from any checkpoint kind, checking
labels before anything is written, per-label deterministic noise, and style from a reference photo
through the VAE encoder (the 2023 track's label_to_img.json)."""
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from jspade.runtime import jt
from jspade.checkpoint import CheckpointError, import_pytorch_checkpoint, load_checkpoint, read_checkpoint
from jspade.config import Config, ModelConfig, parse_model_option
from jspade.data.readers import (IMAGE_EXTENSIONS, LABEL_EXTENSIONS, DataError, list_files, read_image,
                                 read_label)
from jspade.data.semantics import model_label_id_problem, semantics_for
from jspade.data.transforms import to_uint8_images
from jspade.atomic import save_image_atomic
from jspade.models.encoder import reparameterize
from jspade.models.spade_model import SPADEModel


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
    names = {f.name for f in fields(ModelConfig)}
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        key, value = key.strip(), value.split("[default")[0].strip()
        if key in names:
            out[key] = parse_model_option(key, value)
    return out


def load_generator(checkpoint, model_overrides=None):
    """(model, ModelConfig) in eval mode, G (and E when the model has the VAE) loaded strictly."""
    kind, path = resolve_checkpoint(checkpoint)
    if kind == "jspade":
        opt = Config.from_dict(read_checkpoint(path)["config"]).model
    else:
        opt = ModelConfig.from_dict(read_original_options(path))
    for k, v in (model_overrides or {}).items():
        setattr(opt, k, v)
    model = SPADEModel(opt, with_discriminator=False, with_vgg=False)
    if kind == "jspade":
        load_checkpoint(path, model, networks=("G", "E"))
    else:
        import_pytorch_checkpoint(model, path)
    model.eval()
    return model, opt


def model_size(opt):
    """(width, height) the generator renders."""
    return opt.image_size


def list_labels(folder):
    return list_files(folder, LABEL_EXTENSIONS)


def check_labels(paths, opt):
    """Read every label; return (arrays, problems) where problems lists (path, reason) for each bad file."""
    arrays, problems = {}, []
    for p in paths:
        try:
            label = read_label(p)
        except DataError as e:
            problems.append((p, str(e)))
            continue
        problem = model_label_id_problem(label, opt)
        if problem:
            problems.append((p, problem))
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
        index = {p.stem: p for p in list_files(style_dir, IMAGE_EXTENSIONS)}
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
                matches = [q for q in root.glob(Path(target).stem + ".*") if q.suffix.lower() in IMAGE_EXTENSIONS]
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


def image_tensor(paths, size):
    """Photos -> float32 [B,3,H,W] in [-1, 1] at the model's size (bicubic)."""
    arrs = [np.asarray(Image.fromarray(read_image(p)).resize(size, Image.BICUBIC), np.float32) for p in paths]
    return jt.array(np.stack(arrs).transpose(0, 3, 1, 2) / 127.5 - 1.0)


def noise_for(seed, index, sample, dim):
    """Per-label, per-sample Gaussian: a label's output does not depend on batch size or order."""
    return np.random.default_rng((seed, index, sample)).standard_normal(dim).astype(np.float32)


def render(model, opt, labels, seed=0, indices=None, sample=0, references=None):
    """Generate images for a batch of label arrays -> list of HxWx3 uint8 at the model's size.
    `references`: reference photo paths (style through the encoder), else random z (VAE models)."""
    size = model_size(opt)
    indices = list(range(len(labels))) if indices is None else indices
    sem = semantics_for(opt, label_tensor(labels, size))
    z = None
    if opt.use_vae:
        noise = jt.array(np.stack([noise_for(seed, i, sample, opt.z_dim) for i in indices]))
        if references is not None:
            with jt.no_grad():
                mu, logvar = model.netE(image_tensor(references, size))
                z = reparameterize(mu, logvar, noise)  # the original's reparameterised style code
        else:
            z = noise
    elif references is not None:
        raise ValueError("this model has no style encoder (use_vae is off): references cannot be used")
    with jt.no_grad():
        fake = model.netG(sem, z=z)
    return list(to_uint8_images(fake))


def render_folder(label_dir, checkpoint, out, *, size=(512, 384), batch_size=4, seed=0, samples=1,
                  style_dir=None, label_to_img=None, style_root=None, quality=95, overwrite=False,
                  model_overrides=None, progress=False):
    """Render one `<stem>.jpg` per label map of `label_dir` into `out` (`<stem>_K.jpg` for K in
    range(samples) when samples > 1), resized (bicubic) to size = (width, height); returns the count.

    Nothing is written unless every label is readable and holds only ids the model knows and every
    style reference is found: else DataError listing each bad file. A non-empty `out` is refused
    (FileExistsError) unless `overwrite`.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to write into it")
    model, opt = load_generator(checkpoint, model_overrides)
    paths = list_labels(label_dir)
    if not paths:
        raise DataError(f"{label_dir}: no .png label maps", label_dir)
    labels, problems = check_labels(paths, opt)
    if problems:
        listed = "".join(f"\n  {path}: {reason}" for path, reason in problems)
        raise DataError(f"{len(problems)} bad label file(s), nothing was written:{listed}")
    refs = style_references(paths, style_dir, label_to_img, style_root)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(paths) * samples, desc="render", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        for k in range(samples):
            images = render(model, opt, [labels[p] for p in chunk], seed=seed,
                            indices=list(range(start, start + len(chunk))), sample=k,
                            references=[refs[p] for p in chunk] if refs else None)
            for path, array in zip(chunk, images):
                name = f"{path.stem}.jpg" if samples == 1 else f"{path.stem}_{k}.jpg"
                image = Image.fromarray(array)
                if image.size != tuple(size):
                    image = image.resize(tuple(size), Image.BICUBIC)
                save_image_atomic(out / name, image, quality=quality)
                bar.update(1)
    bar.close()
    return len(paths) * samples
