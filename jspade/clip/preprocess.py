"""CLIP's image preprocessing (openai/CLIP's `_transform(n_px)`), on the uint8 image with PIL:

resize so the shorter side is n_px (PIL bicubic; the longer side int(n_px * long / short), as
torchvision computes it), centre crop n_px x n_px (offsets rounded as torchvision), convert to RGB,
scale to [0, 1], normalise with CLIP's mean and standard deviation. The resize must be PIL's on the
uint8 image: a float or OpenCV bicubic differs by up to a few grey levels.
"""
import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _as_pil(image):
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"CLIP preprocessing takes uint8 images, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"an image must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    return Image.fromarray(array)


def preprocess(image, resolution):
    """One image (uint8 HxW / HxWx3 / HxWx4 array, or a PIL image) -> float32 [3, R, R]."""
    image = _as_pil(image)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(resolution * long / short)
    size = (resolution, new_long) if width <= height else (new_long, resolution)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution)).convert("RGB")
    x = np.asarray(image, np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def preprocess_batch(images, resolution):
    """A list of images -> float32 [N, 3, R, R]."""
    return np.stack([preprocess(image, resolution) for image in images]) if len(images) else \
        np.zeros((0, 3, resolution, resolution), np.float32)
