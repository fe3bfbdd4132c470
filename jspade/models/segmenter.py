"""A small fully-convolutional segmentation network: the judge behind mask accuracy.

The contest's mask accuracy is the fraction of pixels where a segmentation network, run on a
GENERATED image, predicts the class of the input label map. `Segmenter` is that network for jspade:
a compact U-Net (three stride-2 stages, batch norm, a global-context branch at 1/8 scale fused by a
1x1 conv, nearest upsampling with skip connections back to full resolution) whose size is set by `width`.

    seg = Segmenter(label_nc=29, width=16, size=(128, 96))   # size = (W, H) it is trained at
    ids = seg.predict(images)      # images: N x 3 x H x W in [-1, 1] (numpy or jt) -> N x H x W int64
    ids = seg(rgb)                 # one H x W x 3 uint8 RGB image -> H x W ids (scores.mask_accuracy)
    seg.save("seg.pkl"); seg = Segmenter.load("seg.pkl")

`predict` accepts any input size: by default the images are first resized (bilinear) to the size the
network was trained at, so objects have the scale it learned, and the class scores are resized back
(bilinear) to the input size before the argmax (`at_train_size=False` runs at the input size). The
network itself pads its input (edge replication) to a multiple of 8 and crops the scores back.

Checkpoint: a pickle of {'format': 'jspade-segmenter-1', 'config': {...}, 'weights': state_arrays(net)},
written atomically and loaded strictly (`jspade.checkpoint.load_state_strict`).
"""
import pickle
from pathlib import Path

import numpy as np

from jspade.runtime import jt
from jittor import nn

from jspade.checkpoint import CheckpointError, load_state_strict, state_arrays
from jspade.atomic import atomic_path
from jspade.safe_load import safe_load
from jspade.models.resize import resize_bilinear, upsample2x

FORMAT = "jspade-segmenter-1"
STRIDE = 8  # total downsampling of the encoder: inputs are padded to a multiple of this


def conv_bn_relu(cin, cout, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm(cout), nn.ReLU())


class SegNet(nn.Module):
    """images N x 3 x H x W in [-1, 1] -> class scores N x label_nc x H x W (any H, W)."""

    def __init__(self, label_nc, width=16):
        super().__init__()
        w = int(width)
        self.stem = nn.Sequential(conv_bn_relu(3, w), conv_bn_relu(w, w))                    # 1
        self.down1 = nn.Sequential(conv_bn_relu(w, 2 * w, 2), conv_bn_relu(2 * w, 2 * w))     # 1/2
        self.down2 = nn.Sequential(conv_bn_relu(2 * w, 4 * w, 2), conv_bn_relu(4 * w, 4 * w))  # 1/4
        self.down3 = nn.Sequential(conv_bn_relu(4 * w, 8 * w, 2), conv_bn_relu(8 * w, 8 * w, dilation=2))  # 1/8
        # Global context (mean over the image, as in DeepLab's image pooling): tells sea from lake.
        self.context = nn.Sequential(nn.Conv2d(8 * w, 8 * w, 1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(16 * w, 4 * w, 1, bias=False), nn.BatchNorm(4 * w), nn.ReLU())
        self.up3 = conv_bn_relu(4 * w + 4 * w, 4 * w)   # 1/4
        self.up2 = conv_bn_relu(4 * w + 2 * w, 2 * w)   # 1/2
        self.up1 = conv_bn_relu(2 * w + w, w)           # 1
        self.head = nn.Conv2d(w, label_nc, 1)

    def execute(self, x):
        h, w = x.shape[2], x.shape[3]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph or pw:
            x = nn.pad(x, [0, pw, 0, ph], mode="replicate")
        f1 = self.stem(x)
        f2 = self.down1(f1)
        f4 = self.down2(f2)
        f8 = self.down3(f4)
        g = self.context(f8.mean(dims=(2, 3), keepdims=True)).broadcast(f8.shape)
        y = self.fuse(jt.concat([f8, g], dim=1))
        y = self.up3(jt.concat([upsample2x(y), f4], dim=1))
        y = self.up2(jt.concat([upsample2x(y), f2], dim=1))
        y = self.up1(jt.concat([upsample2x(y), f1], dim=1))
        y = self.head(y)
        return y[:, :, :h, :w] if (ph or pw) else y


class Segmenter:
    """A `SegNet` plus what is needed to use it: its config, prediction at any size, save/load."""

    def __init__(self, label_nc, width=16, size=None, **extra):
        self.config = {"label_nc": int(label_nc), "width": int(width),
                       "size": None if size is None else [int(size[0]), int(size[1])], **extra}
        self.net = SegNet(self.label_nc, self.config["width"])

    @property
    def label_nc(self):
        return self.config["label_nc"]

    @property
    def size(self):
        """(width, height) the network was trained at, or None."""
        return None if self.config["size"] is None else tuple(self.config["size"])

    # ---- inference -----------------------------------------------------------------------------
    def scores(self, images, at_train_size=True):
        """Class scores (jt, N x label_nc x H x W) of images in [-1, 1], at the input size."""
        x = images if isinstance(images, jt.Var) else jt.array(np.asarray(images, np.float32))
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got shape {tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        if at_train_size and self.size is not None and (w, h) != self.size:
            x = resize_bilinear(x, (self.size[1], self.size[0]))
        self.net.eval()
        with jt.no_grad():
            logits = self.net(x)
            if logits.shape[2] != h or logits.shape[3] != w:
                logits = resize_bilinear(logits, (h, w))
        return logits

    def predict(self, images, at_train_size=True, batch_size=8):
        """N x 3 x H x W images in [-1, 1] -> N x H x W int64 class ids, at the input size."""
        if isinstance(images, jt.Var):
            images = images.numpy()
        images = np.asarray(images, np.float32)
        out = []
        for start in range(0, len(images), batch_size):
            logits = self.scores(images[start:start + batch_size], at_train_size)
            out.append(np.argmax(logits.numpy(), axis=1).astype(np.int64))
        if not out:
            return np.zeros((0,) + images.shape[2:], np.int64)
        return np.concatenate(out)

    def __call__(self, rgb):
        """One H x W x 3 uint8 RGB image -> H x W int64 class ids (the `scores.mask_accuracy` protocol)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
        image = rgb.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0
        return self.predict(image)[0]

    # ---- checkpoint ----------------------------------------------------------------------------
    def save(self, path, extra=None):
        """Write the checkpoint atomically; `extra` (e.g. training history) is stored beside it."""
        payload = {"format": FORMAT, "config": dict(self.config), "weights": state_arrays(self.net)}
        payload.update(extra or {})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=4)
        return Path(path)

    @staticmethod
    def read(path):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no segmenter checkpoint at {path}")
        payload = safe_load(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a jspade segmenter checkpoint ({FORMAT})")
        return payload

    @classmethod
    def load(cls, path):
        payload = cls.read(path)
        seg = cls(**payload["config"])
        load_state_strict(seg.net, payload["weights"], source=str(path))
        seg.net.eval()
        return seg

    def __repr__(self):
        return f"Segmenter({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"
