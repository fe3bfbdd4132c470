"""Preprocessing with the semantics of the original SPADE (`data/base_dataset.py`).

`get_params` makes ONE random draw per sample (crop position, flip); `transform` applies the same
draw to the label (NEAREST), the instance map (NEAREST) and the photo (BICUBIC), so they stay
aligned. Resizing uses PIL, as the original does through torchvision, so sizes and pixels match it.

preprocess_mode (output size for a WxH input):
  resize_and_crop           resize to load_size x load_size, random crop_size x crop_size crop
  crop                      random crop_size x crop_size crop of the original
  scale_width               width -> load_size, height keeps the aspect ratio
  scale_width_and_crop      scale_width, then random crop
  scale_shortside           short side -> load_size, long side keeps the aspect ratio
  scale_shortside_and_crop  scale_shortside, then random crop
  fixed                     resize to (crop_size, round(crop_size / aspect_ratio))
  none                      round both sides to a multiple of 32 (the generator's downsampling)
Horizontal flip with probability 1/2 when is_train and not no_flip.

Deviations from the original, both to avoid silent corruption: a crop larger than the (resized)
picture raises `DataError` instead of padding with zeros (zero is a real class id: mountain in the
landscape contest), and scale_shortside* really scales the short side to load_size (the original
kept the unscaled short side and drew the crop inside it).
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jspade.config import image_size
from jspade.data.readers import DataError

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop",
                    "scale_shortside", "scale_shortside_and_crop", "fixed", "none")


@dataclass(frozen=True)
class PreprocessOptions:
    preprocess_mode: str = "resize_and_crop"
    load_size: int = 286
    crop_size: int = 256
    aspect_ratio: float = 1.0  # width / height, used by 'fixed'
    no_flip: bool = False
    is_train: bool = True

    def __post_init__(self):
        if self.preprocess_mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess_mode {self.preprocess_mode!r} is not one of {PREPROCESS_MODES}")
        if self.load_size <= 0 or self.crop_size <= 0 or self.aspect_ratio <= 0:
            raise ValueError(f"load_size, crop_size and aspect_ratio must be positive: {self}")

    @property
    def flips(self):
        return self.is_train and not self.no_flip


def resized_size(preprocess: PreprocessOptions, size):
    """(width, height) after the resize step of `preprocess.preprocess_mode`, before any crop."""
    w, h = size
    mode = preprocess.preprocess_mode
    if "resize" in mode:
        return preprocess.load_size, preprocess.load_size
    if "scale_width" in mode:
        return preprocess.load_size, int(preprocess.load_size * h / w)
    if "scale_shortside" in mode:
        if min(w, h) == preprocess.load_size:
            return w, h
        long_side = int(preprocess.load_size * max(w, h) / min(w, h))
        return (preprocess.load_size, long_side) if w <= h else (long_side, preprocess.load_size)
    if mode == "fixed":
        return image_size(preprocess.crop_size, preprocess.aspect_ratio)
    if mode == "none":
        return max(32, int(round(w / 32) * 32)), max(32, int(round(h / 32) * 32))
    return w, h  # 'crop'


def get_params(preprocess: PreprocessOptions, size, rng: np.random.Generator):
    """The random choices for one sample of original size `size` = (w, h)."""
    new_w, new_h = resized_size(preprocess, size)
    if "crop" in preprocess.preprocess_mode and (new_w < preprocess.crop_size or new_h < preprocess.crop_size):
        raise DataError(
            f"a {size[0]}x{size[1]} picture is {new_w}x{new_h} after {preprocess.preprocess_mode!r} with "
            f"load_size={preprocess.load_size}: smaller than crop_size={preprocess.crop_size}")
    # Always draw both values so the random stream does not depend on the mode.
    x = int(rng.integers(0, max(0, new_w - preprocess.crop_size) + 1))
    y = int(rng.integers(0, max(0, new_h - preprocess.crop_size) + 1))
    flip = bool(rng.random() > 0.5)
    return {"crop_pos": (x, y), "flip": flip and preprocess.flips}


def transform(image: Image.Image, preprocess: PreprocessOptions, params, method=Image.BICUBIC) -> Image.Image:
    """Resize / crop / flip a PIL image; use method=Image.NEAREST for label and instance maps."""
    new_size = resized_size(preprocess, image.size)
    if new_size != image.size:
        image = image.resize(new_size, method)
    if "crop" in preprocess.preprocess_mode:
        x, y = params["crop_pos"]
        image = image.crop((x, y, x + preprocess.crop_size, y + preprocess.crop_size))
    if params["flip"]:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def transform_label(label: np.ndarray, preprocess: PreprocessOptions, params) -> np.ndarray:
    """int HxW id map -> int64 [1, H', W'] (nearest neighbour: ids are never blended)."""
    out = transform(Image.fromarray(label.astype(np.int32)), preprocess, params, Image.NEAREST)
    return np.asarray(out).astype(np.int64)[None]


def transform_instance(instance: np.ndarray, preprocess: PreprocessOptions, params) -> np.ndarray:
    """int HxW instance map -> int32 [1, H', W']."""
    out = transform(Image.fromarray(instance.astype(np.int32)), preprocess, params, Image.NEAREST)
    return np.asarray(out).astype(np.int32)[None]


def transform_image(image: np.ndarray, preprocess: PreprocessOptions, params) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 [3, H', W'] in [-1, 1]."""
    out = np.asarray(transform(Image.fromarray(image), preprocess, params, Image.BICUBIC))
    return (out.transpose(2, 0, 1).astype(np.float32) / 127.5) - 1.0


def to_uint8_images(images) -> np.ndarray:
    """Generator output, [-1, 1] NCHW (a jt.Var or an array) -> uint8 NHWC RGB, rounded to nearest."""
    array = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    return np.clip((array + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
