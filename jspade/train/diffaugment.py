"""Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al. 2020) for the
small-data phases: the discriminator sees translated, cut-out and colour-jittered pairs, and the
generator's gradient flows back through the same transforms.

D's input is the label channels followed by the image. One set of random parameters per pair is drawn
and applied to the fake and to the real input alike, so D cannot tell them apart by the augmentation:
translation and cutout move/blank the label and the image together (they stay aligned), colour
changes the image channels only. The parameters come from Jittor's generator, which the trainer seeds
per iteration, so a resumed run augments as the uninterrupted one. Magnitudes are the paper's:
brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5], translation up to 1/8 of each side
(zero-filled), one cutout square of half each side.
"""
import numpy as np

from jspade.runtime import jt

TRANSFORMS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(text):
    """'translation,cutout,color' -> a tuple in the order they are applied; '' -> ()."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown DiffAugment transform(s) {unknown}: choose from {', '.join(TRANSFORMS)}")
    return tuple(t for t in TRANSFORMS if t in names)


class DiffAugment:
    def __init__(self, policy, image_channels=3):
        self.policy = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
        self.image_channels = image_channels

    def sample(self, n, height, width):
        """Random parameters for `n` pairs (numpy arrays; drawn with Jittor's seeded generator)."""
        params = {}
        if "color" in self.policy:
            r = jt.rand(n, 3).numpy()
            params["brightness"] = r[:, 0] - 0.5
            params["saturation"] = r[:, 1] * 2.0
            params["contrast"] = r[:, 2] + 0.5
        if "translation" in self.policy:
            sh, sw = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
            r = jt.rand(n, 2).numpy()
            params["shift"] = np.stack([np.floor(r[:, 0] * (2 * sh + 1)) - sh,
                                        np.floor(r[:, 1] * (2 * sw + 1)) - sw], axis=1).astype(np.int64)
        if "cutout" in self.policy:
            ch, cw = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
            r = jt.rand(n, 2).numpy()
            # the square's top-left corner; it may hang over the border (then it is clipped)
            params["cutout"] = np.stack([np.floor(r[:, 0] * (height + 1 - ch % 2)) - ch // 2,
                                         np.floor(r[:, 1] * (width + 1 - cw % 2)) - cw // 2], axis=1).astype(np.int64)
            params["cutout_size"] = (ch, cw)
        return params

    def apply(self, x, params):
        """Augment an [N, C, H, W] D input whose last `image_channels` channels are the image."""
        n, c, h, w = x.shape
        if "color" in self.policy:
            k = self.image_channels
            labels, image = x[:, :c - k], x[:, c - k:]
            b = jt.array(params["brightness"].astype(np.float32)).reshape(n, 1, 1, 1)
            s = jt.array(params["saturation"].astype(np.float32)).reshape(n, 1, 1, 1)
            t = jt.array(params["contrast"].astype(np.float32)).reshape(n, 1, 1, 1)
            image = image + b
            mean = image.mean(dim=1, keepdims=True)
            image = (image - mean) * s + mean
            mean = image.mean(dim=1, keepdims=True).mean(dim=2, keepdims=True).mean(dim=3, keepdims=True)
            image = (image - mean) * t + mean
            x = jt.concat([labels, image], dim=1) if c > k else image
        if "translation" in self.policy:
            rows = []
            for i, (dy, dx) in enumerate(params["shift"].tolist()):
                rows.append(shift_zero_filled(x[i:i + 1], dy, dx))
            x = jt.concat(rows, dim=0)
        if "cutout" in self.policy:
            ch, cw = params["cutout_size"]
            mask = np.ones((n, 1, h, w), np.float32)
            for i, (y0, x0) in enumerate(params["cutout"].tolist()):
                mask[i, :, max(y0, 0):max(y0 + ch, 0), max(x0, 0):max(x0 + cw, 0)] = 0
            x = x * jt.array(mask)
        return x

    def __call__(self, fake_input, real_input):
        """The fake and real D inputs of the same pairs, augmented with the same parameters."""
        if not self.policy:
            return fake_input, real_input
        n, _, h, w = fake_input.shape
        params = self.sample(n, h, w)
        return self.apply(fake_input, params), self.apply(real_input, params)


def shift_zero_filled(x, dy, dx):
    """x moved down by dy and right by dx pixels; uncovered pixels are 0."""
    _, _, h, w = x.shape
    if abs(dy) >= h or abs(dx) >= w:
        return x * 0
    padded = jt.nn.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, :, top:top + h, left:left + w]
