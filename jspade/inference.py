"""Rendering label maps with a trained generator: loading it from any checkpoint kind, checking
labels before anything is written, per-label deterministic noise, style from a reference photo
through the VAE encoder (the 2023 track's label_to_img.json), and a CLIP model's style from its style
bank, a reference photo or a text prompt (`ClipChoice`). `render_folder` takes its choices as one
`RenderOptions`."""
import json
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from jspade.runtime import jt
from jspade.checkpoint import (CheckpointError, checkpoint_config, import_pytorch_checkpoint, load_networks,
                               read_checkpoint)
from jspade.config import ModelConfig, check_model, parse_model_option
from jspade.data.readers import (IMAGE_EXTENSIONS, LABEL_EXTENSIONS, DataError, list_files, read_image,
                                 read_label)
from jspade.data.semantics import model_label_id_problem, semantics_for
from jspade.data.transforms import to_uint8_images
from jspade.atomic import save_image_atomic
from jspade.models.encoder import noise_for, reparameterize
from jspade.models.kept_weights import keeping_inference_weights
from jspade.errors import JspadeError, UnsupportedRequest
from jspade.models.spade_model import SPADEModel, check_output_size
from jspade.style_bank import StyleBank, project_text


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
            try:
                out[key] = parse_model_option(key, value)
            except ValueError as error:
                raise CheckpointError(f"{path}: {error}") from None
    return out


def load_generator(checkpoint, model_overrides=None, use_ema=True):
    """(model, ModelConfig) in eval mode, G (and E when the model has the VAE) loaded strictly.
    A jspade checkpoint's EMA weights ("ema_networks") are used when present, unless `use_ema` is
    False; `model.weights` says which were loaded ("ema" or "raw")."""
    kind, path = resolve_checkpoint(checkpoint)
    payload = read_checkpoint(path) if kind == "jspade" else None
    if kind == "jspade":
        opt = checkpoint_config(payload, path).model  # checked before any network is built
    else:
        opt = ModelConfig.from_dict(read_original_options(path), source=f"{path / 'opt.txt'}")
    for k, v in (model_overrides or {}).items():
        setattr(opt, k, v)
    try:
        check_model(opt, f"{path}" + (" with --model-option" if model_overrides else ""))
        check_output_size(opt.crop_size, opt.aspect_ratio, opt.num_upsampling_layers, netG=opt.netG)
    except ValueError as error:  # ConfigError included: the checkpoint asks for a model that cannot be built
        raise CheckpointError(f"{path}: {error}" if str(path) not in str(error) else str(error)) from None
    model = SPADEModel(opt, with_discriminator=False, with_vgg=False)
    model.weights = "raw"
    if kind == "jspade":
        ema = bool(use_ema and payload.get("ema_networks"))
        load_networks(payload, model, source=str(path), ema=ema)
        model.weights = "ema" if ema else "raw"
        if model.uses_clip and payload.get("style_bank") is not None:
            try:
                bank = StyleBank.from_payload(payload["style_bank"], source=f"{path} [style_bank]")
                model.set_style_bank(bank)
            except ValueError as error:
                raise CheckpointError(str(error)) from None
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


def photo_tensor(photos, size):
    """HxWx3 uint8 RGB arrays -> float32 [B,3,H,W] in [-1, 1] at the model's size (bicubic)."""
    arrs = [np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC), np.float32) for photo in photos]
    return jt.array(np.stack(arrs).transpose(0, 3, 1, 2) / 127.5 - 1.0)


def encode_style(model, opt, photos):
    """Style codes of photos (HxWx3 uint8 RGB arrays) through the encoder: (mu, logvar), float32
    numpy arrays [B, z_dim], for `render(..., styles=...)`."""
    model.require_encoder()
    with jt.no_grad():
        mu, logvar = model.netE(photo_tensor(photos, model_size(opt)))
        return mu.numpy(), logvar.numpy()


class ClipChoiceError(JspadeError, ValueError):
    """A CLIP style choice that is malformed or does not fit the checkpoint; the message names the flag."""


@dataclass
class ClipChoice:
    """A CLIP model's style (docs/clip_spade.md): at most one of a style bank centre, reference photos
    or a text prompt; none of them: the training set's mean embedding ("no style")."""
    centre: Optional[int] = None  # --clip-style K: centre K of the checkpoint's style bank (no CLIP needed)
    reference: Optional[Path] = None  # --clip-reference: one photo, a folder of photos by stem, or label_to_img.json
    text: Optional[str] = None  # --clip-text: a prompt, projected onto the training images' embeddings
    weights: object = None  # --clip-weights (a path, or 'random:SEED'): encodes the photos or the prompt
    top_k: int = 8  # training images a prompt is projected onto

    def given(self):
        """The flags of the choices made."""
        return [flag for flag, value in (("--clip-style", self.centre), ("--clip-reference", self.reference),
                                         ("--clip-text", self.text)) if value is not None]

    def check(self):
        """What can be checked without the checkpoint; ClipChoiceError naming the flag."""
        given = self.given()
        if len(given) > 1:
            raise ClipChoiceError(f"{' and '.join(given)} are alternatives: give one")
        if self.centre is not None and self.centre < 0:
            raise ClipChoiceError(f"--clip-style {self.centre}: a style centre is a number from 0")
        if self.text is not None and not self.text.strip():
            raise ClipChoiceError("--clip-text: the prompt is empty")
        if given and given[0] != "--clip-style" and self.weights is None:
            raise ClipChoiceError(f"{given[0]} needs --clip-weights PATH, the CLIP weights the checkpoint was "
                                  "trained with (docs/clip.md)")
        if self.weights is not None and given in ([], ["--clip-style"]):
            raise ClipChoiceError("--clip-weights is used only with --clip-reference or --clip-text")
        if not self.top_k >= 1:
            raise ClipChoiceError(f"--clip-top-k {self.top_k}: must be at least 1")


def clip_reference_photos(label_paths, reference, style_root=None):
    """{label path: photo} for --clip-reference: one photo for every label, a folder of photos named
    like the labels, or a label_to_img.json (names under `style_root`, else beside the JSON)."""
    reference = Path(reference)
    try:
        if reference.is_dir():
            return style_references(label_paths, style_dir=reference)
        if reference.is_file() and reference.suffix.lower() == ".json":
            return style_references(label_paths, label_to_img=reference, style_root=style_root)
    except DataError as error:
        raise DataError(f"--clip-reference {reference}: {error}") from None
    except (ValueError, UnicodeDecodeError, AttributeError) as error:  # not a JSON object of names
        raise ClipChoiceError(f"--clip-reference {reference}: not a label_to_img.json ({error})") from None
    if reference.is_file() and reference.suffix.lower() in IMAGE_EXTENSIONS:
        return {path: reference for path in label_paths}
    raise ClipChoiceError(f"--clip-reference {reference}: "
                          + ("does not exist" if not reference.exists() else
                             f"neither a photo ({', '.join(sorted(IMAGE_EXTENSIONS))}), a folder of photos nor "
                             "a label_to_img.json"))


def open_style_clip(model, choice):
    """The CLIP of --clip-weights, refused (naming the flag) when it is not the one the checkpoint's
    style bank was made with, or its embeddings do not fit the model."""
    from jspade.clip.weights import open_clip_weights
    clip_model, digest = open_clip_weights(choice.weights, flag="--clip-weights")
    bank = model.style_bank
    if bank is not None and digest != bank.weights_sha256:
        raise ClipChoiceError(f"--clip-weights {choice.weights}: not the CLIP this checkpoint was trained with "
                              f"(sha256 {digest[:12]}..., its style bank's {bank.weights_sha256[:12]}...)")
    if clip_model.config.embed_dim != model.netG.clip_dim:
        raise ClipChoiceError(f"--clip-weights {choice.weights}: gives {clip_model.config.embed_dim}-d embeddings, "
                              f"the model takes {model.netG.clip_dim}-d")
    return clip_model


def clip_embeddings_for(model, checkpoint, choice, label_paths, style_root=None, report=print):
    """({label path: CLIP embedding [D]} or None for the training mean, {label path: reference photo})
    of a ClipChoice, checked against the checkpoint (ClipChoiceError naming the flag and its range)."""
    if choice is None or not choice.given():
        if choice is not None:
            choice.check()  # --clip-weights alone
        return None, {}
    choice.check()
    flag = choice.given()[0]
    if not model.uses_clip:
        raise ClipChoiceError(f"{flag}: {checkpoint} is not a CLIP model (model.clip_dim 0); CLIP styles need a "
                              "checkpoint trained with --model.clip_dim (docs/clip_spade.md)")
    bank = model.style_bank
    if bank is None and flag != "--clip-reference":
        raise ClipChoiceError(f"{flag}: {checkpoint} holds no style bank (a CLIP checkpoint of jspade's trainer has one)")
    if choice.centre is not None:
        if choice.centre >= bank.k:
            raise ClipChoiceError(f"--clip-style {choice.centre}: this checkpoint's style bank has centres "
                                  f"0..{bank.k - 1}")
        report(f"--clip-style {choice.centre}: style centre {choice.centre} of 0..{bank.k - 1} "
               f"({bank.counts[choice.centre]} training images, medoid {bank.medoid_stems[choice.centre]})")
        embedding = bank.centre(choice.centre)
        return {path: embedding for path in label_paths}, {}
    from jspade.clip.features import encode_images, encode_text, normalize
    if choice.text is not None:
        clip_model = open_style_clip(model, choice)
        try:
            text = encode_text(clip_model, [choice.text])[0]
        except ValueError as error:  # a prompt over CLIP's 77 tokens
            raise ClipChoiceError(f"--clip-text: {error}") from None
        embedding, stems, weights = project_text(text, bank, top_k=choice.top_k)
        report(f"--clip-text {choice.text!r}: projected onto the training images "
               + ", ".join(f"{stem} ({weight:.2f})" for stem, weight in zip(stems, weights)))
        return {path: embedding for path in label_paths}, {}
    photos = clip_reference_photos(label_paths, choice.reference, style_root)
    clip_model = open_style_clip(model, choice)
    distinct = sorted(set(photos.values()))
    encoded = normalize(encode_images(clip_model, [read_image(photo) for photo in distinct]))
    by_photo = dict(zip(distinct, encoded))
    return {path: by_photo[photo] for path, photo in photos.items()}, photos


def render(model, opt, labels, seed=0, indices=None, sample=0, references=None, styles=None, style_photos=None,
           clip=None):
    """Generate images for a batch of label arrays -> list of HxWx3 uint8 at the model's size.
    Style from reference photos, as paths (`references`) or HxWx3 uint8 arrays (`style_photos`):
    through the encoder (unless `styles` already holds their codes) and through TSIT's style stream
    when the generator has one; or from `styles` alone ((mu, logvar) of `encode_style`); else random
    z (VAE models). `clip`: a CLIP model's embeddings ([B, D] or one [D]; None: the training mean)."""
    size = model_size(opt)
    indices = list(range(len(labels))) if indices is None else indices
    if references is not None:
        style_photos = [read_image(p) for p in references]
    photos = None
    if style_photos is not None:
        if model.has_style_stream:
            photos = photo_tensor(style_photos, size)
        if styles is None and (opt.use_vae or photos is None):
            styles = encode_style(model, opt, style_photos)
    elif styles is not None:
        model.require_encoder()
    sem = semantics_for(opt, label_tensor(labels, size))
    z = None
    if opt.use_vae:
        noise = jt.array(np.stack([noise_for(seed, i, sample, opt.z_dim) for i in indices]))
        if styles is not None:
            mu, logvar = (jt.array(np.asarray(a, np.float32)) for a in styles)
            z = reparameterize(mu, logvar, noise)  # the original's reparameterised style code
        else:
            z = noise
    if clip is not None:
        clip = jt.array(np.asarray(clip, np.float32))
    with jt.no_grad(), keeping_inference_weights():  # the painter and infer render again and again
        fake = model.generate(sem, z=z, style=photos, clip=clip)
    return list(to_uint8_images(fake))


def rendered_batches(model, opt, paths, labels, refs, *, seed, size, batch_size, samples, match_histogram=False,
                     clip=None, histogram_refs=None):
    """Batches of [(output file name, PIL image at `size`)] in the order they are written. `refs`:
    {label path: reference photo} for the encoder / style stream; `clip`: {label path: CLIP
    embedding} for a CLIP model (None: its training mean); with `match_histogram` each image's colours
    are matched to its photo in `histogram_refs` (default `refs`)."""
    from jspade.histogram_match import match_histograms

    histogram_refs = histogram_refs or refs
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        for k in range(samples):
            images = render(model, opt, [labels[p] for p in chunk], seed=seed,
                            indices=list(range(start, start + len(chunk))), sample=k,
                            references=[refs[p] for p in chunk] if refs else None,
                            clip=np.stack([clip[p] for p in chunk]) if clip else None)
            batch = []
            for path, array in zip(chunk, images):
                image = Image.fromarray(array)
                if image.size != tuple(size):
                    image = image.resize(tuple(size), Image.BICUBIC)
                if match_histogram:
                    image = Image.fromarray(match_histograms(np.asarray(image), read_image(histogram_refs[path])))
                batch.append((f"{path.stem}.jpg" if samples == 1 else f"{path.stem}_{k}.jpg", image))
            yield batch


def choose_seed(batches_for_seed, seeds, real_stats, quality, report=print):
    """The seed among `seeds` whose images, as written (JPEG at `quality`), have the lowest FID
    against the statistics file `real_stats`; `report` gets each seed's FID line."""
    import io

    from jspade.metrics.fid import InceptionFeatureExtractor, load_statistics
    from jspade.seed_selection import select_seed

    def as_written(image):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))

    stats = load_statistics(real_stats)
    extractor = InceptionFeatureExtractor(progress=False)
    fids, best = select_seed(seeds, lambda s: ([as_written(img) for _, img in batch] for batch in batches_for_seed(s)),
                             stats, extractor, report=lambda s, f: report(f"seed {s}: FID {f:.3f}"))
    report(f"best seed {best}: FID {fids[best]:.3f}")
    return best


@dataclass
class RenderOptions:
    """Everything `render_folder` may be asked, besides its labels, checkpoint and output folder."""
    size: tuple = (512, 384)  # (width, height) written, resized (bicubic) from the model's size
    batch_size: int = 4
    seed: int = 0
    samples: int = 1  # 1: <stem>.jpg; K > 1: <stem>_0.jpg .. <stem>_{K-1}.jpg
    style_dir: Optional[Path] = None  # reference photos by stem, for the encoder / style stream
    label_to_img: Optional[Path] = None  # or the 2023 track's map (with style_root)
    style_root: Optional[Path] = None  # where label_to_img's (and a --clip-reference JSON's) names are
    clip: Optional["ClipChoice"] = None  # a CLIP model's style (None: the training set's mean)
    quality: int = 95
    overwrite: bool = False
    model_overrides: Optional[dict] = None
    progress: bool = False
    use_ema: bool = True
    seeds: int = 1  # > 1: try seed .. seed+seeds-1, keep the lowest FID against real_stats
    real_stats: Optional[Path] = None
    match_histogram: bool = False  # match each output's colours to its reference photo
    report: Callable = print  # gets the lines a run prints (seed FIDs, a prompt's neighbours)


def render_folder(label_dir, checkpoint, out, options=None, **changes):
    """Render one `<stem>.jpg` per label map of `label_dir` into `out` as `options` (a RenderOptions;
    keyword arguments change single fields of it, e.g. `render_folder(l, c, o, size=(64, 32))`).
    With `seeds` > 1, seeds seed .. seed+seeds-1 are tried and the lowest-FID one against
    `real_stats` is written. Returns (images written, the seed used, "ema" or "raw" weights).

    Nothing is written unless every label is readable and holds only ids the model knows, every
    style reference is found and the CLIP choice fits the checkpoint: else DataError listing each bad
    file, or ClipChoiceError naming the flag. A non-empty `out` is refused (FileExistsError) unless
    `overwrite`.
    """
    o = replace(options or RenderOptions(), **changes)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not o.overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to write into it")
    model, opt = load_generator(checkpoint, o.model_overrides, use_ema=o.use_ema)
    if o.seeds > 1 and not opt.use_vae:
        raise UnsupportedRequest("--seeds: this model has no style noise (use_vae is off), every seed renders the same images")
    paths = list_labels(label_dir)
    if not paths:
        raise DataError(f"{label_dir}: no .png label maps", label_dir)
    labels, problems = check_labels(paths, opt)
    if problems:
        listed = "".join(f"\n  {path}: {reason}" for path, reason in problems)
        raise DataError(f"{len(problems)} bad label file(s), nothing was written:{listed}")
    refs = style_references(paths, o.style_dir, o.label_to_img, o.style_root)
    clip, clip_refs = clip_embeddings_for(model, checkpoint, o.clip, paths, o.style_root, o.report)
    if o.match_histogram and not (refs or clip_refs):
        raise UnsupportedRequest("histogram matching needs reference photos (a style folder, label_to_img.json or "
                         "--clip-reference)")

    def batches(s):
        return rendered_batches(model, opt, paths, labels, refs, seed=s, size=o.size, batch_size=o.batch_size,
                                samples=o.samples, match_histogram=o.match_histogram, clip=clip,
                                histogram_refs=refs or clip_refs)

    seed = o.seed
    if o.seeds > 1:
        seed = choose_seed(batches, range(o.seed, o.seed + o.seeds), o.real_stats, o.quality, o.report)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(paths) * o.samples, desc="render", unit="img", disable=not o.progress, file=sys.stderr)
    for batch in batches(seed):
        for name, image in batch:
            save_image_atomic(out / name, image, quality=o.quality)
            bar.update(1)
    bar.close()
    return len(paths) * o.samples, seed, model.weights
